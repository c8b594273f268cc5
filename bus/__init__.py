"""ringstack's message bus: the wire envelope, error model, topology, and the async/sync clients.

The bus is a library: it moves envelopes and knows nothing of services, resources or the database.
"""
