"""Command-line tools: ``ringstack`` (the API client) and ``ringstack-ctl`` (node administration)."""
