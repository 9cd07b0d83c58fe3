"""Issue 4 analysis: where SANE's explanations get their edge, and how much the ranker could change it.

Not part of the library or the tests: it reproduces the numbers in the README's *Attribute models*
section (the list under "What the numbers say, honestly"). Two steps:

    python experiments/issue4_signal.py collect --benchmark shapes_bg --split val --pairs 400 --out runs/ana/shapes_bg_val.pt
    python experiments/issue4_signal.py collect --benchmark shapes_bg --split test --pairs 400 --out runs/ana/shapes_bg_test.pt
    python experiments/issue4_signal.py report --val runs/ana/shapes_bg_val.pt --test runs/ana/shapes_bg_test.pt

``collect`` stores per pair the exact counterfactual Δ per factor, the query's and reference's RISE
maps (300 masks) and every bundled attribute model's scores and activation maps (about 6 minutes for
400 pairs on 2 cores). Validation pairs are those of ``sane tune-ranker`` (held-out images of the
training classes, same seed); test pairs are drawn from the test split with seed 123, so they
differ from ``sane eval-attributes``'s. ``report`` prints, without further forward passes:
the class-majority ceiling, the AUC of the map-match signal (with the pair's own and with another
pair's saliency map), the bundled rankers' top-1 with the paired margin, and the ranker variants
(confidence temperature, conditional prior) chosen on validation and checked on test.
"""

from __future__ import annotations

import argparse
import collections
import math

import numpy as np
import torch

from sane.data import open_dataset
from sane.data.synthetic import FACTORS
from sane.evaluation.attribute_explanations import same_class_index_pairs
from sane.explain.ranker import ATTRIBUTE_FACTORS, map_match
from sane.metrics.counterfactual import counterfactual_deltas
from sane.models import load_similarity
from sane.models.attributes import load_attributes
from sane.models.embedder import Embedder
from sane.saliency import RISE
from sane.train.validation_split import DEFAULT_VAL_FRACTION, validation_split

MODELS = ("sane", "classifier", "fashionsearchnet")
W_GRID = (0, .1, .2, .3, .4, .5, .6, .7, .8, .9, 1)
GAMMA_GRID = (0, .25, .5, 1, 2, 4)
CLASS_FACTORS = {"shapes": ("shape", "colour"), "shapes_bg": ("shape", "background")}


def collect(benchmark: str, split: str, n_pairs: int, out: str) -> None:
    weights = "sane/models/weights" + ("/shapes_bg" if benchmark == "shapes_bg" else "")
    similarity = weights + ("/similarity.pt" if benchmark == "shapes_bg" else "/similarity_compact.pt")
    sim, pre = load_similarity(similarity, "cpu")
    models = {m: load_attributes(f"{weights}/attributes_{m}.pt", "cpu")[0] for m in MODELS}
    if split == "val":  # the pairs of sane tune-ranker (seed 0)
        rng = np.random.default_rng([0, 4])
        data = open_dataset(f"data/{benchmark}", split="train", preprocess=pre)
        held_out = validation_split(data.targets, DEFAULT_VAL_FRACTION, 0)
        pairs = same_class_index_pairs(data.targets, n_pairs, rng, queries_from=held_out)
    else:
        rng = np.random.default_rng(123)
        data = open_dataset(f"data/{benchmark}", split="test", preprocess=pre)
        pairs = same_class_index_pairs(data.targets, n_pairs, rng)
    needed = sorted({i for pair in pairs for i in pair})
    images = dict(zip(needed, data.stack_images(needed, progress=False)))
    embedder = Embedder(sim, 32)
    rise = RISE(sim, n_masks=300, batch_size=32, seed=0, fuse=True, channels_last=True)
    rec: dict = collections.defaultdict(list)
    for qi, ri in pairs:
        deltas = counterfactual_deltas(embedder, pre, data.scenes[qi], images[ri], 3, rng)
        rec["deltas"].append(torch.tensor([deltas[f] for f in FACTORS]))
        rec["sal_q"].append(rise.explain(images[qi], images[ri]).query_map.half())
        rec["labels"].append(torch.as_tensor(data.image_attributes[qi]))
        for name, model in models.items():
            with torch.inference_mode():
                z, maps = model(images[qi][None])
            rec[name + "_z"].append(z[0])
            rec[name + "_maps"].append(maps[0].half())
    saved = {key: torch.stack(values) for key, values in rec.items()}
    saved.update(pairs=pairs, attributes=list(data.attributes), benchmark=benchmark,
                 thresholds={m: torch.as_tensor(model.thresholds) for m, model in models.items()},
                 ranker_defaults={m: model.ranker_defaults for m, model in models.items()},
                 model_attributes={m: list(model.attributes) for m, model in models.items()})
    torch.save(saved, out)
    print(f"wrote {out}: {len(pairs)} {split} pairs of {benchmark}")


def terms(rec: dict, name: str, saliency: torch.Tensor | None = None) -> dict:
    """One model's arrays over the stored pairs: z, match, candidates, utility (1 for the true factor), prior."""
    names = rec["model_attributes"][name]
    factor = np.array([FACTORS.index(ATTRIBUTE_FACTORS[a]) for a in names])
    maps = rec[name + "_maps"].float()
    saliency = rec["sal_q"].float() if saliency is None else saliency
    match = map_match(maps, saliency).numpy()
    z = rec[name + "_z"].float().numpy()
    truth = rec["deltas"].argmin(1).numpy()
    defaults = rec["ranker_defaults"][name]
    return {"z": z, "match": match, "cand": z >= rec["thresholds"][name].numpy(), "factor": factor,
            "util": (factor[None] == truth[:, None]).astype(float), "labels": rec["labels"].numpy().astype(bool),
            "prior": np.array([defaults["prior"].get(a, 0.0) for a in names]),
            "w": defaults["w"], "gamma": defaults["gamma"]}


def hits(t: dict, score: np.ndarray) -> np.ndarray:
    """Per pair: is the top-1 candidate under ``score`` in the counterfactually best factor?"""
    pick = np.where(t["cand"], score, -np.inf).argmax(1)
    return t["util"][np.arange(len(pick)), pick]


def spec_score(t: dict, w: float, gamma: float, temperature: float = 1.0, prior: np.ndarray | None = None):
    conf = 1 / (1 + np.exp(-t["z"] / temperature))
    prior = t["prior"] if prior is None else prior
    return prior[None] ** gamma * (w * conf + (1 - w) * t["match"])


def auc(positive: np.ndarray, score: np.ndarray) -> float:
    """Probability that a positive outscores a negative (ties count half)."""
    pos, neg = score[positive], score[~positive]
    return float((pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean())


def match_signal_auc(t: dict, truth: np.ndarray, first: int, second: int) -> float:
    """AUC of (best candidate match in factor ``first`` − best in ``second``) for "the truth is ``first``"."""
    def best(f: int) -> np.ndarray:
        return np.where(t["cand"] & (t["factor"][None] == f), t["match"], -1.0).max(1)
    keep = np.isin(truth, [first, second])
    return auc(truth[keep] == first, (best(first) - best(second))[keep])


def conditional_prior(t: dict, smoothing: float = 1.0) -> np.ndarray:
    """P(a's factor is the best | a present), from the pairs' labels (the bundled prior is the joint frequency)."""
    return ((t["labels"] * t["util"]).sum(0) + smoothing) / (t["labels"].sum(0) + 2 * smoothing)


def report(val_path: str, test_path: str) -> None:
    val, test = (torch.load(p, weights_only=False) for p in (val_path, test_path))
    benchmark = val["benchmark"]
    first, second = (FACTORS.index(f) for f in CLASS_FACTORS[benchmark])
    truth_val = val["deltas"].argmin(1).numpy()
    by_class = collections.defaultdict(list)
    names = np.array(val["attributes"])
    for k, label in enumerate(val["labels"].numpy().astype(bool)):
        key = tuple(a for a in names[label] if ATTRIBUTE_FACTORS[a] in CLASS_FACTORS[benchmark]
                    and a not in ("round", "pointy", "warm", "cool"))
        by_class[key].append(truth_val[k])
    ceiling = sum(np.bincount(v).max() for v in by_class.values()) / len(truth_val)
    print(f"{benchmark}: class-majority factor is the true one for {ceiling:.3f} of validation pairs")
    shuffled = val["sal_q"].float()[torch.randperm(len(truth_val), generator=torch.Generator().manual_seed(0))]
    for name in ("sane", "classifier"):
        own = match_signal_auc(terms(val, name), truth_val, first, second)
        other = match_signal_auc(terms(val, name, shuffled), truth_val, first, second)
        print(f"  {name}: match-signal AUC {own:.3f} (another pair's saliency map: {other:.3f})")
    tv = {m: terms(val, m) for m in MODELS}
    tt = {m: terms(test, m) for m in MODELS}
    bundled = {m: hits(tt[m], spec_score(tt[m], tt[m]["w"], tt[m]["gamma"])) for m in MODELS}
    for m in MODELS:
        print(f"  bundled ranker, test top-1 {m}: {bundled[m].mean():.3f}")
    for m in ("classifier", "fashionsearchnet"):
        diff = bundled["sane"] - bundled[m]
        print(f"  SANE - {m}: {100 * diff.mean():+.1f} ± {100 * diff.std(ddof=1) / math.sqrt(len(diff)):.1f} points")
    variants = {
        "confidence temperature": lambda t, w, g, x: spec_score(t, w, g, temperature=x),
        "conditional prior": lambda t, w, g, x: spec_score(t, w, g, prior=x),
    }
    for label, score in variants.items():
        for m in ("sane", "classifier"):
            extra = (1, 3, 10, 30) if label == "confidence temperature" else (conditional_prior(tv[m]),)
            grid = [(w, g, x) for w in W_GRID for g in GAMMA_GRID for x in extra]
            w, g, x = max(grid, key=lambda p: hits(tv[m], score(tv[m], *p)).mean())
            shown = f", T={x}" if label == "confidence temperature" else ""
            print(f"  {label}, {m} (w={w}, gamma={g}{shown}): validation "
                  f"{hits(tv[m], score(tv[m], w, g, x)).mean():.3f}, test {hits(tt[m], score(tt[m], w, g, x)).mean():.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect")
    c.add_argument("--benchmark", default="shapes", choices=list(CLASS_FACTORS))
    c.add_argument("--split", default="val", choices=["val", "test"])
    c.add_argument("--pairs", type=int, default=400)
    c.add_argument("--out", required=True)
    r = sub.add_parser("report")
    r.add_argument("--val", required=True)
    r.add_argument("--test", required=True)
    args = parser.parse_args()
    if args.command == "collect":
        collect(args.benchmark, args.split, args.pairs, args.out)
    else:
        report(args.val, args.test)


if __name__ == "__main__":
    main()
