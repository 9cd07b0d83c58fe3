"""Where SANE's attribute explanations get their edge, and how much the ranker could change it.

Not part of the library or the tests: it reproduces the numbers in the README's *Attribute models*
section (the list under "What the numbers say, honestly"). Two steps per benchmark and kind of pair:

    python experiments/attribute_ranking_signal.py collect --benchmark shapes_bg --split val --pairs 400 --out runs/ana/shapes_bg_val.pt
    python experiments/attribute_ranking_signal.py collect --benchmark shapes_bg --split test --pairs 400 --out runs/ana/shapes_bg_test.pt
    python experiments/attribute_ranking_signal.py report --val runs/ana/shapes_bg_val.pt --test runs/ana/shapes_bg_test.pt

``collect`` stores per pair the exact counterfactual Δ per factor, the query's RISE map (300 masks,
r as reference), q's object coverage and every bundled attribute model's scores and activation maps
(2–3 minutes per 400 pairs on 2 cores). Validation pairs are those of ``sane tune-ranker`` (held-out
images of the training classes, same seed); test pairs are drawn from the test split with seed 123,
so they differ from ``sane eval-attributes``'s. ``--kind`` picks the references: another image of
q's class (``same-class``, what the library evaluates), q's nearest neighbour of another class
(``nearest-other-class``), or a random image that shares one class factor with q, which one drawn
per pair (``shared-factor``: the factor that explains the match then varies within q's class); the
last two take test references from every split. ``report`` prints, without further forward passes:
the class-majority ceiling; the AUC and thresholded top-1 of the saliency map's own signal (its
share on the object) and of each model's map-match signal (and its AUC with another pair's map);
the bundled rankers' top-1 with the paired margin; the rankers re-tuned on validation pairs of the
same kind (prior, w, γ); and the ranker variants (confidence temperature, conditional prior)
chosen on validation and checked on test.

``cache-shared`` builds the saliency cache of the README's shared-reference SANE: the bundled
model's ``sane cache-saliency`` settings (1020 images, 250 masks), each reference sharing only one
class factor with its image; train it with ``sane train-attributes --cache`` and pass it to
``collect --sane``.
"""

from __future__ import annotations

import argparse
import collections

import numpy as np
import torch

from sane.data import open_dataset
from sane.data.benchmarks import BENCHMARK_DATA
from sane.data.synthetic import ATTRIBUTE_FACTORS, FACTORS, render
from sane.evaluation.attribute_explanations import paired_difference, same_class_index_pairs
from sane.evaluation.prior import smoothed_prior
from sane.evaluation.tuning import GAMMA_GRID, W_GRID
from sane.explain.map_match import DEFAULT_QUERY_MASKS, map_match
from sane.explain.ranker import spec_score
from sane.metrics.counterfactual import counterfactual_deltas
from sane.models import default_weights_path, load_similarity
from sane.models.attribute_predictors import default_attribute_weights, load_attributes
from sane.models.embedder import Embedder
from sane.saliency import RISE
from sane.train.validation_split import DEFAULT_VAL_FRACTION, validation_split

MODELS = ("sane", "classifier", "fashionsearchnet")
BATCH_SIZE = 32  # forward batch: the compact model's fastest on a 2-core CPU (the evaluation commands' default)
# Each bundled benchmark's two class factors and data directory (sane eval-attributes --benchmark).
CLASS_FACTORS = {benchmark: factors for benchmark, (_, factors) in BENCHMARK_DATA.items()}
DATA_DIRS = {benchmark: data_dir for benchmark, (data_dir, _) in BENCHMARK_DATA.items()}


def factor_values(scenes, factors) -> dict[str, np.ndarray]:
    """Each factor's value per image, as arrays over the data set."""
    return {f: np.array([getattr(s, f) for s in scenes]) for f in factors}


def sharing_only(values: dict[str, np.ndarray], keep: str, change: str, index: int) -> np.ndarray:
    """(N,) bool: the images with image ``index``'s ``keep`` value and another ``change`` value."""
    return (values[keep] == values[keep][index]) & (values[change] != values[change][index])


def cache_shared_factor(benchmark: str, out: str, limit: int = 1020, n_masks: int = 250) -> None:
    """`sane cache-saliency` as the bundled SANE's cache was built, except that each image's references
    share exactly one class factor with it (which one drawn per reference) instead of its class."""
    from sane.train.saliency_cache import build_saliency_cache

    data_dir = DATA_DIRS[benchmark]
    scenes = open_dataset(data_dir, split="train").scenes
    factors = CLASS_FACTORS[benchmark]
    values = factor_values(scenes, factors)

    def shared_references(targets, pool, index, k, seed):  # build_saliency_cache's ``pick_references``
        rng = np.random.default_rng([seed, 29, int(index)])
        chosen: list[int] = []
        for _ in range(k):
            keep, change = factors if rng.random() < 0.5 else factors[::-1]
            pool_here = np.setdiff1d(np.flatnonzero(pool & sharing_only(values, keep, change, index)), chosen)
            if len(pool_here):
                chosen.append(int(rng.choice(pool_here)))
        return np.sort(np.array(chosen, dtype=np.int64))

    model, preprocess = load_similarity(default_weights_path(benchmark))
    build_saliency_cache(data_dir, out, model, preprocess, n_masks=n_masks, limit=limit, pick_references=shared_references)


def nearest_other_class_pairs(embeddings: np.ndarray, targets, queries: np.ndarray, n_pairs: int,
                              rng: np.random.Generator) -> list[tuple[int, int]]:
    """(q, r) with q drawn from ``queries`` (indices) and r its nearest neighbour of another class."""
    targets = np.asarray(targets)
    pairs = []
    for _ in range(n_pairs):
        qi = int(queries[int(rng.integers(len(queries)))])
        sims = embeddings @ embeddings[qi]
        sims[targets == targets[qi]] = -np.inf
        pairs.append((qi, int(np.argmax(sims))))
    return pairs


def shared_factor_pairs(scenes, factors: tuple[str, str], queries: np.ndarray, n_pairs: int,
                        rng: np.random.Generator) -> list[tuple[int, int]]:
    """(q, r) with r a random image sharing exactly one of the class ``factors`` with q, that factor
    drawn at random: which factor explains the match then varies within q's class."""
    values = factor_values(scenes, factors)
    pairs = []
    while len(pairs) < n_pairs:
        qi = int(queries[int(rng.integers(len(queries)))])
        keep, change = factors if rng.random() < 0.5 else factors[::-1]
        pool = np.flatnonzero(sharing_only(values, keep, change, qi))
        if len(pool):  # else no image shares that factor only (e.g. the other classes of it are test classes)
            pairs.append((qi, int(pool[int(rng.integers(len(pool)))])))
    return pairs


def collect(benchmark: str, split: str, n_pairs: int, out: str, kind: str = "same-class",
            sane: str | None = None) -> None:
    sim, pre = load_similarity(default_weights_path(benchmark), "cpu")
    paths = {m: default_attribute_weights(m, benchmark) for m in MODELS} | ({"sane": sane} if sane else {})
    models = {m: load_attributes(path, "cpu")[0] for m, path in paths.items()}
    embedder = Embedder(sim, BATCH_SIZE)
    if split == "val":  # the pairs of sane tune-ranker (seed 0)
        rng = np.random.default_rng([0, 4])
        data = open_dataset(DATA_DIRS[benchmark], split="train", preprocess=pre)
        held_out = validation_split(data.targets, DEFAULT_VAL_FRACTION, 0)
        queries = np.flatnonzero(held_out)
    else:
        rng = np.random.default_rng(123)
        data = open_dataset(DATA_DIRS[benchmark], split="test", preprocess=pre)
        queries = np.arange(len(data))
        if kind != "same-class":  # references from every split, as eval-explanations' database
            test = {path for path, _ in data.samples}
            data = open_dataset(DATA_DIRS[benchmark], split="all", preprocess=pre)
            queries = np.flatnonzero([path in test for path, _ in data.samples])
    if kind == "same-class":
        pairs = same_class_index_pairs(data.targets, n_pairs, rng, queries_from=np.isin(np.arange(len(data)), queries))
    elif kind == "shared-factor":
        pairs = shared_factor_pairs(data.scenes, CLASS_FACTORS[benchmark], queries, n_pairs, rng)
    else:
        every_image = data.stack_images(progress=False)
        pairs = nearest_other_class_pairs(embedder(every_image).numpy(), data.targets, queries, n_pairs, rng)
    needed = sorted({i for pair in pairs for i in pair})
    if kind == "nearest-other-class":  # already decoded
        images = {i: every_image[i] for i in needed}
    else:
        images = dict(zip(needed, data.stack_images(needed, progress=False)))
    rise = RISE(sim, n_masks=DEFAULT_QUERY_MASKS, batch_size=BATCH_SIZE, seed=0, fuse=True, channels_last=True)
    rec: dict = collections.defaultdict(list)
    for qi, ri in pairs:
        deltas = counterfactual_deltas(embedder, pre, data.scenes[qi], images[ri], 3, rng)
        rec["deltas"].append(torch.tensor([deltas[f] for f in FACTORS]))
        rec["sal_q"].append(rise.explain(images[qi], images[ri]).query_map.half())
        rec["object"].append(torch.from_numpy(render(data.scenes[qi], size=rec["sal_q"][-1].shape[-1]).alpha).half())
        rec["labels"].append(torch.as_tensor(data.image_attributes[qi]))
        rec["shared"].append(torch.tensor([getattr(data.scenes[qi], f) == getattr(data.scenes[ri], f)
                                           if f in CLASS_FACTORS[benchmark] else False for f in FACTORS]))
        for name, model in models.items():
            with torch.inference_mode():
                z, maps = model(images[qi][None])
            rec[name + "_z"].append(z[0])
            rec[name + "_maps"].append(maps[0].half())
    saved = {key: torch.stack(values) for key, values in rec.items()}
    saved.update(pairs=pairs, kind=kind, attributes=list(data.attributes), benchmark=benchmark,
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


def pair_scores(t: dict, w: float, gamma: float, temperature: float = 1.0, prior: np.ndarray | None = None):
    """SPEC §4's score of every attribute over the stored pairs (B, A); ``temperature`` divides z in the confidence."""
    conf = 1 / (1 + np.exp(-t["z"] / temperature))
    return spec_score(conf, t["match"], (t["prior"] if prior is None else prior)[None], w, gamma)


def auc(positive: np.ndarray, score: np.ndarray) -> float:
    """Probability that a positive outscores a negative (ties count half)."""
    pos, neg = score[positive], score[~positive]
    return float((pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean())


def match_signal(t: dict, first: int, second: int) -> np.ndarray:
    """Per pair: best candidate match in factor ``first`` minus the best in ``second``."""
    def best(f: int) -> np.ndarray:
        return np.where(t["cand"] & (t["factor"][None] == f), t["match"], -1.0).max(1)
    return best(first) - best(second)


def signal_auc(signal: np.ndarray, truth: np.ndarray, first: int, second: int) -> float:
    """AUC of ``signal`` for "the truth is ``first``" among pairs whose truth is ``first`` or ``second``."""
    keep = np.isin(truth, [first, second])
    return auc(truth[keep] == first, signal[keep])


def threshold_top1(val: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                   first: int, second: int) -> tuple[float, float]:
    """Top-1 of "``first`` when the signal exceeds a threshold, else ``second``" on (signal, truth) of
    validation and test pairs, the threshold (a percentile of the validation signal) chosen on validation."""
    def top1(signal: np.ndarray, truth: np.ndarray, c: float) -> float:
        return float(np.mean(np.where(signal > c, first, second) == truth))
    c = max(np.quantile(val[0], np.linspace(0.01, 0.99, 99)), key=lambda c: top1(*val, c))
    return top1(*val, c), top1(*test, c)


def conditional_prior(t: dict, smoothing: float = 1.0) -> np.ndarray:
    """P(a's factor is the best | a present), from the pairs' labels (the bundled prior is the joint frequency)."""
    return ((t["labels"] * t["util"]).sum(0) + smoothing) / (t["labels"].sum(0) + 2 * smoothing)


def pair_prior(t: dict, smoothing: float = 1.0) -> np.ndarray:
    """How often a is present and in the best factor, over the pairs (estimate-prior's credit frequency)."""
    counts = (t["labels"] * t["util"]).sum(0)
    prior = smoothed_prior(dict(enumerate(counts.tolist())), len(t["util"]), smoothing)
    return np.array([prior[i] for i in range(len(counts))])


def margin(a: np.ndarray, b: np.ndarray) -> str:
    """Per-pair hits ``a`` minus ``b`` with its standard error, as eval-explanations prints it."""
    d = paired_difference([{"a": x, "b": y} for x, y in zip(a, b)], "a", "b")
    return f"{100 * d['difference']:+.1f} ± {100 * d['standard_error']:.1f} points"


def object_share(rec: dict) -> np.ndarray:
    """Per pair: the saliency map's mass on q's object relative to the object's area (the map's own
    signal for "the shape, not the surround, explains the match")."""
    saliency = rec["sal_q"].float()
    saliency = saliency - saliency.amin((1, 2), keepdim=True)
    obj = rec["object"].float()
    return ((saliency * obj).sum((1, 2)) / saliency.sum((1, 2)).clamp_min(1e-9) / obj.mean((1, 2))).numpy()


def report(val_path: str, test_path: str) -> None:
    val, test = (torch.load(p, weights_only=False) for p in (val_path, test_path))
    benchmark = val["benchmark"]
    print(f"{benchmark}, {val.get('kind', 'same-class')} pairs ({len(val['pairs'])} validation, "
          f"{len(test['pairs'])} test)")
    truth_val, truth_test = (rec["deltas"].argmin(1).numpy() for rec in (val, test))
    if test.get("kind", "same-class") != "same-class":
        shared = test["shared"].numpy()
        print(f"  the true factor is one the pair shares for {shared[np.arange(len(shared)), truth_test].mean():.3f} "
              f"of test pairs; pairs sharing shape: {shared[:, FACTORS.index('shape')].mean():.3f}")
    first, second = (FACTORS.index(f) for f in CLASS_FACTORS[benchmark])
    by_class = collections.defaultdict(list)
    names = np.array(val["attributes"])
    for k, label in enumerate(val["labels"].numpy().astype(bool)):
        key = tuple(a for a in names[label] if ATTRIBUTE_FACTORS[a] in CLASS_FACTORS[benchmark]
                    and a not in ("round", "pointy", "warm", "cool"))
        by_class[key].append(truth_val[k])
    ceiling = sum(np.bincount(v).max() for v in by_class.values()) / len(truth_val)
    print(f"{benchmark}: class-majority factor is the true one for {ceiling:.3f} of validation pairs")
    shuffled = val["sal_q"].float()[torch.randperm(len(truth_val), generator=torch.Generator().manual_seed(0))]

    def signal_line(label: str, val_signal: np.ndarray, test_signal: np.ndarray) -> str:
        top1 = threshold_top1((val_signal, truth_val), (test_signal, truth_test), first, second)
        return (f"  {label}: AUC {signal_auc(val_signal, truth_val, first, second):.3f} validation, "
                f"{signal_auc(test_signal, truth_test, first, second):.3f} test; thresholded top-1 "
                f"{top1[0]:.3f} validation, {top1[1]:.3f} test")

    if "object" in val:
        print(signal_line("the RISE map's share on the object", object_share(val), object_share(test)))
    tv = {m: terms(val, m) for m in MODELS}
    tt = {m: terms(test, m) for m in MODELS}
    for name in ("sane", "classifier"):
        own = match_signal(tv[name], first, second)
        print(signal_line(f"{name} match signal", own, match_signal(tt[name], first, second)))
        other = signal_auc(match_signal(terms(val, name, shuffled), first, second), truth_val, first, second)
        print(f"    with another pair's saliency map: AUC {other:.3f} validation")
    bundled = {m: hits(tt[m], pair_scores(tt[m], tt[m]["w"], tt[m]["gamma"])) for m in MODELS}
    for m in MODELS:
        print(f"  bundled ranker, test top-1 {m}: {bundled[m].mean():.3f}")
    for m in ("classifier", "fashionsearchnet"):
        print(f"  SANE - {m}: {margin(bundled['sane'], bundled[m])}")
    # The ranker as tune-ranker would set it on validation pairs of this kind: prior from them, then (w, gamma).
    retuned = {}
    for m in MODELS:
        prior = pair_prior(tv[m])
        w, g = max(((w, g) for w in W_GRID for g in GAMMA_GRID),
                   key=lambda p: hits(tv[m], pair_scores(tv[m], *p, prior=prior)).mean())
        retuned[m] = hits(tt[m], pair_scores(tt[m], w, g, prior=prior))
        print(f"  prior and (w={w:g}, gamma={g:g}) from these validation pairs, test top-1 {m}: {retuned[m].mean():.3f}")
    for m in ("classifier", "fashionsearchnet"):
        print(f"  SANE - {m}: {margin(retuned['sane'], retuned[m])}")
    variants = {
        "confidence temperature": lambda t, w, g, x: pair_scores(t, w, g, temperature=x),
        "conditional prior": lambda t, w, g, x: pair_scores(t, w, g, prior=x),
    }
    for label, score in variants.items():
        for m in ("sane", "classifier"):
            extra = (1, 3, 10, 30) if label == "confidence temperature" else (conditional_prior(tv[m]),)
            grid = [(w, g, x) for w in W_GRID for g in GAMMA_GRID for x in extra]
            w, g, x = max(grid, key=lambda p: hits(tv[m], score(tv[m], *p)).mean())
            shown = f", T={x}" if label == "confidence temperature" else ""
            print(f"  {label}, {m} (w={w:g}, gamma={g:g}{shown}): validation "
                  f"{hits(tv[m], score(tv[m], w, g, x)).mean():.3f}, test {hits(tt[m], score(tt[m], w, g, x)).mean():.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect")
    c.add_argument("--benchmark", default="shapes", choices=list(CLASS_FACTORS))
    c.add_argument("--split", default="val", choices=["val", "test"])
    c.add_argument("--pairs", type=int, default=400)
    c.add_argument("--out", required=True)
    c.add_argument("--sane", default=None, help="SANE checkpoint in place of the bundled one")
    c.add_argument("--kind", default="same-class", choices=["same-class", "nearest-other-class", "shared-factor"],
                   help="reference: another image of q's class, q's nearest neighbour of another class, or a "
                        "random image sharing one class factor with q (which one drawn per pair)")
    cs = sub.add_parser("cache-shared", help="a SANE saliency cache whose references share one class factor")
    cs.add_argument("--benchmark", default="shapes_bg", choices=list(CLASS_FACTORS))
    cs.add_argument("--out", required=True)
    cs.add_argument("--limit", type=int, default=1020, help="images cached (the bundled SANE's: 1020)")
    cs.add_argument("--n-masks", type=int, default=250)
    r = sub.add_parser("report")
    r.add_argument("--val", required=True)
    r.add_argument("--test", required=True)
    args = parser.parse_args()
    if args.command == "cache-shared":
        cache_shared_factor(args.benchmark, args.out, args.limit, args.n_masks)
    elif args.command == "collect":
        collect(args.benchmark, args.split, args.pairs, args.out, args.kind, args.sane)
    else:
        report(args.val, args.test)


if __name__ == "__main__":
    main()
