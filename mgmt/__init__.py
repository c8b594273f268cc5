"""The management node: services, the core they share, the API gateway and the CLIs."""
