"""What every service uses: the service base, dispatcher, serial queues, flow chains, database."""
