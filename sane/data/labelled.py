"""What training, caching and evaluation read from a data set: images with a class label and binary attributes.

:class:`~sane.data.awa2.AttributeDataset` (AwA2 layout, real and synthetic) and
:class:`~sane.data.polyvore.PolyvoreDataset` (Polyvore Outfits layout) fill the same fields, so every
step of the pipeline takes either; :func:`sane.data.open_dataset` picks the right one for a directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from sane.data.synthetic import Scene
from sane.images import Preprocess, open_image


class LabelledImageDataset(Dataset):
    """Base of the data set loaders. A subclass's constructor sets:

    - ``root`` (Path), ``split`` (str), ``preprocess`` (:class:`Preprocess`), ``format`` (its layout's name);
    - ``classes`` (every class of the data set, so labels of all splits index one list),
      ``split_classes`` (those with images in this split) and ``attributes`` (column names);
    - ``samples`` ([(image path, label)]), ``targets`` ([label]) and ``image_attributes`` ((N, A) uint8);
    - ``scenes`` (the synthetic scene of each image, or None) and ``mask_dir`` (object masks, or None).
    """

    format: str = ""
    root: Path
    split: str
    preprocess: Preprocess
    classes: list[str]
    split_classes: list[str]
    attributes: list[str]
    samples: list[tuple[str, int]]
    targets: list[int]
    image_attributes: np.ndarray
    scenes: list[Scene | None] | None = None
    mask_dir: Path | None = None

    def require_attributes(self) -> LabelledImageDataset:
        """``self`` when it has attribute labels; else a ValueError saying how to get some."""
        if not self.attributes:
            raise ValueError(f"{self.root} has no attribute labels: discover some with `sane discover-attributes "
                             f"--data {self.root} --out DIR` and use DIR as --data")
        return self

    def relative_path(self, index: int) -> str:
        """Path of sample ``index`` relative to the root, with forward slashes."""
        return Path(self.samples[index][0]).relative_to(self.root).as_posix()

    def __len__(self) -> int:
        """Number of images in the split."""
        return len(self.samples)

    def _mask(self, index: int) -> torch.Tensor:
        """Ground-truth object mask of sample ``index`` (layouts with masks override this)."""
        raise NotImplementedError(f"{type(self).__name__} has no object masks")

    def stack_images(self, indices=None, progress: bool = False) -> torch.Tensor:
        """Decode the images at ``indices`` (default: all) into one (n, 3, H, W) tensor, once, so
        training and evaluation loops cost no further JPEG decoding."""
        indices = range(len(self)) if indices is None else [int(i) for i in indices]
        size = self.preprocess.size
        images = torch.empty((len(indices), 3, size, size))
        for row, i in enumerate(tqdm(indices, desc="loading images", disable=not progress)):
            images[row] = self[i]["image"]
        return images

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Sample ``index`` as {image, label, attributes, index} (+ mask when asked for and available)."""
        path, label = self.samples[index]
        item: dict[str, Any] = {
            "image": self.preprocess.to_tensor(open_image(path, field=f"sample {index}")),
            "label": label,
            "attributes": torch.from_numpy(self.image_attributes[index].astype(np.float32)),
            "index": index,
        }
        if self.mask_dir is not None:
            item["mask"] = self._mask(index)
        return item
