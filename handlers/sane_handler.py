"""TorchServe handler of the `sane` archive: similarity + saliency maps + the query's top-k attributes
that explain its map (the saliency archive's batch, then one attribute ranking per request).

A thin adapter: parsing, options, batching, ranking and encoding live in :mod:`sane.serving.worker`, the
computing in the library. TorchServe needs exactly one class defined in this module (imported names do not count).
"""

from sane.serving.worker.sane_archive import SaneHandler as _SaneHandler


class SaneHandler(_SaneHandler):
    """`sane` archive handler (see :class:`sane.serving.worker.sane_archive.SaneHandler`)."""
