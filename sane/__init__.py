"""SANE: explanations for image-similarity models (saliency maps and named attributes)."""

__version__ = "0.1.0"
