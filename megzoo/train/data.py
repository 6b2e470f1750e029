"""Image-folder data for training through ``megengine.data``.

``DIR/CLASS/**/IMAGE`` folders are listed by :func:`list_image_folder` (the one lister,
:mod:`megzoo.data.folders`: ``megzoo eval`` and ``megzoo clean`` use it too, so all see the same
classes and files) and read by :func:`megzoo.images.read_image` (BGR uint8; a truncated or too
large file is refused by name, as in predict, eval and clean);
classes are the sorted sub-folder names of the training folder, and the validation folder's
classes are mapped to them by name. Training batches come from a ``RandomSampler``
(``drop_last``, split over the distributed ranks), evaluation batches from a
``SequentialSampler`` over this rank's share; both go through a ``DataLoader`` with worker
processes and megzoo's presets (:func:`megzoo.train_transform`, :func:`megzoo.eval_transform`).

Every epoch is reproducible: :func:`seed_epoch` derives the sampler order, the augmentation
seeds (NumPy's global generator, and the seeds MegEngine gives to DataLoader workers) and
MegEngine's own generator (dropout) from ``(seed, epoch, rank)`` alone, so a run resumed at an
epoch boundary sees exactly the batches the uninterrupted run saw.
"""
import json
import os
import random
import sys
from dataclasses import dataclass, replace
from typing import List, Optional, Sequence, Tuple

import numpy as np
from megengine.data import DataLoader, RandomSampler, SequentialSampler
from megengine.data.dataset import Dataset

from ..data.folders import list_image_folder
from ..images import ImageError, read_image
from ..transforms import Preprocess, eval_transform, resolve_preprocess, train_transform
from .mixing import BatchMixer
from .workers import WorkerDataLoader  # workers that ignore Ctrl-C; the plasma store cleaned up

__all__ = ["FolderData", "ImageSamples", "list_image_folder", "read_exclude_list", "find_folders", "build_folder_data",
           "train_loader", "eval_loader", "seed_epoch", "epoch_seed", "TrainingPipeline", "training_preprocess",
           "training_pipeline"]


class ImageSamples(Dataset):
    """``(image, label)`` pairs of a list of ``(path, label)``, read as BGR uint8 by
    :func:`megzoo.images.read_image` (the checks of every reader: complete, not too large).

    An image that cannot be read (corrupt, truncated, too large, not an image) is reported by
    name and reason on stderr, once per process; with ``replace_unreadable`` (training data) the next readable
    image of the list takes its place so the run goes on, otherwise (evaluation data, where a
    substitute would change the figures) a ``ValueError`` names the file and the fix."""

    def __init__(self, samples: Sequence[Tuple[str, int]], replace_unreadable: bool = False):
        super().__init__()
        self.samples = list(samples)
        self.replace_unreadable = replace_unreadable
        self._reported: set = set()

    def _read(self, index: int):
        """(image or None, label, why it cannot be read)."""
        path, label = self.samples[index]
        try:
            return read_image(path), np.int32(label), ""
        except ImageError as exc:
            return None, np.int32(label), exc.reason

    def __getitem__(self, index: int):
        image, label, why = self._read(index)
        if image is not None:
            return image, label
        path = self.samples[index][0]
        if not self.replace_unreadable:
            raise ValueError(f"cannot read image {path} ({why}): `megzoo clean DATA` lists every such file; leave "
                             "them out with --exclude exclude.txt")
        if path not in self._reported:
            self._reported.add(path)
            print(f"megzoo: cannot read image {path} ({why}): replaced by the next readable image of the training "
                  "set; `megzoo clean DATA` lists every such file, and --exclude exclude.txt leaves them out",
                  file=sys.stderr, flush=True)
        for step in range(1, len(self.samples)):
            image, label, _ = self._read((index + step) % len(self.samples))
            if image is not None:
                return image, label
        raise ValueError(f"no image of the training set can be read (the first: {path})")

    def __len__(self) -> int:
        return len(self.samples)


def _listed_name(line: str) -> str:
    """The path a line of an exclude list names: a JSON string (``"a\\nb.jpg"``, as ``megzoo
    clean`` writes them, so any file name fits on one line), or the line itself (older lists)."""
    if len(line) >= 2 and line[0] == line[-1] == '"':
        try:
            name = json.loads(line)
        except ValueError:
            return line
        if isinstance(name, str):
            return name
    return line


def read_exclude_list(path: str, data_root: str) -> List[str]:
    """The image paths listed in ``path`` (one per line, as a JSON string or plain; ``#`` comments
    and blank lines skipped; absolute, or relative to ``data_root``), as real absolute paths."""
    if not os.path.isfile(path):
        raise ValueError(f"exclude list {path} does not exist (megzoo clean writes exclude.txt in its --out folder)")
    found = []
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                name = _listed_name(line)
                full = name if os.path.isabs(name) else os.path.join(data_root, name)
                found.append(os.path.realpath(full))
    return found


def _drop(samples, excluded: set) -> Tuple[list, int]:
    kept = [(p, label) for p, label in samples if os.path.realpath(p) not in excluded]
    return kept, len(samples) - len(kept)


@dataclass
class FolderData:
    """Training and validation datasets of an image folder, with the class names."""

    train: Dataset
    val: Optional[Dataset]
    classes: List[str]  #: class index -> folder name
    train_root: str
    val_root: Optional[str]
    excluded: Optional[dict] = None  #: images left out by an exclude list: {"train": n, "val": n, "listed": n}

    @property
    def num_classes(self) -> int:
        return len(self.classes)


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
                      val_split: float = 0.0, seed: int = 0, exclude: Optional[str] = None) -> FolderData:
    """The datasets of :func:`find_folders`'s folders. Without a validation folder and with
    ``val_split > 0``, that fraction of each class's images (chosen with ``seed``) is held out.
    ``exclude``: a file listing images to leave out of both (``megzoo clean``'s exclude.txt;
    see :func:`read_exclude_list`)."""
    train_root, val_root = find_folders(data, train_dir, val_dir)
    classes, train_samples = list_image_folder(train_root)
    if not classes:
        raise ValueError(f"{train_root} has no class sub-folders (expected {train_root}/CLASS/IMAGE files)")
    if not train_samples:
        raise ValueError(f"{train_root} has no image files in its class folders (.jpg, .png, .bmp, ...)")
    index = {name: i for i, name in enumerate(classes)}
    excluded_set = set(read_exclude_list(exclude, data or os.path.dirname(os.path.abspath(train_root)))) \
        if exclude else set()
    samples, n_train_out = _drop(train_samples, excluded_set)
    train = ImageSamples(samples, replace_unreadable=True)
    val: Optional[Dataset] = None
    n_val_out = 0
    if val_root is not None:
        val_classes, val_listed = list_image_folder(val_root)
        unknown = sorted(set(val_classes) - set(index))
        if unknown:
            raise ValueError(f"validation folder {val_root} has classes the training folder lacks: "
                             f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}")
        val_samples, n_val_out = _drop([(path, index[val_classes[label]]) for path, label in val_listed],
                                       excluded_set)
        val = ImageSamples(val_samples)
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
        train, val = ImageSamples(kept, replace_unreadable=True), ImageSamples(held)
        val_root = f"{train_root} ({val_split:.0%} held out)"
    excluded = None
    if exclude:
        if excluded_set and n_train_out + n_val_out == 0:
            raise ValueError(f"none of the {len(excluded_set)} images listed in {exclude} is in {data or train_root} "
                             "(was the list written for another folder? its paths are absolute, or relative to the "
                             "data folder)")
        excluded = {"train": n_train_out, "val": n_val_out, "listed": len(excluded_set), "file": exclude}
        if len(train) == 0:
            raise ValueError(f"{exclude} leaves no training images")
    return FolderData(train, val, classes, train_root, val_root, excluded)


def train_loader(dataset: Dataset, transform, batch_size: int, workers: int, world_size: int = 1,
                 rank: int = 0) -> DataLoader:
    """Shuffled training batches (incomplete last batch dropped) of this rank's share."""
    per_rank = -(-len(dataset) // world_size)
    if per_rank < batch_size:
        raise ValueError(f"the training set has {len(dataset)} images ({per_rank} per process), fewer than "
                         f"batch_size={batch_size}; lower the batch size")
    sampler = RandomSampler(dataset, batch_size=batch_size, drop_last=True, world_size=world_size, rank=rank, seed=0)
    return WorkerDataLoader(dataset, sampler=sampler, transform=transform, num_workers=workers)


def eval_loader(dataset: Dataset, transform, batch_size: int, workers: int, world_size: int = 1,
                rank: int = 0) -> DataLoader:
    """Evaluation batches, in order, of this rank's share (``rank::world_size``; no padding, so
    the shares together count every image exactly once)."""
    indices = list(range(rank, len(dataset), world_size))
    sampler = SequentialSampler(dataset, batch_size=min(batch_size, max(1, len(indices))), drop_last=False,
                                indices=indices, world_size=1, rank=0)
    return WorkerDataLoader(dataset, sampler=sampler, transform=transform, num_workers=workers)


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


@dataclass
class TrainingPipeline:
    """What feeds a run: the transforms, the batch mixer and the loaders."""
    train_transform: object
    eval_transform: object
    mixer: BatchMixer
    train_loader: DataLoader
    val_loader: Optional[DataLoader]
    steps_per_epoch: int  #: training steps of one epoch (``config.steps_per_epoch`` caps it)


def training_preprocess(config, model, state: Optional[dict] = None) -> Preprocess:
    """The weights' normalisation at the configured evaluation sizes: the one a resumed run
    (``state``, a training state) started with, else ``model``'s (a megzoo model's, else ImageNet's)."""
    if state is not None and state.get("preprocess"):
        saved = dict(state["preprocess"])
        record = resolve_preprocess({**saved, "mean": tuple(saved["mean"]), "std": tuple(saved["std"])})
    else:
        record = resolve_preprocess(model if hasattr(model, "model_name") else None)
    return replace(record, input_size=config.eval_size, resize_size=config.eval_resize)


def training_pipeline(config, data: FolderData, p: Preprocess, num_classes: int, world: int = 1,
                      rank: int = 0) -> TrainingPipeline:
    """The training transform (crop, flip, jitter, policy augmentation, erasing), mixup/cutmix,
    the evaluation transform of ``p`` and the loaders of ``data`` for process ``rank`` of ``world``."""
    from ..augment import policy_transform

    train = train_transform(config.input_size, scale=config.crop_scale, hflip=config.hflip,
                            color_jitter=config.color_jitter, mean=p.mean, std=p.std, color_order=p.color_order,
                            interpolation=p.interpolation, augment=policy_transform(config.augment, config.randaugment),
                            random_erasing=config.random_erasing)
    evaluate = eval_transform(p)
    loader = train_loader(data.train, train, config.batch_size, config.workers, world, rank)
    val = None
    if data.val is not None and len(data.val) > 0:
        val = eval_loader(data.val, evaluate, config.eval_batch_size, config.workers, world, rank)
    steps = len(loader.sampler)
    if config.steps_per_epoch:
        steps = min(steps, config.steps_per_epoch)
    mixer = BatchMixer(num_classes, config.mixup, config.cutmix, config.label_smoothing)
    return TrainingPipeline(train, evaluate, mixer, loader, val, steps)
