"""What runs inside a TorchServe worker: the archives' handlers and what they need (request parsing,
options, encoding, metrics, configuration). Imports the core library only (a test guards it)."""
