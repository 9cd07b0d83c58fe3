"""Writing an explanation to a folder: the one writer behind `sane explain` (computed in process) and
`sane request` (answered by a server), so both leave the same files and the same ``result.json``.

Per image with a map: ``{name}_saliency.png`` (the map over the part of the image the model saw, at
the image's own resolution and at least ``display`` pixels on its long side), ``{name}_saliency.npy``
(the raw map, float16, unchanged) and, when a server sent its own rendering, ``{name}_heatmap.png``;
``card.png``, the explanation at a glance (both images with their maps, the similarity, the top
attributes). ``result.json`` holds the pair's paths, ``similarity``, ``method``, ``mode``,
``options``, ``timing_ms``, ``explanations`` (when ranked), per map ``saliency.<name>`` (its
``shape``, the files above, a server's crop ``box``) and ``files``; a caller may add fields.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sane.heatmap import DISPLAY_SIDE, explanation_card, save_overlay

MAP_NAMES = ("query", "reference")


def write_explanation(
    out: str | os.PathLike,
    report: dict[str, Any],
    maps: dict[str, np.ndarray],
    images: dict[str, Image.Image],
    heatmaps: dict[str, bytes] | None = None,
    display: int = DISPLAY_SIDE,
) -> dict[str, Any]:
    """Write the maps (for each name of ``maps``: over ``images[name]``), a server's ``heatmaps`` (PNG bytes)
    and ``result.json`` = ``report`` plus each map's ``saliency`` entry and the ``files`` written.
    Returns what ``result.json`` holds."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files: list[str] = []
    saliency: dict[str, dict[str, Any]] = {}
    for name in MAP_NAMES:
        if name not in maps and name not in (heatmaps or {}):
            continue
        entry = dict((report.get("saliency") or {}).get(name) or {})
        if name in maps:
            values = np.asarray(maps[name], dtype=np.float32)
            entry.update(shape=list(values.shape), overlay=f"{name}_saliency.png", npy=f"{name}_saliency.npy")
            save_overlay(out / entry["overlay"], images[name], values, min_side=display)
            np.save(out / entry["npy"], values.astype(np.float16))
            files += [entry["overlay"], entry["npy"]]
        if heatmaps and name in heatmaps:
            entry["heatmap"] = f"{name}_heatmap.png"
            (out / entry["heatmap"]).write_bytes(heatmaps[name])
            files.append(entry["heatmap"])
        saliency[name] = entry
    if "query" in maps and {"query", "reference"} <= set(images):
        card = explanation_card(images["query"], images["reference"], maps["query"], maps.get("reference"),
                                float(report["similarity"]), report.get("explanations"),
                                title=f"query ({report.get('method', '')}, {report.get('mode', '')})",
                                side=max(display, 224))
        card.save(out / "card.png")
        files.append("card.png")
    result = {**report, "saliency": saliency, "files": files + ["result.json"]}
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def summary_lines(result: dict[str, Any], out: str | os.PathLike) -> list[str]:
    """What the commands print after writing: the similarity, the ranked attributes, the files."""
    timing = result.get("timing_ms") or {}
    ms = timing.get("handler", timing.get("explain"))
    about = ", ".join(
        [f"{result['method']}", f"mode={result['mode']}"] + ([f"{ms:.0f} ms"] if ms is not None else [])
    ) if "method" in result else ""
    lines = [f"similarity {result['similarity']:.4f}" + (f" ({about})" if about else "")]
    for rank, e in enumerate(result.get("explanations") or [], 1):
        lines.append(f"{rank}. {e['attribute']:<12} score {e['score']:.4f} (confidence {e['confidence']:.3f}, "
                     f"match {e['match']:.3f}, prior {e['prior']:.3f})"
                     + ("" if e.get("present", True) else " [below threshold]"))
    return lines + [f"wrote {Path(out) / name}" for name in result["files"]]
