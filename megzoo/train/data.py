"""Image-folder data for training through ``megengine.data``.

``DIR/CLASS/**/IMAGE`` folders are read by ``megengine.data.dataset.ImageFolder`` (OpenCV, BGR
uint8); classes are the sorted sub-folder names of the training folder, and the validation
folder's classes are mapped to them by name. Training batches come from a ``RandomSampler``
(``drop_last``, split over the distributed ranks), evaluation batches from a
``SequentialSampler`` over this rank's share; both go through a ``DataLoader`` with worker
processes and megzoo's presets (:func:`megzoo.train_transform`, :func:`megzoo.eval_transform`).

Every epoch is reproducible: :func:`seed_epoch` derives the sampler order, the augmentation
seeds (NumPy's global generator, and the seeds MegEngine gives to DataLoader workers) and
MegEngine's own generator (dropout) from ``(seed, epoch, rank)`` alone, so a run resumed at an
epoch boundary sees exactly the batches the uninterrupted run saw.
"""
import os
import random
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
from megengine.data import DataLoader, RandomSampler, SequentialSampler
from megengine.data.dataset import Dataset, ImageFolder

from ..images import is_image_file

__all__ = ["FolderData", "find_folders", "build_folder_data", "train_loader", "eval_loader", "seed_epoch",
           "epoch_seed"]


class _Samples(Dataset):
    """``(image, label)`` pairs of a list of ``(path, label)`` (read as ImageFolder does)."""

    def __init__(self, samples: Sequence[Tuple[str, int]]):
        super().__init__()
        self.samples = list(samples)

    def __getitem__(self, index: int):
        import cv2

        path, label = self.samples[index]
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"cannot read image {path}")
        return image, np.int32(label)

    def __len__(self) -> int:
        return len(self.samples)


@dataclass
class FolderData:
    """Training and validation datasets of an image folder, with the class names."""

    train: Dataset
    val: Optional[Dataset]
    classes: List[str]  #: class index -> folder name
    train_root: str
    val_root: Optional[str]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _check_valid(path: str) -> bool:
    return is_image_file(path)


def find_folders(data: Optional[str] = None, train_dir: Optional[str] = None,
                 val_dir: Optional[str] = None) -> Tuple[str, Optional[str]]:
    """(training folder, validation folder or None) from ``data`` (with ``train/`` and
    ``val/`` sub-folders, or itself the folder of classes) or the explicit folders."""
    if train_dir is None:
        if data is None:
            raise ValueError("no training data: give data=DIR (with train/ and val/, or class folders) or train_dir")
        if os.path.isdir(os.path.join(data, "train")):
            train_dir = os.path.join(data, "train")
            if val_dir is None:
                for name in ("val", "valid", "validation", "test"):
                    if os.path.isdir(os.path.join(data, name)):
                        val_dir = os.path.join(data, name)
                        break
        else:
            train_dir = data
    for what, folder in (("training", train_dir), ("validation", val_dir)):
        if folder is not None and not os.path.isdir(folder):
            raise ValueError(f"{what} folder {folder} does not exist (it should hold one sub-folder per class)")
    return train_dir, val_dir


def build_folder_data(data: Optional[str] = None, train_dir: Optional[str] = None, val_dir: Optional[str] = None,
                      val_split: float = 0.0, seed: int = 0) -> FolderData:
    """The datasets of :func:`find_folders`'s folders. Without a validation folder and with
    ``val_split > 0``, that fraction of each class's images (chosen with ``seed``) is held out."""
    train_root, val_root = find_folders(data, train_dir, val_dir)
    train = ImageFolder(train_root, check_valid_func=_check_valid)
    classes = sorted(train.class_dict, key=lambda name: int(train.class_dict[name]))
    if not classes:
        raise ValueError(f"{train_root} has no class sub-folders (expected {train_root}/CLASS/IMAGE files)")
    if len(train) == 0:
        raise ValueError(f"{train_root} has no image files in its class folders (.jpg, .png, .bmp, ...)")
    index = {name: i for i, name in enumerate(classes)}
    val: Optional[Dataset] = None
    if val_root is not None:
        val_folder = ImageFolder(val_root, check_valid_func=_check_valid)
        names = {int(v): k for k, v in val_folder.class_dict.items()}
        unknown = sorted(set(names.values()) - set(index))
        if unknown:
            raise ValueError(f"validation folder {val_root} has classes the training folder lacks: "
                             f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}")
        val = _Samples([(path, index[names[int(label)]]) for path, label in val_folder.samples])
    elif val_split > 0:
        rng = np.random.RandomState(seed)
        by_class: dict = {}
        for path, label in train.samples:
            by_class.setdefault(int(label), []).append(path)
        kept, held = [], []
        for label in sorted(by_class):
            paths = by_class[label]
            order = rng.permutation(len(paths))
            n_val = int(round(len(paths) * val_split))
            held += [(paths[i], label) for i in sorted(order[:n_val])]
            kept += [(paths[i], label) for i in sorted(order[n_val:])]
        train, val = _Samples(kept), _Samples(held)
        val_root = f"{train_root} ({val_split:.0%} held out)"
    return FolderData(train, val, classes, train_root, val_root)


def train_loader(dataset: Dataset, transform, batch_size: int, workers: int, world_size: int = 1,
                 rank: int = 0) -> DataLoader:
    """Shuffled training batches (incomplete last batch dropped) of this rank's share."""
    per_rank = -(-len(dataset) // world_size)
    if per_rank < batch_size:
        raise ValueError(f"the training set has {len(dataset)} images ({per_rank} per process), fewer than "
                         f"batch_size={batch_size}; lower the batch size")
    sampler = RandomSampler(dataset, batch_size=batch_size, drop_last=True, world_size=world_size, rank=rank, seed=0)
    return DataLoader(dataset, sampler=sampler, transform=transform, num_workers=workers)


def eval_loader(dataset: Dataset, transform, batch_size: int, workers: int, world_size: int = 1,
                rank: int = 0) -> DataLoader:
    """Evaluation batches, in order, of this rank's share (``rank::world_size``; no padding, so
    the shares together count every image exactly once)."""
    indices = list(range(rank, len(dataset), world_size))
    sampler = SequentialSampler(dataset, batch_size=min(batch_size, max(1, len(indices))), drop_last=False,
                                indices=indices, world_size=1, rank=0)
    return DataLoader(dataset, sampler=sampler, transform=transform, num_workers=workers)


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A 31-bit seed for ``(seed, epoch, rank)``."""
    mixed = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), int(rank)]).generate_state(1)[0]
    return int(mixed) & 0x7FFFFFFF


def seed_epoch(loader: Optional[DataLoader], seed: int, epoch: int, rank: int = 0) -> None:
    """Make epoch ``epoch`` reproducible (see the module docstring): the same shuffling on every
    rank, different augmentation per rank."""
    import megengine.random

    if loader is not None and isinstance(loader.sampler, RandomSampler):
        loader.sampler.rng = np.random.RandomState(epoch_seed(seed, epoch, 0))
    local = epoch_seed(seed, epoch, rank + 1)
    np.random.seed(local)
    random.seed(local)
    megengine.random.seed(local)
