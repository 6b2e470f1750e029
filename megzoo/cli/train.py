"""``megzoo train``: train or fine-tune a model on an image folder (see docs/training.md)."""
import json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train or fine-tune a model on an image folder (ImageNet recipe by default)",
        description="Train MODEL on DIR/train/CLASS/IMAGE (validated on DIR/val/CLASS/IMAGE), or on DIR/CLASS/IMAGE "
                    "with --val-split. Defaults are MegEngine's reference ImageNet recipe (90 epochs, SGD 0.025 x "
                    "processes, batch 64 per process, 5 warm-up epochs, x0.1 at 30/60/80). Writes to --output: "
                    "last.pkl (resumable), best.pkl + best.json (the best model, for --weights/pretrained=), "
                    "history.json, log.txt, curves.png. Re-running the same command resumes.")
    data = p.add_argument_group("data")
    data.add_argument("--data", metavar="DIR", help="folder with train/ and val/ (or class folders, with --val-split)")
    data.add_argument("--train-dir", metavar="DIR", help="training folder (instead of --data)")
    data.add_argument("--val-dir", metavar="DIR", help="validation folder")
    data.add_argument("--val-split", type=float, default=0.0, metavar="F",
                      help="hold out this fraction of each class when there is no validation folder")
    data.add_argument("--input-size", type=int, default=224, metavar="PX", help="training crop (default 224)")
    data.add_argument("--resize-size", type=int, default=None, metavar="PX",
                      help="evaluation resize before the centre crop (default input-size / 0.875)")
    data.add_argument("--crop-scale", type=float, nargs=2, default=(0.08, 1.0), metavar=("MIN", "MAX"),
                      help="RandomResizedCrop area range (default 0.08 1)")
    data.add_argument("--hflip", type=float, default=0.5, metavar="P", help="horizontal flip probability (default 0.5)")
    data.add_argument("--color-jitter", type=float, default=None, metavar="X",
                      help="brightness/contrast/saturation jitter (default 0.4 above ResNet-34, else 0)")
    data.add_argument("--workers", type=int, default=2, metavar="N", help="DataLoader worker processes (default 2)")

    model = p.add_argument_group("model")
    model.add_argument("--model", default="resnet50", help="model name (default resnet50; `megzoo list`)")
    model.add_argument("--num-classes", type=int, default=None, metavar="N", help="default: number of class folders")
    model.add_argument("--pretrained", default=None, metavar="WEIGHTS",
                       help="start from weights: 'default', a tag (`megzoo info MODEL`), or a .pkl/.pth path/URL; "
                            "the classifier is re-initialised when the number of classes differs")
    model.add_argument("--freeze", type=int, default=None, metavar="N", dest="freeze_stages",
                       help="freeze the stem and the first N stages (their BatchNorm in inference mode)")
    model.add_argument("--backbone-lr-mult", type=float, default=1.0, metavar="X",
                       help="backbone learning rate = X x the head's (fine-tuning: 0.1)")

    opt = p.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=int, default=90)
    opt.add_argument("--batch-size", type=int, default=64, metavar="N", help="per process (default 64)")
    opt.add_argument("--lr", type=float, default=0.025, help="per process; multiplied by the processes (default 0.025)")
    opt.add_argument("--momentum", type=float, default=0.9)
    opt.add_argument("--nesterov", action="store_true")
    opt.add_argument("--weight-decay", "--wd", type=float, default=1e-4, dest="weight_decay")
    opt.add_argument("--no-bn-decay", action="store_true", help="no weight decay on BatchNorm and bias parameters")
    opt.add_argument("--schedule", choices=("step", "cosine"), default="step")
    opt.add_argument("--milestones", type=_int_list, default=(30, 60, 80), metavar="E,E,...",
                     help="epochs of the x gamma steps (default 30,60,80)")
    opt.add_argument("--gamma", type=float, default=0.1)
    opt.add_argument("--warmup-epochs", type=float, default=5.0, metavar="E", help="linear warm-up (default 5)")
    opt.add_argument("--min-lr", type=float, default=0.0, help="floor of the cosine schedule")
    opt.add_argument("--label-smoothing", type=float, default=0.0, metavar="EPS")
    opt.add_argument("--steps-per-epoch", type=int, default=None, metavar="N", help="cap the steps of an epoch")

    run = p.add_argument_group("run")
    run.add_argument("--output", "-o", default="runs/train", metavar="DIR", help="run folder (default runs/train)")
    run.add_argument("--no-resume", dest="resume", action="store_false",
                     help="start afresh even if DIR/last.pkl exists (it is overwritten)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--device", default=None, help="cpu, gpu, or a MegEngine device name (default: GPU if usable)")
    run.add_argument("--gpus", type=int, default=1, metavar="N", help="GPUs (processes) for distributed training")
    run.add_argument("--cpu-threads", type=int, default=None, metavar="N", help="CPU threads (default: all cores)")
    run.add_argument("--fast-conv", default="auto", choices=("auto", "blas", "swap", "gemm", "im2col", "off"),
                     help="CPU convolution backward formulation (default auto; off: MegEngine's own)")
    run.add_argument("--fast-conv-forward", default="blas", choices=("blas", "native"),
                     help="CPU training forward pass of the convolutions: blas (default: several times faster on "
                          "small feature maps, equal to float rounding) or native (MegEngine's operator, bit for bit); "
                          "evaluation always uses MegEngine's operator")
    run.add_argument("--dtr", action="store_true",
                     help="dynamic tensor rematerialisation: trade compute for memory (big models/batches on a GPU)")
    run.add_argument("--dtr-threshold", default=None, metavar="SIZE", help="DTR eviction threshold, e.g. 4GB")
    run.add_argument("--eval-every", type=int, default=1, metavar="E", help="evaluate every E epochs (default 1)")
    run.add_argument("--eval-batch-size", type=int, default=100, metavar="N")
    run.add_argument("--log-every", type=int, default=0, metavar="N", help="also log every N steps")
    run.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    run.add_argument("--no-plot", dest="plot", action="store_false", help="do not write curves.png")
    run.add_argument("--json", action="store_true", help="print the result as JSON at the end")
    p.set_defaults(handler=cmd_train)


def _int_list(text: str):
    import argparse

    try:
        return tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def config_from_args(args):
    from ..train import TrainConfig
    from ..weights import pretrained_value

    if not (args.data or args.train_dir):
        raise ValueError("give --data DIR (with train/ and val/, or class folders and --val-split) or --train-dir")
    keys = ("data", "train_dir", "val_dir", "val_split", "input_size", "resize_size", "hflip", "color_jitter",
            "workers", "model", "num_classes", "freeze_stages", "backbone_lr_mult", "epochs", "batch_size", "lr",
            "momentum", "nesterov", "weight_decay", "no_bn_decay", "schedule", "milestones", "gamma",
            "warmup_epochs", "min_lr", "label_smoothing", "steps_per_epoch", "output", "resume", "seed", "device",
            "gpus", "cpu_threads", "fast_conv", "fast_conv_forward", "dtr", "dtr_threshold", "eval_every",
            "eval_batch_size",
            "log_every", "progress", "plot")
    values = {k: getattr(args, k) for k in keys}
    values["crop_scale"] = tuple(args.crop_scale)
    values["pretrained"] = None if args.pretrained is None else pretrained_value(args.pretrained)
    return TrainConfig(**values)


def cmd_train(args) -> int:
    from ..registry import get_model_entry
    from ..train import train

    get_model_entry(args.model)  # unknown model: the usual error first
    result = train(config_from_args(args))
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    elif result.best_path:
        print(f"best model: {result.best_path} (top-1 {100 * result.best_top1:.2f}%, epoch {result.best_epoch}); "
              f"curves: {result.plot_path}")
    return 0
