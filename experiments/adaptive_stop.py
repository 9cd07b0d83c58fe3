"""How few masks ``n_masks="auto"`` could use: its stopping rule at several margins against an oracle
that knows the converged map (README, *Faster explanations*).

For held-out same-class pairs of a fresh synthetic data set (its own seed) and each bundled benchmark
model, the two Sobol halves of an auto map are followed every 128 masks up to N = 2000. At each check:
the map of all masks so far, its Pearson correlation with a converged map (8000 independent masks of
another seed), the noise of the map (split-half) and the noise N independent masks would have
(:meth:`sane.saliency.RISE.independent_noise`, what auto compares with). Printed per benchmark:

- the oracle: each pair stopped at the first check where its map is at least as close to the converged
  map as the fixed-N map of independent masks is (no stopping rule can do better with these masks);
- the rule at each margin (stop once the noise is at most margin x that of N independent masks; auto
  uses ``RISE.STOP_MARGIN``): mean masks used ÷ N, and the mean and the worst change in Pearson against
  the fixed-N map;
- all N Sobol masks against N independent ones.

    python experiments/adaptive_stop.py [--pairs 16] [--data-seed 99]
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np
import torch

from sane.data import open_dataset, write_dataset
from sane.data.benchmarks import BENCHMARK_DATA
from sane.evaluation.saliency_maps import positive_pairs
from sane.metrics import pearson
from sane.models import default_weights_path, load_similarity
from sane.saliency import RISE
from sane.saliency.masks import rise_masks
from sane.saliency.rise import HALF_SEED_OFFSET, NOISE_SAMPLE

N, CHECK, REFERENCE_MASKS, REFERENCE_SEED = 2000, 128, 8000, 10_007
MARGINS = (1.0, 0.9, 0.8, 0.7)


def follow(generator: RISE, q: torch.Tensor, r: torch.Tensor, halves: list[torch.Tensor]) -> list[tuple]:
    """(masks used, map's noise, noise of N independent masks, map) at every check of an auto map."""
    e = generator.embedder(torch.stack([q, r]))
    scores = []
    for masks in halves:
        _, embs = generator._stream(q[None], masks, keep_embeddings=True)
        scores.append(generator.embedder.embedding.mean_scores(embs, e[1:2]).flatten())
    flat = [m.flatten(1) for m in halves]
    checks = []
    for n in range(CHECK // 2, len(halves[0]) + 1, CHECK // 2):
        nums = [s[:n] @ m[:n] for s, m in zip(scores, flat)]
        covs = [m[:n].sum(0) for m in flat]
        a, b = (num / cov for num, cov in zip(nums, covs))
        full = (nums[0] + nums[1]) / (covs[0] + covs[1])
        noise = float(((a - b) / 2).double().var())
        k = min(NOISE_SAMPLE, n)  # as auto: the first masks of each half drawn so far
        sample = torch.cat([m[:k] for m in flat]), torch.cat([s[:k] for s in scores])[:, None]
        independent = float(generator.independent_noise(full[None], *sample)[0])
        checks.append((2 * n, noise, independent, full))
    return checks


def run(benchmark: str, args: argparse.Namespace, workdir: str) -> None:
    model, preprocess = load_similarity(default_weights_path(benchmark))
    data = f"{workdir}/{benchmark}"
    write_dataset(data, 420, seed=args.data_seed, classes_by=BENCHMARK_DATA[benchmark][1], progress=False)
    dataset = open_dataset(data, split="test", preprocess=preprocess)
    pairs = [(dataset[q]["image"], dataset[r]["image"]) for q, r in positive_pairs(dataset, args.pairs, seed=1)]
    size = tuple(pairs[0][0].shape[-2:])
    halves = [rise_masks(N // 2, 8, 0.5, size, s, sampling="sobol") for s in (0, HALF_SEED_OFFSET)]
    generator = RISE(model, n_masks=N, batch_size=256)  # independent_noise of N masks; the forward runner
    reference = RISE(model, n_masks=REFERENCE_MASKS, seed=REFERENCE_SEED, batch_size=256)
    oracle, ceiling = [], []
    rule = {m: ([], []) for m in MARGINS}
    for q, r in pairs:
        converged = reference.explain(q, r).query_map
        fixed = pearson(generator.explain(q, r).query_map, converged)
        checks = [(n, noise, independent, pearson(full, converged)) for n, noise, independent, full
                  in follow(generator, q, r, halves)]
        oracle.append(next((n for n, _, _, p in checks if p >= fixed), N))
        ceiling.append(checks[-1][3] - fixed)
        for margin, (used, change) in rule.items():
            n, _, _, p = next((c for c in checks if c[1] <= margin * c[2]), checks[-1])
            used.append(n)
            change.append(p - fixed)
    print(f"\n{benchmark}: {len(pairs)} held-out pairs (data seed {args.data_seed}), N = {N}, checks every {CHECK}")
    print(f"  oracle stop (first check at least as close to the converged map as fixed N): "
          f"{np.mean(oracle) / N:.3f} of the masks")
    for margin, (used, change) in rule.items():
        mark = "  <- auto" if margin == RISE.STOP_MARGIN else ""
        print(f"  rule at margin {margin:.1f}: {np.mean(used) / N:.3f} of the masks, Pearson vs fixed "
              f"{np.mean(change):+.4f} (worst pair {np.min(change):+.4f}){mark}")
    print(f"  all {N} Sobol masks vs {N} independent: Pearson {np.mean(ceiling):+.4f} (worst pair {np.min(ceiling):+.4f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benchmarks", nargs="+", default=list(BENCHMARK_DATA), choices=list(BENCHMARK_DATA))
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--data-seed", type=int, default=99)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        for benchmark in args.benchmarks:
            run(benchmark, args, workdir)


if __name__ == "__main__":
    main()
