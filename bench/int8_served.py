"""Why the CPU profile leaves int8 off: the served int8 model (``handler.quantize``) is calibrated once
per worker on the archive's pair; on other pairs its maps drift from fp32's. Prints, for held-out
example pairs (other seeds than the bundled one), the Pearson correlation of the int8 RISE map to
the fp32 map, for the worker-calibrated int8 model and for one calibrated on the pair itself (what
`sane explain --int8` does), and the seconds one re-quantization (per-request calibration) costs.

    python bench/int8_served.py [--pairs 6] [--n-masks 1000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sane.data import write_example_pair
from sane.images import load_image
from sane.metrics import pearson
from sane.models import load_similarity
from sane.models.optimize import quantize_int8
from sane.saliency import RISE
from sane.saliency.engine import calibration_batch

ROOT = Path(__file__).resolve().parents[1]


def int8_model(model, images: torch.Tensor):
    return quantize_int8(model, calibration_batch(images).contiguous(memory_format=torch.channels_last), 64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--n-masks", type=int, default=1000)
    args = parser.parse_args()
    model, pre = load_similarity()
    archive_pair = torch.stack([load_image(ROOT / "examples" / n, pre) for n in ("query.jpg", "reference.jpg")])
    worker = int8_model(model, archive_pair)
    rows, seconds = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(1, args.pairs + 1):
            q, r = (load_image(p, pre) for p in write_example_pair(Path(tmp) / str(seed), seed=seed))
            fp32 = RISE(model, n_masks=args.n_masks, batch_size=64).explain(q, r).query_map
            start = time.perf_counter()
            own = int8_model(model, torch.stack([q, r]))
            seconds.append(time.perf_counter() - start)
            maps = {name: RISE(m, n_masks=args.n_masks, batch_size=64, channels_last=True).explain(q, r).query_map
                    for name, m in (("worker", worker), ("own", own))}
            rows.append((pearson(maps["worker"], fp32), pearson(maps["own"], fp32)))
    worker_r, own_r = np.array(rows).T
    print(f"Pearson of int8 RISE maps ({args.n_masks} masks) to fp32's on {args.pairs} held-out pairs:")
    print(f"  calibrated once per worker on the archive pair: mean {worker_r.mean():.4f}, min {worker_r.min():.4f}")
    print(f"  calibrated on the pair itself:                   mean {own_r.mean():.4f}, min {own_r.min():.4f}")
    print(f"  one re-quantization (per-request calibration): {statistics.median(seconds):.2f} s (median)")


if __name__ == "__main__":
    main()
