"""How well each attribute-discovery method recovers the true factors of a bundled benchmark.

Not part of the library or the tests: it reproduces the README's *Attribute discovery* table. For one
benchmark (its data set and its bundled similarity model), discover attributes with patch discovery,
full-frame clustering and random assignment (same number of attributes, same seed), then print the
NMI (and purity) of each method's clusters against every factor of Shapes with Attributes and the
class, marking with * the two factors the benchmark's classes are made of (what its similarity model
was trained to match on):

    python experiments/discovery_recovery.py --benchmark shapes --queries 300
    python experiments/discovery_recovery.py --benchmark shapes_bg --queries 300

Patch discovery's queries are a seeded sample of the data set; the other two methods cluster every image.
"""

from __future__ import annotations

import argparse
import time

from sane.data import open_dataset
from sane.data.benchmarks import BENCHMARK_DATA, ensure_data
from sane.evaluation.discovery import format_recovery, recovery
from sane.models import default_weights_path, load_similarity
from sane.train.discovery import METHODS, DiscoverySettings, discover


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benchmark", default="shapes", choices=sorted(BENCHMARK_DATA))
    parser.add_argument("--n-attributes", type=int, default=20)
    parser.add_argument("--queries", type=int, default=300, help="patch discovery's queries")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", default=None, help="patch discovery's resumable cache directory")
    args = parser.parse_args()
    data_dir, classes_by = BENCHMARK_DATA[args.benchmark]
    model, preprocess = load_similarity(default_weights_path(args.benchmark))
    dataset = open_dataset(ensure_data(data_dir), split="all", preprocess=preprocess)
    reports = {}
    for method in METHODS:
        start = time.perf_counter()
        settings = DiscoverySettings(method=method, n_attributes=args.n_attributes, queries=args.queries,
                                     seed=args.seed)
        found = discover(model, dataset, settings, cache_dir=args.cache)
        reports[method] = recovery(found, dataset)
        print(f"{method}: {len(found.unit_image)} units clustered in {time.perf_counter() - start:.0f} s", flush=True)
    print(f"\n{args.benchmark}: {len(dataset)} images, {args.n_attributes} attributes, seed {args.seed}; "
          f"NMI (purity) against each factor; * = the classes' factors")
    print(format_recovery(reports, uses=(*classes_by, "class")))


if __name__ == "__main__":
    main()
