"""Compact response encodings: maps as a PNG heat map and as float16 ``.npy`` bytes, both base64.

A 112x112 map is ~25 KB as float16 .npy (33 KB in base64) against ~1.3 MB as a JSON float list.
:func:`decode_npy` is the inverse used by clients and tests.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import torch

from sane.heatmap import heatmap_png


def npy_bytes(array: torch.Tensor | np.ndarray, dtype: str = "float16") -> bytes:
    """An array as the bytes of a ``.npy`` file of ``dtype`` (numpy's own format, no pickle)."""
    if isinstance(array, torch.Tensor):
        array = array.detach().float().cpu().numpy()
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array, dtype=dtype), allow_pickle=False)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def encode_map(saliency: torch.Tensor, outputs: tuple[str, ...] = ("png", "npy")) -> dict:
    """``{"shape": [H, W], "png": base64 heat map, "npy": base64 float16 .npy}`` (parts per ``outputs``)."""
    out: dict = {"shape": list(saliency.shape)}
    if "png" in outputs:
        out["png"] = b64(heatmap_png(saliency))
    if "npy" in outputs:
        out["npy"] = b64(npy_bytes(saliency, "float16"))
    return out


def encode_array(array: torch.Tensor, dtype: str = "float32") -> dict:
    """A small array (e.g. an embedding) as ``{"shape", "dtype", "npy"}``."""
    return {"shape": list(array.shape), "dtype": dtype, "npy": b64(npy_bytes(array, dtype))}


def decode_npy(data: str | bytes) -> np.ndarray:
    """base64 text (or raw bytes) of a ``.npy`` file -> numpy array."""
    raw = base64.b64decode(data) if isinstance(data, str) else data
    return np.load(io.BytesIO(raw), allow_pickle=False)
