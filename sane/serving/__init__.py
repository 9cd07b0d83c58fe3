"""Serving: the code behind the TorchServe handlers in ``handlers/`` (request parsing, options,
batching, response encoding, metrics), the archive and server commands, and the clients.

Importable without TorchServe: the handlers only need a ``ts.context.Context``-like object, so the
same code runs in-process (tests, benchmark) and inside a TorchServe worker.
"""

from sane.serving.config import ServingConfig
from sane.serving.request import PairRequest, RequestError, parse_pair_request

__all__ = ["PairRequest", "RequestError", "ServingConfig", "parse_pair_request"]
