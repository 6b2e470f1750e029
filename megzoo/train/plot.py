"""The loss and accuracy curves of a run as a PNG (matplotlib, Agg backend: no display needed)."""
import json
import os
from typing import List, Sequence, Union

from ..host import atomic_write

__all__ = ["plot_history"]


def plot_history(history: Union[str, Sequence[dict]], path: str, title: str = "") -> str:
    """Draw the per-epoch ``history`` (the list the trainer writes to ``history.json``, or that
    file's path) to ``path``: training and validation loss on the left, training accuracy and
    validation top-1 (and top-5) on the right. Returns ``path``."""
    import warnings

    with warnings.catch_warnings():  # numpy's subnormal-number warning: MegEngine sets flush-to-zero
        warnings.filterwarnings("ignore", message="The value of the smallest subnormal")
        return _plot(history, path, title)


def _plot(history, path: str, title: str) -> str:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    if isinstance(history, (str, os.PathLike)):
        with open(history, encoding="utf-8") as f:
            history = json.load(f)["epochs"] if str(history).endswith(".json") else []
    rows: List[dict] = list(history)
    if not rows:
        raise ValueError("empty history: nothing to plot")

    def series(key):
        points = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
        return [p[0] for p in points], [p[1] for p in points]

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    values = []
    for key, label, style in (("train_loss", "train", "-o"), ("val_loss", "validation", "-s")):
        x, y = series(key)
        values += [v for v in y if v > 0]
        if x:
            ax_loss.plot(x, y, style, markersize=3, label=label)
    if values and max(values) > 20 * min(values):  # an early spike would flatten the rest: log scale
        ax_loss.set_yscale("log")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy loss")
    ax_loss.set_title("loss")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend()
    for key, label, style in (("train_acc", "train top-1", "-o"), ("val_top1", "validation top-1", "-s"),
                              ("val_top5", "validation top-5", ":")):
        x, y = series(key)
        if x:
            ax_acc.plot(x, [100 * v for v in y], style, markersize=3, label=label)
    best = max((r for r in rows if r.get("val_top1") is not None), key=lambda r: r["val_top1"], default=None)
    acc_title = "accuracy"
    if best is not None:
        ax_acc.plot([best["epoch"]], [100 * best["val_top1"]], "*", markersize=12, color="crimson", label="best")
        acc_title += f" (best validation top-1 {100 * best['val_top1']:.2f}%, epoch {best['epoch']})"
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.set_title(acc_title)
    ax_acc.grid(alpha=0.3)
    ax_acc.legend(loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png"))
    finally:
        plt.close(fig)
    return path
