"""How well each attribute-discovery method recovers the true factors of a bundled benchmark.

Not part of the library or the tests: it reproduces the README's *Attribute discovery* table. For one
benchmark (its data set and its bundled similarity model), discover attributes with patch discovery,
full-frame clustering and random assignment (same number of attributes, same seed), then print the
NMI (and purity) of each method's clusters against every factor of Shapes with Attributes and the
class, marking with * the two factors the benchmark's classes are made of (what its similarity model
was trained to match on):

    python experiments/discovery_recovery.py --benchmark shapes --queries 300
    python experiments/discovery_recovery.py --benchmark shapes_bg --queries 300

With ``--propagate`` a fourth row, patch discovery with propagation (the same clusters; every image also
labelled by its own grid patches), shows what the vocabulary does once every image has its attributes.

Patch discovery's queries are a seeded sample of the data set; the other two methods cluster every image.
Then, on same-class pairs, whether each vocabulary has an attribute shared by query and reference that
stands for the factor explaining their match (the exact counterfactual of SPEC §6):
:func:`sane.evaluation.discovery.explaining_factor_found`.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from sane.data import open_dataset
from sane.data.benchmarks import BENCHMARK_DATA, ensure_data
from sane.evaluation.attribute_explanations import same_class_index_pairs
from sane.evaluation.discovery import (
    explaining_factor_found,
    explaining_factors,
    format_found,
    format_recovery,
    recovery,
)
from sane.models import default_weights_path, load_similarity
from sane.models.embedder import Embedder
from sane.train.discovery import METHODS, DiscoverySettings, discover


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benchmark", default="shapes", choices=sorted(BENCHMARK_DATA))
    parser.add_argument("--n-attributes", type=int, default=20)
    parser.add_argument("--queries", type=int, default=300, help="patch discovery's queries")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", default=None, help="patch discovery's resumable cache directory")
    parser.add_argument("--pairs", type=int, default=300, help="same-class pairs for the explaining-factor check")
    parser.add_argument("--propagate", action="store_true",
                        help="add a row for patch discovery with propagation (every image labelled by its grid patches)")
    args = parser.parse_args()
    data_dir, classes_by = BENCHMARK_DATA[args.benchmark]
    model, preprocess = load_similarity(default_weights_path(args.benchmark))
    dataset = open_dataset(ensure_data(data_dir), split="all", preprocess=preprocess)
    reports, found = {}, {}
    runs = [(m, m, False) for m in METHODS] + ([("patch+propagate", "patch", True)] if args.propagate else [])
    for name, method, propagate in runs:
        start = time.perf_counter()
        settings = DiscoverySettings(method=method, n_attributes=args.n_attributes, queries=args.queries,
                                     propagate=propagate, seed=args.seed)
        found[name] = discover(model, dataset, settings, cache_dir=args.cache)
        if not propagate:  # propagation labels more images, the clusters (what NMI measures) are patch's
            reports[name] = recovery(found[name], dataset)
        covered = int((found[name].image_attributes.sum(1) > 0).sum())
        print(f"{name}: {len(found[name].unit_image)} units clustered in {time.perf_counter() - start:.0f} s; "
              f"{covered} of {len(dataset)} images have an attribute", flush=True)
    print(f"\n{args.benchmark}: {len(dataset)} images, {args.n_attributes} attributes, seed {args.seed}; "
          f"NMI (purity) against each factor; * = the classes' factors")
    print(format_recovery(reports, uses=(*classes_by, "class")))
    # Item 4's second half: for matching (same-class) pairs, the factor that explains the match (exact
    # counterfactual), and whether the query and reference share an attribute standing for it.
    pairs = same_class_index_pairs(dataset.targets, args.pairs, np.random.default_rng(args.seed))
    best = explaining_factors(Embedder(model), preprocess, dataset, pairs, seed=args.seed)
    print(f"\n{len(pairs)} same-class pairs; found = share whose query and reference share an attribute standing "
          f"for the factor that explains their match (exact counterfactual), at the query's value; shared = share "
          f"sharing any attribute; found|shared = found among those; then found per explaining factor (pairs)")
    print(format_found({name: explaining_factor_found(found[name], dataset, pairs, best) for name in found}))


if __name__ == "__main__":
    main()
