"""What an operator runs around the workers: archives, a local server, the gateway deployment and
the clients. Never imported by a worker."""
