"""``megzoo train``: train or fine-tune a model on an image folder (see docs/training.md)."""
import json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train or fine-tune a model on an image folder (ImageNet recipe by default)",
        description="Train MODEL on DIR/train/CLASS/IMAGE (validated on DIR/val/CLASS/IMAGE), or on DIR/CLASS/IMAGE "
                    "with --val-split. Defaults are MegEngine's reference ImageNet recipe (90 epochs, SGD 0.025 x "
                    "processes, batch 64 per process, 5 warm-up epochs, x0.1 at 30/60/80); --recipe tv2 gives "
                    "torchvision's ResNet-50 V2 recipe (TrivialAugment, random erasing, mixup, cutmix, label "
                    "smoothing, EMA, 176 px training and 224/232 px evaluation); any option given wins. "
                    "Writes to --output: "
                    "last.pkl (resumable), best.pkl + best.json (the best model, for --weights/pretrained=), "
                    "history.json, log.txt, curves.png. Re-running the same command resumes.")
    add_config_options(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON at the end")
    p.set_defaults(handler=cmd_train)


#: command-line spellings that differ from ``--field-name``
_FLAGS = {"weight_decay": ("--weight-decay", "--wd"), "output": ("--output", "-o"), "freeze_stages": ("--freeze",)}
_METAVARS = {"data": "DIR", "train_dir": "DIR", "val_dir": "DIR", "output": "DIR", "input_size": "PX",
             "resize_size": "PX", "pretrained": "WEIGHTS", "milestones": "E,E,...", "warmup_epochs": "E",
             "label_smoothing": "EPS", "dtr_threshold": "SIZE", "crop_scale": ("MIN", "MAX"), "eval_size": "PX",
             "randaugment": ("N", "M"), "mixup": "ALPHA", "cutmix": "ALPHA", "random_erasing": "P", "drop_path": "P",
             "clip_grad_norm": "NORM", "ema_decay": "DECAY", "betas": ("B1", "B2"), "layer_decay": "DECAY"}
_API_ONLY = ("model_kwargs",)  # not a command-line value


def add_config_options(parser) -> None:
    """One option per :class:`~megzoo.train.TrainConfig` field, in the group its metadata names,
    with its type, default and help taken from the field and its metadata (``help``, ``group``):
    a new field is an option without editing this file. A bool field that defaults to True becomes
    ``--no-NAME``; an Optional[bool] one (a recipe's) ``--NAME [on|off]``. A field a recipe sets
    shows each recipe's value as its default."""
    from typing import Optional, Tuple, Union, get_args, get_origin

    from ..train.recipe import RECIPE_RULES, RECIPES, config_fields

    groups = {}
    for doc in config_fields():
        if doc.name in _API_ONLY:
            continue
        group = groups.get(doc.group) or groups.setdefault(doc.group, parser.add_argument_group(doc.group or "other"))
        flag = "--" + doc.name.replace("_", "-")
        kind = doc.type
        options = {"dest": doc.name, "default": doc.default}
        if kind is bool:
            if doc.default:
                group.add_argument("--no-" + doc.name.replace("_", "-"), action="store_false",
                                   help=f"turn off (on by default): {doc.help}", **options)
            else:
                group.add_argument(*_FLAGS.get(doc.name, (flag,)), action="store_true", help=doc.help, **options)
            continue
        if kind == Optional[bool]:
            group.add_argument(flag, nargs="?", const=True, type=_on_off, metavar="on|off",
                               help=f"{doc.help} (default {_recipe_defaults(doc.name, RECIPES, RECIPE_RULES)})",
                               **options)
            continue
        args = [a for a in get_args(kind) if a is not type(None)]
        if get_origin(kind) is Union:  # Optional[X], or pretrained's Union[bool, str, None]: a string/number
            kind = str if bool in args or str in args else args[0]
        if get_origin(kind) in (tuple, Tuple):
            item_args = get_args(kind)
            if item_args[-1] is Ellipsis:
                options["type"] = _int_list
            else:
                options.update(type=item_args[0], nargs=len(item_args))
        else:
            options["type"] = kind
        if doc.choices:
            options["choices"] = doc.choices
        options["metavar"] = _METAVARS.get(doc.name) or {int: "N", float: "X"}.get(options.get("type"))
        if options["metavar"] is None or doc.choices:
            del options["metavar"]
        default = doc.default
        shown = default
        if isinstance(default, tuple):  # as it is typed: 30,60,80 for a list option, 0.08 1.0 for nargs
            shown = ("," if options.get("type") is _int_list else " ").join(map(str, default))
        if default is None and any(doc.name in table for table in list(RECIPES.values()) + list(RECIPE_RULES.values())):
            shown = _recipe_defaults(doc.name, RECIPES, RECIPE_RULES)
        text = doc.help + (f" (default {shown})" if shown not in (None, "") else "")
        group.add_argument(*_FLAGS.get(doc.name, (flag,)), help=text.replace("%", "%%"), **options)


def _recipe_defaults(name: str, recipes: dict, rules: dict) -> str:
    """``megengine: 90, tv2: 600``: what each recipe gives field ``name``."""
    shown = []
    for recipe in recipes:
        value = recipes[recipe].get(name, rules.get(recipe, {}).get(name))
        if value is None and recipe != "megengine":
            value = recipes["megengine"].get(name, rules["megengine"].get(name))
        if value is not None:
            shown.append(f"{recipe}: {value}")
    return ", ".join(shown)


def _on_off(text: str) -> bool:
    import argparse

    words = {"on": True, "true": True, "yes": True, "1": True, "off": False, "false": False, "no": False, "0": False}
    if text.lower() not in words:
        raise argparse.ArgumentTypeError(f"expected on or off, got {text!r}")
    return words[text.lower()]


def _int_list(text: str):
    import argparse

    try:
        return tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def config_from_args(args):
    """The :class:`~megzoo.train.TrainConfig` of parsed ``megzoo train`` arguments."""
    from ..train import TrainConfig
    from ..train.recipe import config_fields
    from ..weights import pretrained_value

    if not (args.data or args.train_dir):
        raise ValueError("give --data DIR (with train/ and val/, or class folders and --val-split) or --train-dir")
    values = {f.name: getattr(args, f.name) for f in config_fields() if hasattr(args, f.name)}
    if values.get("pretrained") is not None:
        values["pretrained"] = pretrained_value(values["pretrained"])
    return TrainConfig(**values)


def cmd_train(args) -> int:
    from ..host import FolderInUseError
    from ..registry import get_model_entry
    from ..train import train
    from ..train.guards import DivergedError
    from . import CLIError
    from .paths import check_output, naming_output

    get_model_entry(args.model)  # unknown model: the usual error first
    config = config_from_args(args)
    check_output(config.output, folder=True)  # before the data is read (docs/cli.md#output-paths)
    try:
        with naming_output(config.output):
            result = train(config)
    except (FolderInUseError, DivergedError) as exc:  # another run on --output; a diverged run (last.pkl kept)
        raise CLIError(str(exc)) from None
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    elif result.best_path:
        print(f"best model: {result.best_path} (top-1 {100 * result.best_top1:.2f}%, epoch {result.best_epoch}); "
              f"curves: {result.plot_path}")
    return 0
