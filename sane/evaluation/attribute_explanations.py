"""`sane eval-explanations`: attribute insertion/deletion (SPEC §5) checked against the exact counterfactual (§6).

For a same-class pair (q, r) of the test split each method picks one attribute of q:

- **Random**: a uniformly drawn attribute that q has (deletion) / lacks (insertion), by its labels.
- **Attribute Classifier** / **SANE**: the top-1 of :class:`AttributeRanker` over that model (uniform
  prior unless ``prior`` is given), given q's fixed-reference RISE map. Deletion ranks the attributes predicted present (the
  ranker's candidates); insertion — which SPEC §5 leaves open — ranks, by the same score
  ``w·conf + (1−w)·match``, the attributes the model does *not* predict present.

Insertion candidates of every method are limited to attributes some database image has (a test
split of a few classes lacks whole shapes and colours, which no retrieval could insert).

Retrieval metric (SPEC §5): an attribute cannot be edited in pixels, so q is swapped for real images.
Deleting a: the K nearest database images to q in attribute-prediction space (sigmoid scores averaged
over the attribute models, attribute a's own column left out so all *other* attributes are kept as
equal as possible) among those lacking a (by their labels); Δ = mean_k s(x_k, r) − s(q, r), lower =
better. Inserting a: the same among images having a; higher = better. The database is the evaluated
split without q and r. Reported x100.

Ground truth (SPEC §6): q is re-rendered from its scene with one factor changed (``draws`` random new
values averaged), Δ_cf(factor) = s(q_cf, r) − s(q, r). The counterfactually best explanation is the
factor with the most negative Δ_cf; a method scores a top-1 hit when its deletion attribute belongs
to that factor (attributes of one factor, e.g. ``red`` and ``warm``, tie). The Spearman correlation
between the retrieval deletion Δ and Δ_cf over all (pair, present attribute) items (and its mean
within a pair, which ignores how pairs differ from each other) says how well the retrieval metric
agrees with the truth; ``retrieval_top1`` is how often the attribute with the most negative retrieval
deletion Δ is in the counterfactually best factor (the metric used as an explanation method itself).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn
from tqdm.auto import tqdm

from sane.data import AttributeDataset
from sane.data.synthetic import FACTORS, counterfactual, render
from sane.explain.ranker import ATTRIBUTE_FACTORS, AttributeRanker
from sane.images import Preprocess
from sane.models.attributes import predict_attributes
from sane.models.embedder import Embedder
from sane.saliency import RISE

METHODS = ("Random", "Attribute Classifier", "SANE")
DEFAULT_K = 5


def nearest_in_prediction_space(
    pred_q: np.ndarray, preds: np.ndarray, candidates: np.ndarray, k: int = DEFAULT_K, ignore: int | None = None
) -> np.ndarray:
    """Indices of the (at most) ``k`` candidate rows of ``preds`` (N, A) nearest to ``pred_q`` (A,).

    Euclidean distance over the attribute columns, column ``ignore`` left out; ties go to the lower
    index. ``candidates`` is an (N,) bool mask. Empty when there is no candidate.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    cols = np.ones(preds.shape[1], dtype=bool)
    if ignore is not None:
        cols[ignore] = False
    rows = np.flatnonzero(candidates)
    dist = np.linalg.norm(preds[rows][:, cols] - pred_q[cols], axis=1)
    return rows[np.argsort(dist, kind="stable")[:k]]


def retrieval_delta(
    sim_to_r: np.ndarray,
    s_qr: float,
    pred_q: np.ndarray,
    preds: np.ndarray,
    candidates: np.ndarray,
    k: int = DEFAULT_K,
    ignore: int | None = None,
) -> tuple[float, np.ndarray]:
    """(Δ = mean_k s(x_k, r) − s(q, r), the k retrieved indices); Δ is NaN when nothing qualifies.

    ``sim_to_r`` (N,) holds s(x, r) of every database image; ``candidates`` marks those lacking
    (deletion) or having (insertion) the attribute, see :func:`nearest_in_prediction_space`.
    """
    idx = nearest_in_prediction_space(pred_q, preds, candidates, k, ignore)
    if len(idx) == 0:
        return float("nan"), idx
    return float(np.mean(sim_to_r[idx]) - s_qr), idx


def averaged_predictions(
    models: Sequence[nn.Module], images: Sequence[torch.Tensor], attributes: Sequence[str], batch_size: int = 128
) -> np.ndarray:
    """(N, A) presence probabilities (sigmoid scores) averaged over ``models``, columns in ``attributes`` order.

    ``images[m]`` is the (N, 3, H, W) batch preprocessed for ``models[m]``; an attribute a model lacks
    is averaged over the models that have it (0.5 when none does).
    """
    total = np.zeros((len(images[0]), len(attributes)))
    count = np.zeros(len(attributes))
    for model, batch in zip(models, images):
        z, _ = predict_attributes(model, batch, batch_size)
        probs = z.sigmoid().numpy()
        names = list(model.attributes)
        for j, a in enumerate(attributes):
            if a in names:
                total[:, j] += probs[:, names.index(a)]
                count[j] += 1
    out = np.full_like(total, 0.5)
    has = count > 0
    out[:, has] = total[:, has] / count[has]
    return out


def counterfactual_deltas(
    embedder: Embedder, preprocess: Preprocess, scene, reference: torch.Tensor, draws: int, rng: np.random.Generator
) -> dict[str, float]:
    """Δ_cf per factor: mean over ``draws`` of s(render(q with the factor changed), r) − s(render(q), r)."""
    scenes = [scene] + [counterfactual(scene, f, rng=rng) for f in FACTORS for _ in range(draws)]
    batch = torch.stack([preprocess.to_tensor(render(s, preprocess.size).image) for s in scenes] + [reference])
    e = embedder(batch)
    sims = (e[:-1] @ e[-1]).numpy()
    drops = sims[1:].reshape(len(FACTORS), draws).mean(1) - sims[0]
    return {f: float(d) for f, d in zip(FACTORS, drops)}


def best_factor(deltas: dict[str, float]) -> str:
    """The factor whose change lowers the similarity most (most negative Δ_cf)."""
    return min(deltas, key=deltas.get)


def _pairs_by_index(targets: Sequence[int], n_pairs: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """``n_pairs`` random (query, reference) index pairs of different images of one class."""
    by_class: dict[int, list[int]] = {}
    for i, t in enumerate(targets):
        by_class.setdefault(int(t), []).append(i)
    queries = [i for i, t in enumerate(targets) if len(by_class[int(t)]) > 1]
    if not queries:
        raise ValueError("no class has two images: cannot form same-class pairs")
    pairs = []
    for _ in range(n_pairs):
        qi = queries[int(rng.integers(len(queries)))]
        others = [j for j in by_class[int(targets[qi])] if j != qi]
        pairs.append((qi, others[int(rng.integers(len(others)))]))
    return pairs


def _ranker_picks(
    ranker: AttributeRanker, query: torch.Tensor, saliency: torch.Tensor, insertable: set[str] | None = None
) -> tuple[str, str | None]:
    """(deletion attribute: the ranker's top-1, insertion attribute: best score among those not predicted present).

    ``insertable`` (None: all) limits the insertion candidates, e.g. to attributes some database image has.
    """
    deletion = ranker.rank(query, saliency, top_k=1)[0].attribute
    t = ranker.terms(query, saliency)
    allowed = torch.tensor([insertable is None or a in insertable for a in ranker.attributes])
    absent = torch.nonzero((t["z"] < ranker.thresholds) & allowed).flatten()
    if len(absent) == 0:
        return deletion, None
    return deletion, ranker.attributes[int(absent[t["score"][absent].argmax()])]


def evaluate_explanations(
    similarity_model: nn.Module,
    similarity_preprocess: Preprocess,
    attribute_models: dict[str, tuple[nn.Module, Preprocess]],
    data_dir: str | os.PathLike,
    split: str = "test",
    n_pairs: int = 40,
    n_masks: int = 300,
    k: int = DEFAULT_K,
    draws: int = 3,
    seed: int = 0,
    batch_size: int = 128,
    progress: bool = True,
    prior: dict[str, float] | None = None,
) -> dict:
    """Insertion/deletion (x100) and counterfactual top-1 per method, plus the metric's agreement with Δ_cf.

    ``attribute_models`` maps ``"sane"`` and ``"classifier"`` to (model, preprocess); their averaged
    predictions define the retrieval space and each drives its method's ranker. The data set must
    carry scenes (``scenes.jsonl``, the synthetic data) for the counterfactual.
    """
    missing = {"sane", "classifier"} - set(attribute_models)
    if missing:
        raise ValueError(f"attribute_models lacks {', '.join(sorted(missing))}")
    rng = np.random.default_rng(seed)
    sim_data = AttributeDataset(data_dir, split=split, preprocess=similarity_preprocess)
    if sim_data.scenes is None or any(s is None for s in sim_data.scenes):
        raise ValueError(f"{data_dir} has no scene for every {split} image: the counterfactual needs the synthetic data")
    attributes = list(sim_data.attributes)
    labels = sim_data.image_attributes.astype(bool)
    n = len(sim_data)
    images_sim = sim_data.stack_images(progress=progress)
    images_attr: dict[str, torch.Tensor] = {}
    for name, (_, pre) in attribute_models.items():
        if pre == similarity_preprocess:
            images_attr[name] = images_sim
        else:
            images_attr[name] = AttributeDataset(data_dir, split=split, preprocess=pre).stack_images()
    names = list(attribute_models)
    preds = averaged_predictions([attribute_models[m][0] for m in names], [images_attr[m] for m in names], attributes,
                                 batch_size)
    embedder = Embedder(similarity_model, batch_size)
    emb = embedder(images_sim).numpy()
    rise = RISE(similarity_model, n_masks=n_masks, batch_size=batch_size, seed=seed)
    rankers = {"Attribute Classifier": ("classifier", AttributeRanker(attribute_models["classifier"][0], prior=prior)),
               "SANE": ("sane", AttributeRanker(attribute_models["sane"][0], prior=prior))}
    col = {a: j for j, a in enumerate(attributes)}

    pairs = _pairs_by_index(sim_data.targets, n_pairs, rng)
    ins: dict[str, list[float]] = {m: [] for m in METHODS}
    dele: dict[str, list[float]] = {m: [] for m in METHODS}
    hits: dict[str, list[bool]] = {m: [] for m in METHODS}
    items_del, items_cf, retrieval_hits, within_rho = [], [], [], []
    best_counts = dict.fromkeys(FACTORS, 0)
    for qi, ri in tqdm(pairs, desc="explaining pairs", disable=not progress):
        db = np.ones(n, dtype=bool)
        db[[qi, ri]] = False
        sim_to_r = emb @ emb[ri]
        s_qr = float(emb[qi] @ emb[ri])

        def delta(a: str, insert: bool, qi=qi, db=db, sim_to_r=sim_to_r, s_qr=s_qr) -> float:
            j = col[a]
            cand = db & (labels[:, j] if insert else ~labels[:, j])
            return retrieval_delta(sim_to_r, s_qr, preds[qi], preds, cand, k, ignore=j)[0]

        present = [a for a in attributes if labels[qi, col[a]]]
        insertable = {a for a in attributes if (labels[db, col[a]]).any()}
        absent = [a for a in attributes if not labels[qi, col[a]] and a in insertable]
        picks: dict[str, tuple[str, str | None]] = {
            "Random": (present[int(rng.integers(len(present)))] if present else None,
                       absent[int(rng.integers(len(absent)))] if absent else None)
        }
        saliency = rise.explain(images_sim[qi], images_sim[ri]).query_map
        for method, (model_name, ranker) in rankers.items():
            picks[method] = _ranker_picks(ranker, images_attr[model_name][qi], saliency, insertable)

        deltas_cf = counterfactual_deltas(embedder, similarity_preprocess, sim_data.scenes[qi], images_sim[ri], draws,
                                          rng)
        best = best_factor(deltas_cf)
        best_counts[best] += 1
        for method, (del_a, ins_a) in picks.items():
            if del_a is not None:
                dele[method].append(delta(del_a, insert=False))
                hits[method].append(ATTRIBUTE_FACTORS.get(del_a) == best)
            if ins_a is not None:
                ins[method].append(delta(ins_a, insert=True))
        # Every truly present attribute: retrieval deletion Δ against its factor's exact Δ_cf.
        pair_items = []
        for a in present:
            d = delta(a, insert=False)
            if a in ATTRIBUTE_FACTORS and np.isfinite(d):
                items_del.append(d)
                items_cf.append(deltas_cf[ATTRIBUTE_FACTORS[a]])
                pair_items.append((d, a))
        if pair_items:
            retrieval_hits.append(ATTRIBUTE_FACTORS[min(pair_items)[1]] == best)
        cf_here = [deltas_cf[ATTRIBUTE_FACTORS[a]] for _, a in pair_items]
        if len(pair_items) > 2 and len(set(cf_here)) > 1 and len({d for d, _ in pair_items}) > 1:
            within_rho.append(float(spearmanr([d for d, _ in pair_items], cf_here).statistic))

    def mean(values: list) -> float:
        finite = [v for v in values if np.isfinite(v)]
        return float(np.mean(finite)) if finite else float("nan")

    rho = float(spearmanr(items_del, items_cf).statistic) if len(items_del) > 2 else float("nan")
    return {
        "split": split,
        "n_pairs": len(pairs),
        "n_masks": n_masks,
        "k": k,
        "draws": draws,
        "n_database": n - 2,
        "attribute_models": names,
        "methods": {
            m: {
                "insertion": 100 * mean(ins[m]),
                "deletion": 100 * mean(dele[m]),
                "counterfactual_top1": mean(hits[m]),
                "n_insertion": int(np.isfinite(ins[m]).sum()),
                "n_deletion": int(np.isfinite(dele[m]).sum()),
            }
            for m in METHODS
        },
        "best_factor_counts": best_counts,
        "agreement": {
            "spearman": rho,
            "n_items": len(items_del),
            "spearman_within_pair": mean(within_rho),
            "retrieval_top1": mean(retrieval_hits),
        },
    }


def format_explanation_table(report: dict) -> str:
    """method | insertion ↑ | deletion ↓ | counterfactual top-1 ↑, then how well §5 agrees with the truth."""
    lines = [f"{report['n_pairs']} same-class {report['split']} pairs, RISE {report['n_masks']} masks, "
             f"K={report['k']} of {report['n_database']} database images, {report['draws']} counterfactual draws",
             f"{'method':<22}{'insertion ↑':>13}{'deletion ↓':>13}{'counterfactual top-1 ↑':>25}"]
    for method, row in report["methods"].items():
        lines.append(f"{method:<22}{row['insertion']:>13.2f}{row['deletion']:>13.2f}{row['counterfactual_top1']:>25.3f}")
    agree = report["agreement"]
    best = ", ".join(f"{f} {c}" for f, c in sorted(report["best_factor_counts"].items(), key=lambda x: -x[1]) if c)
    lines.append(f"agreement of retrieval deletion Δ with exact counterfactual Δ_cf: Spearman {agree['spearman']:.3f} "
                 f"over {agree['n_items']} (pair, attribute) items, {agree['spearman_within_pair']:.3f} within a pair "
                 f"(mean); the retrieval metric's own best attribute is in the counterfactually best factor for "
                 f"{agree['retrieval_top1']:.3f} of pairs")
    lines.append(f"counterfactually best factor: {best}")
    return "\n".join(lines)
