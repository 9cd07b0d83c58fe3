"""`sane train-attributes`: the SANE attribute predictor and its baselines (SPEC §3).

Loss ``L = BCE(z, y) + lambda * L_hm`` (multi-label binary cross-entropy on the scores plus the
saliency supervision of the activation maps, :mod:`sane.explain.map_match`); the classifier and
FashionSearchNet baselines train with lambda = 0. Adam, validation mAP after every epoch on a held-out
share of the training-class images, the best-mAP checkpoint kept, per-epoch state for resuming.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from sane.data import open_dataset
from sane.explain.map_match import DEFAULT_TAU, heatmap_loss, saliency_target
from sane.images import Preprocess
from sane.metrics.average_precision import mean_average_precision
from sane.models.attribute_predictors import (
    build_attribute_model,
    load_attributes,
    predict_attributes,
    read_attribute_checkpoint,
    save_attributes,
)
from sane.train.saliency_cache import SaliencyCache
from sane.train.validation_split import DEFAULT_VAL_FRACTION, validation_split

TRAINABLE = ("sane", "classifier", "fashionsearchnet")
DEFAULT_LAMBDA = 5e-3


def positive_median_thresholds(scores: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """Per-attribute presence threshold: the median score of the images that have the attribute
    (the released code's calibration, SPEC §4); 0 (probability 0.5) where no image has it."""
    out = []
    for a in range(scores.shape[1]):
        positive = scores[labels[:, a] > 0, a]
        out.append(float(positive.median()) if len(positive) else 0.0)
    return out


def best_f1_thresholds(scores: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """Per-attribute presence threshold maximising F1 on held-out images: the midpoint between the
    chosen score and the next lower one. The released code's median of positives (SPEC §4) drops
    half of the true attributes by construction; this is the default. 0 where no image has it."""
    out = []
    for a in range(scores.shape[1]):
        s, y = scores[:, a].double(), labels[:, a] > 0
        if not y.any():
            out.append(0.0)
            continue
        order = torch.argsort(-s, stable=True)
        s, y = s[order], y[order].double()
        tp = torch.cumsum(y, 0)
        f1 = 2 * tp / (torch.arange(1, len(s) + 1, dtype=torch.float64) + y.sum())
        # Only cut between distinct scores: the threshold keeps every image scoring >= s[k].
        distinct = torch.ones_like(y, dtype=torch.bool)
        distinct[:-1] = s[:-1] != s[1:]
        k = int(torch.where(distinct, f1, torch.full_like(f1, -1.0)).argmax())
        below = float(s[k + 1]) if k + 1 < len(s) else float(s[k]) - 1.0
        out.append((float(s[k]) + below) / 2)
    return out


CALIBRATIONS = {"f1": best_f1_thresholds, "median": positive_median_thresholds}


def calibrate_attributes(
    path: str | os.PathLike,
    data_dir: str | os.PathLike,
    calibration: str = "f1",
    val_fraction: float = DEFAULT_VAL_FRACTION,
    seed: int = 0,
    out: str | os.PathLike | None = None,
    progress: bool = True,
) -> list[float]:
    """Recompute a checkpoint's presence thresholds on its validation images and save it (in place
    unless ``out``); weights and metadata are kept."""
    if calibration not in CALIBRATIONS:
        raise ValueError(f"calibration must be one of {sorted(CALIBRATIONS)}, got {calibration!r}")
    ckpt = read_attribute_checkpoint(path)
    model, preprocess = load_attributes(path)
    dataset = open_dataset(data_dir, split="train", preprocess=preprocess)
    is_val = validation_split(dataset.targets, val_fraction, seed)
    val_idx = np.flatnonzero(is_val)
    images = dataset.stack_images(val_idx, progress)
    labels = torch.from_numpy(dataset.image_attributes[val_idx].astype(np.float32))
    scores, _ = predict_attributes(model, images)
    thresholds = CALIBRATIONS[calibration](scores, labels)
    save_attributes(out or path, model, preprocess, thresholds, ranker=ckpt.get("ranker"),
                    **{**ckpt.get("meta", {}), "calibration": calibration})
    return thresholds


def _map_size(model: torch.nn.Module, image_size: int, device: str) -> tuple[int, int]:
    """(h, w) of the model's activation maps at this input size (one dummy forward pass)."""
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        _, maps = model(torch.zeros(1, 3, image_size, image_size, device=device))
    model.train(was_training)
    return int(maps.shape[-2]), int(maps.shape[-1])


def _validate(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> tuple[float, torch.Tensor]:
    """(mAP, scores) of the model on the validation images, in eval mode."""
    model.eval()
    scores, _ = predict_attributes(model, images, batch_size)
    return mean_average_precision(scores, labels), scores


def discovered_vocabulary(data_dir: str | os.PathLike) -> dict[str, dict[str, str]] | None:
    """For a data set written by ``sane discover-attributes``: each attribute name -> its discovered id
    and its contact sheet (relative to that data set's folder, as in its discovered-attributes.json);
    None for a data set with its own labels."""
    from sane.train.discovery import VOCABULARY_FILE, applied_names

    path = Path(data_dir) / VOCABULARY_FILE
    if not path.is_file():
        return None
    names = applied_names(data_dir)
    entries = json.loads(path.read_text())["attributes"]
    return {name: {"id": str(entry["id"]), "contact_sheet": str(entry["contact_sheet"])}
            for name, entry in zip(names, entries)}


def train_attributes(
    data_dir: str | os.PathLike,
    out: str | os.PathLike,
    kind: str = "sane",
    cache: str | os.PathLike | None = None,
    arch: str = "compact",
    image_size: int = 112,
    epochs: int = 300,
    batch_size: int = 64,
    lr: float = 5e-4,
    lam: float = DEFAULT_LAMBDA,
    tau: float = DEFAULT_TAU,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    patience: int | None = None,
    limit: int | None = None,
    seed: int = 0,
    weights: str | None = None,
    device: str = "cpu",
    progress: bool = True,
    command: str = "",
) -> dict[str, Any]:
    """Train an attribute model on the training classes of ``data_dir``; write the best checkpoint to ``out``.

    ``kind`` is sane (needs ``cache``, a :mod:`sane.train.saliency_cache` directory), classifier or
    fashionsearchnet (lambda forced to 0). ``patience`` stops after that many epochs without a better
    validation mAP; ``limit`` trains on the first ``limit`` training images of a seeded shuffle (quick
    runs). A state file beside ``out`` (``out`` + ``.state``) lets the same command resume. Returns
    a report: best and initial validation mAP, best epoch, the mAP of every epoch.
    """
    if kind not in TRAINABLE:
        raise ValueError(f"kind must be one of {TRAINABLE}, got {kind!r}")
    if kind == "sane" and cache is None:
        raise ValueError("the sane model needs a saliency cache (sane cache-saliency), or train --model classifier")
    lam = lam if kind == "sane" else 0.0
    torch.manual_seed(seed)
    preprocess = Preprocess(image_size)
    dataset = open_dataset(data_dir, split="train", preprocess=preprocess).require_attributes()
    images, targets = dataset.stack_images(progress=progress), np.asarray(dataset.targets)
    labels = torch.from_numpy(dataset.image_attributes.astype(np.float32))
    is_val = validation_split(targets, val_fraction, seed)
    train_idx = np.flatnonzero(~is_val)
    val_idx = np.flatnonzero(is_val)
    if limit is not None:
        train_idx = np.sort(np.random.default_rng([seed, 31]).permutation(train_idx)[: int(limit)])
    if len(val_idx) == 0 or len(train_idx) == 0:
        raise ValueError(f"need training and validation images; got {len(train_idx)} and {len(val_idx)}")

    model = build_attribute_model(kind, dataset.attributes, arch, weights).to(device)
    model.vocabulary = discovered_vocabulary(data_dir)  # discovered attributes: their contact sheets, served
    hw = _map_size(model, image_size, device)
    if lam > 0:
        maps16, valid = SaliencyCache(cache).aligned(dataset)
        # Targets once, up front: (N, refs, h*w) float32 (a few MB), so an epoch does no resampling.
        sal_targets = saliency_target(maps16.float(), hw, tau)
        covered = int(valid[torch.from_numpy(train_idx)].any(1).sum())
        if progress:
            print(f"saliency maps for {covered} of {len(train_idx)} training images (tau {tau}, lambda {lam})")
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    state_path = out.with_name(out.name + ".state")
    val_images, val_labels = images[val_idx], labels[val_idx]
    first_epoch, best_map, best_epoch, history = 0, -1.0, -1, []
    if state_path.is_file():
        state = torch.load(state_path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        first_epoch, best_map, best_epoch = state["epoch"] + 1, state["best_map"], state["best_epoch"]
        history, initial_map = list(state["history"]), state["initial_map"]
        if progress:
            print(f"resuming from epoch {first_epoch} ({state_path})")
    else:
        initial_map, _ = _validate(model, val_images.to(device), val_labels, batch_size * 2)
    meta = {"data": str(data_dir), "lambda": lam, "tau": tau, "lr": lr, "seed": seed, "val_fraction": val_fraction,
            "train_images": len(train_idx), "val_images": len(val_idx), "command": command}
    for epoch in range(first_epoch, epochs):
        if patience is not None and best_epoch >= 0 and epoch - best_epoch > patience:
            break
        model.train()
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(train_idx)
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{epochs}", disable=not progress)
        cls_losses, hm_losses = [], []
        for idx in bar:
            scores, maps = model(images[idx].to(device))
            loss = F.binary_cross_entropy_with_logits(scores, labels[idx].to(device))
            cls_losses.append(loss.item())
            if lam > 0:
                hm = heatmap_loss(maps, sal_targets[idx].to(device), valid[idx].to(device), labels[idx].to(device))
                loss = loss + lam * hm
                hm_losses.append(hm.item())
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            postfix = {"bce": f"{np.mean(cls_losses[-20:]):.4f}"}
            if hm_losses:
                postfix["hm"] = f"{np.mean(hm_losses[-20:]):.3f}"
            bar.set_postfix(postfix)
        val_map, val_scores = _validate(model, val_images.to(device), val_labels, batch_size * 2)
        history.append(val_map)
        if progress:
            print(f"epoch {epoch + 1}: validation mAP {val_map:.4f} (best {max(best_map, val_map):.4f})")
        if val_map > best_map:
            best_map, best_epoch = val_map, epoch
            save_attributes(out, model, preprocess, best_f1_thresholds(val_scores, val_labels),
                            val_map=val_map, epoch=epoch + 1, **meta)
        torch.save(
            {"model": model.state_dict(), "optimiser": optimiser.state_dict(), "epoch": epoch, "best_map": best_map,
             "best_epoch": best_epoch, "history": history, "initial_map": initial_map},
            state_path,
        )
    state_path.unlink(missing_ok=True)
    return {"out": str(out), "kind": kind, "best_map": best_map, "best_epoch": best_epoch + 1,
            "initial_map": initial_map, "history": history}
