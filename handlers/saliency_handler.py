"""TorchServe handler of the `saliency` archive: similarity + saliency maps (any registered
generator, fixed or both-images mode), a batch of requests explained as one stream of masked images.

A thin adapter: parsing, options, batching and encoding live in :mod:`sane.serving.worker`, the computing
in the library. TorchServe needs exactly one class defined in this module (imported names do not count).
"""

from sane.serving.worker.saliency_archive import SaliencyHandler as _SaliencyHandler


class SaliencyHandler(_SaliencyHandler):
    """`saliency` archive handler (see :class:`sane.serving.worker.saliency_archive.SaliencyHandler`)."""
