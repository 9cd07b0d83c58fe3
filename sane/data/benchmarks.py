"""The bundled synthetic benchmarks (their models are in ``sane/models/weights/``): where each one's
data set lives, the two factors its classes are made of, and generating it on first use."""

from __future__ import annotations

from pathlib import Path

from sane.data.synthetic import DEFAULT_CLASSES_BY, write_dataset

DEFAULT_DATA = "data/shapes"
# Each benchmark's data directory and class factors (sane data synth --classes-by).
BENCHMARK_DATA = {"shapes": (DEFAULT_DATA, DEFAULT_CLASSES_BY), "shapes_bg": ("data/shapes_bg", ("shape", "background"))}


def ensure_data(path: str) -> str:
    """A bundled benchmark's synthetic data set is generated on first use, so evaluations work out of the box."""
    for data_dir, classes_by in BENCHMARK_DATA.values():
        if path == data_dir and not Path(path).is_dir():
            option = "" if classes_by == DEFAULT_CLASSES_BY else f" --classes-by {','.join(classes_by)}"
            print(f"{path} not found: generating it (sane data synth --out {path} --n 4200 --seed 0{option})")
            write_dataset(path, 4200, seed=0, classes_by=classes_by)
    return path
