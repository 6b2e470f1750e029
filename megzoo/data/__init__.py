"""Data shipped with megzoo: the ImageNet-1k class list used by the pretrained classifiers."""
import functools
import json
from pathlib import Path
from typing import List, Tuple

__all__ = ["imagenet1k_classes", "imagenet1k_categories", "imagenet1k_wnids"]

_DIR = Path(__file__).resolve().parent


@functools.lru_cache(maxsize=None)
def imagenet1k_classes() -> Tuple[Tuple[str, str], ...]:
    """The 1000 (WordNet id, name) pairs, indexed by the classifier's output (281 is tabby)."""
    with open(_DIR / "imagenet1k_classes.json", encoding="utf-8") as f:
        return tuple((wnid, name) for wnid, name in json.load(f))


def imagenet1k_categories() -> List[str]:
    """Human-readable names, index -> name (e.g. 281 -> "tabby")."""
    return [name for _, name in imagenet1k_classes()]


def imagenet1k_wnids() -> List[str]:
    """WordNet ids, index -> wnid (e.g. 281 -> "n02123045"); ImageNet-val folders are named by these."""
    return [wnid for wnid, _ in imagenet1k_classes()]
