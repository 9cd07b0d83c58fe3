"""One entry point for every data directory: detect its layout (AwA2, Polyvore Outfits, a CSV of
labels, or a folder per class) and load it."""

from __future__ import annotations

from pathlib import Path

from sane.data.awa2 import AttributeDataset
from sane.data.folders import LABELS_FILE, FolderDataset, is_class_folders
from sane.data.labelled import LabelledImageDataset
from sane.data.polyvore import ATTRIBUTES_FILE, METADATA_FILE, PolyvoreDataset
from sane.images import Preprocess

# Files whose presence says which layout a directory is meant to have (the loader then names what is missing).
MARKERS: dict[str, tuple[str, ...]] = {
    "awa2": ("classes.txt", "predicates.txt", "predicate-matrix-binary.txt", "JPEGImages"),
    "polyvore": (METADATA_FILE, ATTRIBUTES_FILE, "nondisjoint", "disjoint"),
}
LAYOUTS = {
    "awa2": "AwA2: JPEGImages/<class>/<image>.jpg, classes.txt and predicates.txt ('<idx> <name>' lines), "
            "predicate-matrix-binary.txt (classes x predicates, 0/1), trainclasses.txt, testclasses.txt "
            "(optional: instance-attributes.txt, scenes.jsonl, masks/; without the attribute files, a data "
            "set without labels)",
    "polyvore": f"Polyvore Outfits: images/<item_id>.jpg, {METADATA_FILE} ({{item_id: {{'semantic_category': ...}}}}), "
                "nondisjoint/{train,valid,test}.json (outfits {'set_id', 'items': [{'item_id', 'index'}]}), "
                f"{ATTRIBUTES_FILE} ({{item_id: [attribute name, ...]}})",
}
LAYOUTS["csv"] = f"a CSV: {LABELS_FILE} with header image,class[,<attribute>,...] (paths relative to the directory, " \
                 "attribute columns 0/1, optional split column train/test)"
LAYOUTS["folders"] = "a folder per class: <class>/<image>.jpg (optional attributes.csv: class,<attribute>,... 0/1)"
LOADERS: dict[str, type[LabelledImageDataset]] = {"awa2": AttributeDataset, "polyvore": PolyvoreDataset,
                                                  "csv": FolderDataset, "folders": FolderDataset}


def detect_format(root: str | Path) -> str:
    """``"awa2"``, ``"polyvore"``, ``"csv"`` or ``"folders"``: the layout whose marker files ``root``
    has (a CSV layout has labels.csv; a folder per class has none of the markers); a clear error otherwise."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data directory not found: {root}")
    found = {name: [m for m in markers if (root / m).exists()] for name, markers in MARKERS.items()}
    matches = [name for name, present in found.items() if present]
    if len(matches) == 1:
        return matches[0]
    expected = "; ".join(LAYOUTS.values())
    if not matches:
        if (root / LABELS_FILE).is_file():
            return "csv"
        if is_class_folders(root):
            return "folders"
        raise FileNotFoundError(f"{root} is not a data directory in any layout sane reads. Expected {expected}")
    both = ", ".join(m for present in found.values() for m in present)
    raise ValueError(f"{root} mixes the AwA2 and Polyvore Outfits layouts ({both}); keep one. Expected {expected}")


def open_dataset(
    root: str | Path, split: str = "train", preprocess: Preprocess | None = None, with_masks: bool = False
) -> LabelledImageDataset:
    """The data set at ``root`` in whichever layout it has (:func:`detect_format`), split ``split``
    (train, test or all; Polyvore also has valid), images prepared by ``preprocess``."""
    return LOADERS[detect_format(root)](root, split=split, preprocess=preprocess, with_masks=with_masks)
