"""`sane train-similarity`: a triplet-loss similarity model where same class = same (shape, colour)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from sane.data import open_dataset
from sane.images import Preprocess
from sane.models import build_embedding, save_similarity
from sane.train.triplet import pk_batches, triplet_loss


def train_similarity(
    data_dir: str | os.PathLike,
    out: str | os.PathLike,
    arch: str = "compact",
    dim: int = 64,
    image_size: int = 112,
    epochs: int = 15,
    classes_per_batch: int = 8,
    per_class: int = 4,
    lr: float = 1e-3,
    margin: float = 0.2,
    mining: str = "batch_all",
    seed: int = 0,
    weights: str | None = None,
    device: str = "cpu",
    progress: bool = True,
    command: str = "",
) -> Path:
    """Train on the data set's train classes and write a checkpoint to ``out``.

    A per-epoch state (model + optimiser) is kept beside it (``out`` + ``.state``): re-running the
    same command resumes from the last finished epoch.
    """
    torch.manual_seed(seed)
    preprocess = Preprocess(image_size)
    dataset = open_dataset(data_dir, split="train", preprocess=preprocess)
    images, labels = dataset.stack_images(progress=progress), np.asarray(dataset.targets)
    model = build_embedding(arch, dim, weights).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=epochs)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    state_path = out.with_name(out.name + ".state")
    first_epoch = 0
    if state_path.is_file():
        state = torch.load(state_path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        scheduler.load_state_dict(state["scheduler"])
        first_epoch = state["epoch"] + 1
        if progress:
            print(f"resuming from epoch {first_epoch} ({state_path})")
    for epoch in range(first_epoch, epochs):
        rng = np.random.default_rng(seed * 1000 + epoch)
        model.train()
        losses = []
        batches = pk_batches(labels, classes_per_batch, per_class, rng)
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{epochs}", disable=not progress)
        for idx in bar:
            x = images[idx].to(device)
            y = torch.as_tensor(labels[idx], device=device)
            loss = triplet_loss(model(x), y, margin, mining)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        scheduler.step()
        torch.save(
            {"model": model.state_dict(), "optimiser": optimiser.state_dict(),
             "scheduler": scheduler.state_dict(), "epoch": epoch},
            state_path,
        )
    model.eval()
    save_similarity(out, model, preprocess, data=str(data_dir), epochs=epochs, seed=seed, mining=mining, command=command)
    state_path.unlink(missing_ok=True)
    return out
