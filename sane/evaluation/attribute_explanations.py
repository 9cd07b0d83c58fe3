"""`sane eval-explanations`: attribute insertion/deletion (SPEC §5) checked against the exact counterfactual (§6).

For a same-class pair (q, r) of the test split each method picks one attribute of q:

- **Random**: a uniformly drawn attribute that q has (deletion) / lacks (insertion), by its labels.
- **Attribute Classifier** / **FashionSearchNet** (when given) / **SANE**: :class:`AttributeRanker`
  over that model (its checkpoint's tuned prior, w and γ unless ``prior`` is given; ``"uniform"``
  for none). Deletion: its top-1 for q given q's fixed-reference RISE map (r as reference).
  Insertion, which SPEC §5 leaves open: the pair's explanation read on the reference — r's
  attributes ranked given r's RISE map (q as reference), the best one that the model predicts
  present in r and absent from q (no pick when r has nothing q lacks; ``n_insertion`` counts picks).
  Ranking q's own absent attributes instead favours the prior's shapes and colours, whose insertion
  turns q into another class: every method then scored below Random.

Insertion candidates of every method are limited to attributes some database image has.

Retrieval metric (SPEC §5): an attribute cannot be edited in pixels, so q is swapped for real images.
Deleting a: the K nearest database images to q in attribute-prediction space (sigmoid scores averaged
over the attribute models, attribute a's own column left out so all *other* attributes are kept as
equal as possible) among those lacking a (by their labels); Δ = mean_k s(x_k, r) − s(q, r), lower =
better. Inserting a: the same among images having a; higher = better. The database (``database``)
is the evaluated split or the whole data set (every split; pairs still come from the evaluated
split), without q and r; ``"auto"`` takes the whole data set where it has scenes (the synthetic
data: its test split of a few classes seldom holds an image that differs from q in the one
attribute, so retrieval changed whole classes instead — the metric's own top-1 agreed with the
counterfactual in 0.58 of pairs on the shape x background benchmark, 0.85 with the whole set) and
the split on real data (whole splits of Polyvore do not fit in memory). On Polyvore Outfits only
images of q's item type (its semantic category, the class) qualify, as SPEC §5 asks. Reported x100.

Ground truth (SPEC §6, :mod:`sane.metrics.counterfactual`): q is re-rendered from its scene with one
factor changed (every other value of a categorical factor, ``draws`` random new positions; averaged),
Δ_cf(factor) = s(q_cf, r) − s(q, r). The counterfactually best explanation is the
factor with the most negative Δ_cf; a method scores a top-1 hit when its deletion attribute belongs
to that factor (attributes of one factor, e.g. ``red`` and ``warm``, tie). The Spearman correlation
between the retrieval deletion Δ and Δ_cf over all (pair, present attribute) items (and its mean
within a pair, which ignores how pairs differ from each other) says how well the retrieval metric
agrees with the truth; ``retrieval_top1`` is how often the attribute with the most negative retrieval
deletion Δ is in the counterfactually best factor (the metric used as an explanation method itself).

Real data (AwA2, Polyvore Outfits) has no scenes: the counterfactual part is skipped and the report
holds the retrieval insertion/deletion only (``"counterfactual": False``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn
from tqdm.auto import tqdm

from sane.data import LabelledImageDataset, open_dataset
from sane.data.synthetic import ATTRIBUTE_FACTORS, FACTORS
from sane.explain.map_match import DEFAULT_QUERY_MASKS
from sane.explain.ranker import AttributeRanker
from sane.images import Preprocess
from sane.metrics.average_precision import mean_average_precision
from sane.metrics.counterfactual import best_factor, counterfactual_deltas
from sane.models.attribute_predictors import RandomAttributes, predict_attributes
from sane.models.embedder import Embedder
from sane.models.spec import COSINE, EmbeddingSpec
from sane.saliency import RISE

METHODS = ("Random", "Attribute Classifier", "SANE")
# Ranker-driven methods in the paper's table order: attribute_models key -> row name.
MODEL_METHODS = {"classifier": "Attribute Classifier", "fashionsearchnet": "FashionSearchNet", "sane": "SANE"}
DEFAULT_K = 5
# Retrieval database of the insertion/deletion metric: the evaluated split, the whole data set, or
# "auto": the whole data set where it is the synthetic one (small, and its test split of a few
# classes rarely holds an image that differs from q in one attribute only), the split otherwise.
DATABASES = ("auto", "split", "all")


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
    scores = [predict_attributes(model, batch, batch_size)[0] for model, batch in zip(models, images)]
    return average_scores(models, scores, attributes)


def average_scores(models: Sequence[nn.Module], scores: Sequence[torch.Tensor], attributes: Sequence[str]) -> np.ndarray:
    """:func:`averaged_predictions` from the models' (N, A_m) score logits already computed."""
    total = np.zeros((len(scores[0]), len(attributes)))
    count = np.zeros(len(attributes))
    for model, z in zip(models, scores):
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


@dataclass
class RetrievalSpace:
    """One split as the retrieval database of SPEC §5: images, embeddings and averaged attribute predictions.

    ``images`` are prepared for the similarity model, ``model_images[name]`` for each attribute model;
    ``labels`` (N, A) bool are the data set's attributes in ``attributes`` order, ``preds`` (N, A) the
    models' averaged presence probabilities (:func:`averaged_predictions`), ``embeddings`` (N, D)
    L2-normalised. ``same_type``: retrieval keeps to the query's class (Polyvore's item type).
    ``scores[name]`` are each model's (N, A_m) score logits the averages came from.
    """

    dataset: LabelledImageDataset
    attributes: list[str]
    labels: np.ndarray
    images: torch.Tensor
    model_images: dict[str, torch.Tensor]
    preds: np.ndarray
    embeddings: np.ndarray
    same_type: bool
    scores: dict[str, torch.Tensor] = field(default_factory=dict)
    embedding: EmbeddingSpec = COSINE  # how the similarity model's embeddings compare

    def candidates(self, qi: int, ri: int, column: int, insert: bool) -> np.ndarray:
        """(N,) bool: database images (not q, not r; of q's type where that applies) lacking (deletion)
        or having (insertion) attribute ``column``."""
        cand = self.labels[:, column].copy() if insert else ~self.labels[:, column]
        cand[[qi, ri]] = False
        if self.same_type:
            cand &= np.asarray(self.dataset.targets) == self.dataset.targets[qi]
        return cand

    def deltas(self, qi: int, ri: int, columns: Sequence[int], insert: bool, k: int = DEFAULT_K) -> list[float]:
        """Retrieval Δ (:func:`retrieval_delta`) of deleting / inserting each attribute column for pair (q, r)."""
        sim_to_r = self.embedding.against(self.embeddings, self.embeddings[ri])
        s_qr = float(self.embedding.against(self.embeddings[qi], self.embeddings[ri]))
        return [retrieval_delta(sim_to_r, s_qr, self.preds[qi], self.preds, self.candidates(qi, ri, j, insert), k,
                                ignore=j)[0] for j in columns]


def retrieval_space(
    similarity_model: nn.Module,
    similarity_preprocess: Preprocess,
    attribute_models: dict[str, tuple[nn.Module, Preprocess]],
    data_dir: str | os.PathLike,
    split: str = "test",
    batch_size: int = 128,
    progress: bool = True,
) -> RetrievalSpace:
    """Load ``split`` of ``data_dir`` (any layout) and compute what the retrieval metric needs.

    ``attribute_models`` maps names to (model, preprocess); a model whose preprocessing differs from
    the similarity model's gets its own image stack. Refuses models that predict none of the data
    set's attributes (e.g. the bundled synthetic models on real data).
    """
    dataset = open_dataset(data_dir, split=split, preprocess=similarity_preprocess)
    attributes = list(dataset.attributes)
    known = set().union(*(m.attributes for m, _ in attribute_models.values()))
    if not known & set(attributes):
        raise ValueError(f"the attribute models predict none of the attributes of {data_dir}: pass models trained "
                         "on this data set (sane train-attributes)")
    images = dataset.stack_images(progress=progress)
    model_images: dict[str, torch.Tensor] = {}
    for name, (_, pre) in attribute_models.items():
        if pre == similarity_preprocess:
            model_images[name] = images
        else:
            model_images[name] = open_dataset(data_dir, split=split, preprocess=pre).stack_images()
    scores = {name: predict_attributes(model, model_images[name], batch_size)[0]
              for name, (model, _) in attribute_models.items()}
    preds = average_scores([model for model, _ in attribute_models.values()], list(scores.values()), attributes)
    embedder = Embedder(similarity_model, batch_size)
    embeddings = embedder(images).numpy()
    return RetrievalSpace(dataset, attributes, dataset.image_attributes.astype(bool), images, model_images, preds,
                          embeddings, dataset.format == "polyvore", scores, embedder.embedding)


def split_map(model: nn.Module, z: torch.Tensor, labels: np.ndarray, attributes: Sequence[str]) -> float:
    """mAP of ``model``'s (N, A_m) scores ``z`` against ``labels`` (N, len(attributes)), over the attributes it
    predicts."""
    cols = [attributes.index(a) for a in model.attributes if a in attributes]
    own = [list(model.attributes).index(attributes[c]) for c in cols]
    return mean_average_precision(z[:, own].numpy(), labels[:, cols])


def same_class_index_pairs(
    targets: Sequence[int], n_pairs: int, rng: np.random.Generator, queries_from: np.ndarray | None = None
) -> list[tuple[int, int]]:
    """``n_pairs`` random (query, reference) index pairs of different images of one class; queries are
    drawn from ``queries_from`` (bool (N,), e.g. held-out images) when given, references from all."""
    by_class: dict[int, list[int]] = {}
    for i, t in enumerate(targets):
        by_class.setdefault(int(t), []).append(i)
    queries = [i for i, t in enumerate(targets)
               if len(by_class[int(t)]) > 1 and (queries_from is None or queries_from[i])]
    if not queries:
        raise ValueError("no class has two images: cannot form same-class pairs")
    pairs = []
    for _ in range(n_pairs):
        qi = queries[int(rng.integers(len(queries)))]
        others = [j for j in by_class[int(targets[qi])] if j != qi]
        pairs.append((qi, others[int(rng.integers(len(others)))]))
    return pairs


def _ranker_picks(
    ranker: AttributeRanker,
    query: torch.Tensor,
    reference: torch.Tensor,
    query_saliency: torch.Tensor,
    reference_saliency: torch.Tensor,
    insertable: set[str] | None = None,
) -> tuple[str, str | None]:
    """(deletion attribute, insertion attribute or None) that ``ranker`` picks for the pair.

    Deletion: the ranker's top-1 for q with q's saliency map. Insertion: the pair's explanation read
    on the reference: r's attributes ranked with r's saliency map (q as its reference), the best one
    the model predicts present in r and absent from q; None when r has nothing q lacks.
    ``insertable`` (None: all) limits the insertion candidates, e.g. to attributes some database image has.
    """
    deletion = ranker.rank(query, query_saliency, top_k=1)[0].attribute
    tq = ranker.terms(query, query_saliency)
    tr = ranker.terms(reference, reference_saliency)
    allowed = torch.tensor([insertable is None or a in insertable for a in ranker.attributes])
    lacking = torch.nonzero((tr["z"] >= ranker.thresholds) & (tq["z"] < ranker.thresholds) & allowed).flatten()
    if len(lacking) == 0:
        return deletion, None
    return deletion, ranker.attributes[int(lacking[tr["score"][lacking].argmax()])]


def evaluate_explanations(
    similarity_model: nn.Module,
    similarity_preprocess: Preprocess,
    attribute_models: dict[str, tuple[nn.Module, Preprocess]],
    data_dir: str | os.PathLike,
    split: str = "test",
    n_pairs: int = 40,
    n_masks: int = DEFAULT_QUERY_MASKS,
    k: int = DEFAULT_K,
    draws: int = 3,
    seed: int = 0,
    batch_size: int = 128,
    progress: bool = True,
    prior: dict[str, float] | str | None = None,
    database: str = "auto",
) -> dict:
    """Insertion/deletion (x100) per method and, on synthetic data, counterfactual top-1 and the
    metric's agreement with Δ_cf.

    ``attribute_models`` maps ``"sane"`` and ``"classifier"`` (and optionally ``"fashionsearchnet"``,
    which adds its row) to (model, preprocess); their averaged
    predictions define the retrieval space and each drives its method's ranker. The counterfactual
    part needs a scene for every image (``scenes.jsonl``, the synthetic data); without scenes (real
    data) it is skipped and ``report["counterfactual"]`` is False.
    """
    missing = {"sane", "classifier"} - set(attribute_models)
    if missing:
        raise ValueError(f"attribute_models lacks {', '.join(sorted(missing))}")
    if database not in DATABASES:
        raise ValueError(f"database must be one of {DATABASES}, got {database!r}")
    rng = np.random.default_rng(seed)
    split_data = open_dataset(data_dir, split=split).require_attributes()
    if database == "auto":
        database = "all" if split_data.scenes is not None else "split"
    space = retrieval_space(similarity_model, similarity_preprocess, attribute_models, data_dir,
                            "all" if database == "all" else split, batch_size, progress)
    queries_from = None  # pairs come from `split`; with the whole data set as database, mark its images
    if database == "all" and split != "all":
        in_split = {path for path, _ in split_data.samples}
        queries_from = np.array([path in in_split for path, _ in space.dataset.samples])
    dataset, attributes, labels = space.dataset, space.attributes, space.labels
    scenes = dataset.scenes
    with_counterfactual = scenes is not None and all(s is not None for s in scenes)
    if scenes is not None and not with_counterfactual:
        raise ValueError(f"{data_dir} has no scene for every {split} image: the counterfactual needs the synthetic data")
    # a vocabulary discovered over the synthetic images names no factor: insertion/deletion only
    with_counterfactual = with_counterfactual and all(a in ATTRIBUTE_FACTORS for a in split_data.attributes)
    n = len(dataset)
    embedder = Embedder(similarity_model, batch_size)
    rise = RISE(similarity_model, n_masks=n_masks, batch_size=batch_size, seed=seed, fuse=True, channels_last=True)
    rankers = {label: (key, AttributeRanker(attribute_models[key][0], prior=prior))
               for key, label in MODEL_METHODS.items() if key in attribute_models}
    methods = ("Random", *rankers)
    rows = slice(None) if queries_from is None else torch.from_numpy(np.flatnonzero(queries_from))
    mean_ap = {label: split_map(attribute_models[key][0], space.scores[key][rows], space.labels[rows], attributes)
               for label, (key, _) in rankers.items()}
    random_model = RandomAttributes(attributes, seed=seed)
    mean_ap["Random"] = split_map(random_model, predict_attributes(random_model, space.images[rows])[0],
                                  space.labels[rows], attributes)
    col = {a: j for j, a in enumerate(attributes)}

    pairs = same_class_index_pairs(dataset.targets, n_pairs, rng, queries_from)
    ins: dict[str, list[float]] = {m: [] for m in methods}
    dele: dict[str, list[float]] = {m: [] for m in methods}
    pair_hits: list[dict[str, bool]] = []  # per pair: each method that picked, whether its pick is the true factor
    items_del, items_cf, retrieval_hits, within_rho = [], [], [], []
    best_counts = dict.fromkeys(FACTORS, 0)
    for qi, ri in tqdm(pairs, desc="explaining pairs", disable=not progress):

        def delta(a: str, insert: bool, qi=qi, ri=ri) -> float:
            return space.deltas(qi, ri, [col[a]], insert, k)[0]

        present = [a for a in attributes if labels[qi, col[a]]]
        insertable = {a for a in attributes if space.candidates(qi, ri, col[a], insert=True).any()}
        absent = [a for a in attributes if not labels[qi, col[a]] and a in insertable]
        picks: dict[str, tuple[str, str | None]] = {
            "Random": (present[int(rng.integers(len(present)))] if present else None,
                       absent[int(rng.integers(len(absent)))] if absent else None)
        }
        saliency_q = rise.explain(space.images[qi], space.images[ri]).query_map
        saliency_r = rise.explain(space.images[ri], space.images[qi]).query_map
        for method, (model_name, ranker) in rankers.items():
            imgs = space.model_images[model_name]
            picks[method] = _ranker_picks(ranker, imgs[qi], imgs[ri], saliency_q, saliency_r, insertable)

        best = None
        if with_counterfactual:
            deltas_cf = counterfactual_deltas(embedder, similarity_preprocess, scenes[qi], space.images[ri], draws, rng)
            best = best_factor(deltas_cf)
            best_counts[best] += 1
        for method, (del_a, ins_a) in picks.items():
            if del_a is not None:
                dele[method].append(delta(del_a, insert=False))
            if ins_a is not None:
                ins[method].append(delta(ins_a, insert=True))
        if not with_counterfactual:
            continue
        pair_hits.append({m: ATTRIBUTE_FACTORS.get(d) == best for m, (d, _) in picks.items() if d is not None})
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

    report = {
        "split": split,
        "n_pairs": len(pairs),
        "n_masks": n_masks,
        "k": k,
        "database": database,
        "n_database": n - 2,
        "same_type_retrieval": space.same_type,
        "attribute_models": list(attribute_models),
        "counterfactual": with_counterfactual,
        "methods": {
            m: {
                "insertion": 100 * mean(ins[m]),
                "deletion": 100 * mean(dele[m]),
                "mAP": mean_ap[m],
                "n_insertion": int(np.isfinite(ins[m]).sum()),
                "n_deletion": int(np.isfinite(dele[m]).sum()),
            }
            for m in methods
        },
    }
    if with_counterfactual:
        rho = float(spearmanr(items_del, items_cf).statistic) if len(items_del) > 2 else float("nan")
        report["draws"] = draws
        for m in methods:
            report["methods"][m]["counterfactual_top1"] = mean([h[m] for h in pair_hits if m in h])
        report["best_factor_counts"] = best_counts
        report["paired_top1"] = {m: paired_difference(pair_hits, "SANE", m) for m in methods if m != "SANE"}
        report["agreement"] = {
            "spearman": rho,
            "n_items": len(items_del),
            "spearman_within_pair": mean(within_rho),
            "retrieval_top1": mean(retrieval_hits),
        }
    return report


def paired_difference(pair_hits: Sequence[dict[str, bool]], method: str, baseline: str) -> dict:
    """Counterfactual top-1 of ``method`` minus ``baseline`` over the pairs both picked for, with its
    standard error (of the mean of per-pair differences, each −1, 0 or 1): how far a margin on a
    few hundred pairs can be trusted. ``{"difference", "standard_error", "n"}`` (NaN when no pair)."""
    diffs = np.array([float(h[method]) - float(h[baseline]) for h in pair_hits if method in h and baseline in h])
    if len(diffs) == 0:
        return {"difference": float("nan"), "standard_error": float("nan"), "n": 0}
    se = float(diffs.std(ddof=1) / np.sqrt(len(diffs))) if len(diffs) > 1 else float("nan")
    return {"difference": float(diffs.mean()), "standard_error": se, "n": int(len(diffs))}


def format_explanation_table(report: dict) -> str:
    """The paper's table — method | insertion ↑ | deletion ↓ | mAP ↑ (| counterfactual top-1 ↑) — then how
    well §5 agrees with the truth."""
    database = f"K={report['k']} of {report['n_database']} database images"
    if report.get("database") == "all" and report["split"] != "all":
        database += " (every split)"
    if report.get("same_type_retrieval"):
        database += " (of the query's item type)"
    if not report.get("counterfactual", True):
        lines = [f"{report['n_pairs']} same-class {report['split']} pairs, RISE {report['n_masks']} masks, {database}",
                 "no scenes in this data set: the counterfactual check (SPEC §6) is skipped; "
                 "attribute insertion/deletion by retrieval (SPEC §5) only",
                 f"{'method':<22}{'insertion ↑':>13}{'deletion ↓':>13}{'mAP ↑':>9}"]
        for method, row in report["methods"].items():
            lines.append(f"{method:<22}{row['insertion']:>13.2f}{row['deletion']:>13.2f}{row['mAP']:>9.3f}")
        return "\n".join(lines)
    lines = [f"{report['n_pairs']} same-class {report['split']} pairs, RISE {report['n_masks']} masks, "
             f"{database}, counterfactual over every other value per factor ({report['draws']} random positions)",
             f"{'method':<22}{'insertion ↑':>13}{'deletion ↓':>13}{'mAP ↑':>9}{'counterfactual top-1 ↑':>25}"]
    for method, row in report["methods"].items():
        lines.append(f"{method:<22}{row['insertion']:>13.2f}{row['deletion']:>13.2f}{row['mAP']:>9.3f}"
                     f"{row['counterfactual_top1']:>25.3f}")
    agree = report["agreement"]
    best = ", ".join(f"{f} {c}" for f, c in sorted(report["best_factor_counts"].items(), key=lambda x: -x[1]) if c)
    lines.append(f"agreement of retrieval deletion Δ with exact counterfactual Δ_cf: Spearman {agree['spearman']:.3f} "
                 f"over {agree['n_items']} (pair, attribute) items, {agree['spearman_within_pair']:.3f} within a pair "
                 f"(mean); the retrieval metric's own best attribute is in the counterfactually best factor for "
                 f"{agree['retrieval_top1']:.3f} of pairs")
    lines.append(f"counterfactually best factor: {best}")
    paired = report.get("paired_top1", {})
    if paired:
        lines.append("SANE's counterfactual top-1 minus each method's, same pairs (± standard error): " + ", ".join(
            f"{m} {100 * d['difference']:+.1f} ± {100 * d['standard_error']:.1f} points" for m, d in paired.items()))
    return "\n".join(lines)
