"""Explaining a pair end to end: images in, similarity + maps (+ attributes, later) out."""

from sane.explain.pair import explain_files, explain_images

__all__ = ["explain_files", "explain_images"]
