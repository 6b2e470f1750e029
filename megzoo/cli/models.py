"""``megzoo list`` and ``megzoo summary``."""
import json

from . import options


def register(subparsers) -> None:
    p = subparsers.add_parser("list", help="list the models (name, family, params, GMACs)")
    p.add_argument("pattern", nargs="?", default=None, help="glob pattern, e.g. 'resnet*'")
    p.add_argument("--pretrained", action="store_true", help="only models with pretrained weights")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_list)

    p = subparsers.add_parser("summary", help="build a model and print its parameters, GMACs and feature shapes")
    p.add_argument("model", help="model name, e.g. resnet50")
    p.add_argument("--input-size", type=options.input_size, default=224, metavar="PX",
                   help="input side in pixels (default 224; at most 1024)")
    p.add_argument("--num-classes", type=options.num_classes, default=1000)
    p.set_defaults(handler=cmd_summary)


def cmd_list(args) -> int:
    from ..registry import get_model_entry, list_models

    names = list_models(args.pattern, pretrained=args.pretrained)
    if not names:
        print(f"no model matches {args.pattern!r}" + (" with pretrained weights" if args.pretrained else ""))
        return 1
    entries = [get_model_entry(n) for n in names]
    if args.json:
        print(json.dumps([{"name": e.name, "family": e.family, "params": e.params, "gmacs": e.gmacs}
                          for e in entries], indent=2))
        return 0
    print(f"{'model':<20} {'family':<8} {'params':>13} {'GMACs':>7}")
    for e in entries:
        print(f"{e.name:<20} {e.family:<8} {e.params:>13,} {e.gmacs:>7.3f}")
    return 0


def cmd_summary(args) -> int:
    from ..registry import get_model
    from ..summary import model_summary

    model = get_model(args.model, num_classes=args.num_classes)
    print(model_summary(model, (args.input_size, args.input_size)))
    return 0
