"""Fixed-N RISE (the paper's N = 2000, independent masks) vs ``n_masks="auto"`` (Sobol masks in two
halves, stopped once the map is as precise as N independent masks, or with ``--reliability`` at that
split-half reliability; ceiling N), side by side, in one run.

Pairs are held out from everything the bundled models and the benchmark scripts saw: a fresh
synthetic data set (seed ``--data-seed``, each benchmark's own class factors), same-class pairs of
its test split. For each benchmark model it prints, per method: the masks used (mean), seconds per
map (median), insertion and deletion AUC (x100, grey substrate, SPEC §2), the pointing game on the
object masks, and the Pearson correlation of each map with a reference map of 4N independent masks
(another seed); then auto ÷ fixed for the masks and the AUCs.

    python bench/adaptive.py                       # both bundled benchmarks, 12 pairs each
    python bench/adaptive.py --pairs 40 --benchmarks shapes_bg
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch

from sane.data import open_dataset, write_dataset
from sane.data.benchmarks import BENCHMARK_DATA
from sane.evaluation.saliency_maps import positive_pairs
from sane.metrics import insertion_deletion, pearson, pointing_game
from sane.models import default_weights_path, load_similarity
from sane.saliency import RISE

REFERENCE_SEED = 10_007  # the 4N-mask reference map's own masks


def run(benchmark: str, args: argparse.Namespace, workdir: str) -> None:
    model, preprocess = load_similarity(default_weights_path(benchmark))
    data = f"{workdir}/{benchmark}"
    write_dataset(data, args.images, seed=args.data_seed, classes_by=BENCHMARK_DATA[benchmark][1], progress=False)
    dataset = open_dataset(data, split="test", preprocess=preprocess, with_masks=True)
    index_pairs = positive_pairs(dataset, args.pairs, seed=args.seed)
    generators = {
        "fixed": RISE(model, n_masks=args.n, batch_size=args.batch_size),
        "auto": RISE(model, n_masks="auto", max_masks=args.n, reliability=args.reliability,
                     batch_size=args.batch_size),
    }
    reference = RISE(model, n_masks=4 * args.n, seed=REFERENCE_SEED, batch_size=args.batch_size)
    pairs, objects = [], []
    rows: dict[str, dict[str, list]] = {name: {"maps": [], "masks": [], "seconds": [], "pearson": []}
                                        for name in generators}
    for qi, ri in index_pairs:
        q, r = dataset[qi]["image"], dataset[ri]["image"]
        pairs.append((q, r))
        objects.append(dataset[qi]["mask"])
        converged = reference.explain(q, r).query_map
        for name, generator in generators.items():
            start = time.perf_counter()
            result = generator.explain(q, r)
            rows[name]["seconds"].append(time.perf_counter() - start)
            rows[name]["maps"].append(result.query_map)
            rows[name]["masks"].append(result.n_masks_used)
            rows[name]["pearson"].append(pearson(result.query_map, converged))
    table = {}
    for name, row in rows.items():
        scores = insertion_deletion(model, pairs, row["maps"], substrate="constant", preprocess=preprocess)
        table[name] = {
            "masks": float(np.mean(row["masks"])),
            "seconds": statistics.median(row["seconds"]),
            "insertion": scores["insertion"],
            "deletion": scores["deletion"],
            "pointing": float(np.mean([pointing_game(m, o) for m, o in zip(row["maps"], objects)])),
            "pearson": float(np.mean(row["pearson"])),
        }
    rule = (f"split-half reliability {args.reliability}" if args.reliability is not None
            else f"noise <= {RISE.STOP_MARGIN} x that of N independent masks")
    print(f"\n{benchmark}: {len(pairs)} held-out pairs (data seed {args.data_seed}), N = {args.n}, "
          f"auto stops at {rule}")
    print(f"  {'':6s} {'masks':>7s} {'s/map':>7s} {'insertion':>10s} {'deletion':>9s} {'pointing':>9s} "
          f"{'pearson(4N)':>12s}")
    for name, t in table.items():
        print(f"  {name:6s} {t['masks']:7.0f} {t['seconds']:7.2f} {t['insertion']:10.2f} {t['deletion']:9.2f} "
              f"{t['pointing']:9.3f} {t['pearson']:12.4f}")
    fixed, auto = table["fixed"], table["auto"]
    print(f"  auto / fixed: masks {auto['masks'] / fixed['masks']:.3f}, time {auto['seconds'] / fixed['seconds']:.3f}, "
          f"insertion {auto['insertion'] / fixed['insertion']:.3f}, deletion {auto['deletion'] / fixed['deletion']:.3f}; "
          f"pointing {auto['pointing'] - fixed['pointing']:+.3f}, pearson {auto['pearson'] - fixed['pearson']:+.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benchmarks", nargs="+", default=list(BENCHMARK_DATA), choices=list(BENCHMARK_DATA))
    parser.add_argument("--pairs", type=int, default=12)
    parser.add_argument("--n", type=int, default=2000, help="fixed N, and auto's ceiling")
    parser.add_argument("--reliability", type=float, default=RISE.default("reliability"),
                        help="stop at this split-half reliability instead "
                             "(default: as precise as N independent masks)")
    parser.add_argument("--images", type=int, default=420, help="size of the held-out synthetic data set")
    parser.add_argument("--data-seed", type=int, default=2026)
    parser.add_argument("--seed", type=int, default=1, help="pair sampling")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="forward batch of both (auto checks every 128 masks: two halves of 64)")
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as workdir:
        for benchmark in args.benchmarks:
            run(benchmark, args, workdir)


if __name__ == "__main__":
    main()
