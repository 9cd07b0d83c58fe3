"""How close RISE maps come to a converged map, by number of masks: the paper's independent coin
flips (``sampling="random"``) against quasi-random Sobol cells (``sampling="sobol"``), the mask
design behind ``n_masks="auto"`` (README, *Faster explanations*).

For held-out same-class pairs of a fresh synthetic data set (its own seed) and the bundled default
model, each query's map is compared (Pearson) with a map of ``--reference-masks`` independent masks
of another seed; printed: the mean over pairs for each sampling and N.

    python experiments/mask_sampling.py [--pairs 8] [--reference-masks 8000]
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np

from sane.data import open_dataset, write_dataset
from sane.evaluation.saliency_maps import positive_pairs
from sane.metrics import pearson
from sane.models import load_similarity
from sane.saliency import RISE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 2048])
    parser.add_argument("--reference-masks", type=int, default=8000)
    parser.add_argument("--data-seed", type=int, default=7)
    args = parser.parse_args()
    model, preprocess = load_similarity()
    with tempfile.TemporaryDirectory() as tmp:
        write_dataset(tmp, 420, seed=args.data_seed, progress=False)
        dataset = open_dataset(tmp, split="test", preprocess=preprocess)
        pairs = [(dataset[q]["image"], dataset[r]["image"]) for q, r in positive_pairs(dataset, args.pairs, seed=1)]
    rows = {(s, n): [] for s in ("random", "sobol") for n in args.sizes}
    for q, r in pairs:
        converged = RISE(model, n_masks=args.reference_masks, seed=12_345, batch_size=256).explain(q, r).query_map
        for sampling, n in rows:
            result = RISE(model, n_masks=n, sampling=sampling, batch_size=256).explain(q, r)
            rows[sampling, n].append(pearson(result.query_map, converged))
    print(f"Pearson to a {args.reference_masks}-mask map, mean over {len(pairs)} held-out pairs (default model):")
    print("  masks   " + "  ".join(f"{n:>6d}" for n in args.sizes))
    for sampling in ("random", "sobol"):
        print(f"  {sampling:7s} " + "  ".join(f"{np.mean(rows[sampling, n]):6.3f}" for n in args.sizes))


if __name__ == "__main__":
    main()
