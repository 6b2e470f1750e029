"""The labelled images of an ImageFolder layout, as one list: what ``megzoo clean`` examines.

``DATA/CLASS/**/IMAGE`` (one folder of class folders), or ``DATA/train/CLASS/...`` with
``DATA/val/CLASS/...`` beside it (the layout ``megzoo train`` reads; every split is examined,
so a copy of a training image in val is found). Classes are the training folder's sorted
sub-folder names, as the trainer numbers them: the listing is the trainer's own
(:func:`megzoo.data.folders.list_image_folder`: hidden folders and files left out, links to
folders followed only inside their class folder, a file taken by its extension whether or not it
can be read, since finding the unreadable ones is part of the job). The order of
:attr:`LabeledImages.paths` (split, then class, then file name) is the row order of
``issues.csv`` and of the ``--pred-probs`` array.
"""
import os
from dataclasses import dataclass
from typing import List

import numpy as np

from ..data.folders import list_image_folder
from ..train.data import find_folders

__all__ = ["LabeledImages", "scan_folder", "CleaningInputError"]


class CleaningInputError(ValueError):
    """Input ``megzoo clean`` cannot use (the message names the problem and the fix)."""


@dataclass
class LabeledImages:
    """Every image file of a dataset with its given label. ``paths``: absolute paths (N,);
    ``labels``: int64 (N,) class indices into ``classes``; ``splits``: the split folder of each
    (``"train"``, ``"val"``; ``""`` for a single folder of classes); ``root``: the data folder."""

    paths: List[str]
    labels: np.ndarray
    classes: List[str]
    splits: List[str]
    root: str

    def __len__(self) -> int:
        return len(self.paths)

    def relative(self, i: int) -> str:
        """Image ``i``'s path relative to the data folder (as the reports print it)."""
        return os.path.relpath(self.paths[i], self.root)

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=len(self.classes))


def scan_folder(data: str) -> LabeledImages:
    """The :class:`LabeledImages` of ``data`` (module docstring); raises
    :class:`CleaningInputError` for a missing or empty folder and for val classes the training
    folder lacks."""
    data = os.path.abspath(os.fspath(data))
    if not os.path.isdir(data):
        raise CleaningInputError(f"{data} is not a folder: give the image folder (class sub-folders, or train/ and "
                                 "val/ with class sub-folders)")
    train_dir, val_dir = find_folders(data)
    splits = [("train" if train_dir != data else "", train_dir)] + ([("val", val_dir)] if val_dir else [])
    listed = [list_image_folder(folder) for _, folder in splits]  # each folder once: one warning at most
    classes = listed[0][0]
    if not classes:
        raise CleaningInputError(f"{train_dir} has no class sub-folders: expected {train_dir}/CLASS/IMAGE files "
                                 "(one sub-folder per class, named after it)")
    index = {name: i for i, name in enumerate(classes)}
    paths: List[str] = []
    labels: List[int] = []
    names: List[str] = []
    for (split, folder), (split_classes, samples) in zip(splits, listed):
        for name in split_classes:
            if name not in index:
                raise CleaningInputError(f"{folder}/{name}: a class the training folder {train_dir} lacks; add the "
                                         "folder there too, or remove it")
        paths += [path for path, _ in samples]
        labels += [index[split_classes[label]] for _, label in samples]
        names += [os.path.basename(folder) if split else ""] * len(samples)
    if not paths:
        raise CleaningInputError(f"{data} holds no image files in its class folders "
                                 f"(looked for {', '.join(('.jpg', '.png', '.bmp', '...'))})")
    return LabeledImages(paths, np.asarray(labels, dtype=np.int64), classes, names, data)
