"""TorchServe handler of the `similarity` archive: embeddings and similarity of image pairs.

A thin adapter: parsing, batching and encoding live in :mod:`sane.serving.worker`, the computing in the
library. TorchServe needs exactly one class defined in this module (imported names do not count).
"""

from sane.serving.worker.similarity_archive import SimilarityHandler as _SimilarityHandler


class SimilarityHandler(_SimilarityHandler):
    """`similarity` archive handler (see :class:`sane.serving.worker.similarity_archive.SimilarityHandler`)."""
