"""Serving, in two parts: :mod:`sane.serving.worker` runs inside a TorchServe worker (the handlers of
``handlers/``: request parsing, options, batching, response encoding, metrics; it imports the core
library only) and :mod:`sane.serving.ops` is what an operator runs around it (archives, a server,
the gateway deployment, clients).

Importable without TorchServe: the handlers only need a ``ts.context.Context``-like object, so the
same code runs in-process (tests, benchmark) and inside a TorchServe worker.
"""

from sane.serving.worker.config import ServingConfig
from sane.serving.worker.request import PairRequest, RequestError, parse_pair_request

__all__ = ["PairRequest", "RequestError", "ServingConfig", "parse_pair_request"]
