"""Write the PyTorch fixtures of tests/test_serialization.py into tests/fixtures/torch/.

Each ``NAME.pth`` is written by real ``torch.save`` and, when it should load, comes with
``NAME.npz``: the arrays megzoo's reader must return, in file order (bfloat16 as float32).
``malicious.pth`` (a pickled ``os.system`` call) and ``legacy.pth`` (the pre-1.6 non-zip format)
have no ``.npz``: they must be refused. The files are small (well under 300 KB in all).

megzoo itself never imports torch, and its venv (Python 3.10, MegEngine) has none. Run this with
torch in a separate Python 3.11 venv outside the repository::

    python3.11 -m venv /tmp/torchenv
    /tmp/torchenv/bin/pip install torch==2.13.0 numpy   # CPU wheel, from the local wheel cache
    /tmp/torchenv/bin/python scripts/make_torch_fixtures.py

It prints, for each file, the globals its ``data.pkl`` names (what torch actually writes).
As that venv has numpy 2, it also writes ``numpy2_protocol{4,5}.pkl`` (+ ``numpy2.npz``): a
MegEngine-style pickle of arrays as numpy 2 spells it (``numpy._core...``, ``_frombuffer``).
Re-running rewrites every file with the same values (fixed seed); the zip bytes differ a little
(torch stores a random serialization id).
"""
import argparse
import collections
import os
import pickle
import pickletools
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "torch"

#: what the payload of malicious.pth would create in the working directory if it were ever run
MARKER = "megzoo_pwned_marker"


class _RunsCommand:
    """Unpickling this runs a shell command: plain pickle (and torch.load(weights_only=False)) would."""

    def __reduce__(self):
        return os.system, (f"touch {MARKER}",)


class TinyConvNet(nn.Module):
    """Two conv-BN-ReLU stages and a linear head (3 -> 8 -> 16 channels, 10 classes)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock, same attribute names."""

    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + identity)


class TinyResNet(nn.Module):
    """A two-stage ResNet with torchvision's key names (conv1, bn1, layerN.M..., fc), widths 8/16."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(BasicBlock(8, 8))
        self.layer2 = nn.Sequential(BasicBlock(8, 16, stride=2))
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        return self.fc(self.layer2(self.layer1(x)).mean((2, 3)))


def _trained_state_dict(model: nn.Module, steps: int = 2):
    """``model.state_dict()`` after a few SGD steps in train mode (BN running stats and
    ``num_batches_tracked`` move off their defaults), plus the optimizer's state dict."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.train()
    for _ in range(steps):
        loss = model(torch.randn(2, 3, 16, 16)).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.state_dict(), optimizer.state_dict()


def _as_numpy(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.detach()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    if tensor.dtype in (torch.uint16, torch.uint32, torch.uint64):
        return tensor.numpy().copy()
    return tensor.contiguous().numpy().copy()


def fixtures():
    """name -> (object to torch.save, expected {key: array} or None when it must be refused)."""
    torch.manual_seed(0)
    made = {}

    dtypes = {
        "f32": torch.randn(2, 3), "f16": torch.randn(5).half(), "f64": torch.randn(2, 2).double(),
        "bf16": torch.randn(4).bfloat16(), "i64": torch.arange(-3, 3), "i32": torch.arange(4, dtype=torch.int32),
        "i16": torch.tensor([-2, 7], dtype=torch.int16), "i8": torch.tensor([-128, 127], dtype=torch.int8),
        "u8": torch.arange(250, 256, dtype=torch.uint8), "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(3.5), "empty": torch.zeros(0, 3),
    }
    made["dtypes"] = dtypes

    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    made["strided"] = {
        "transposed": base.t(),  # stride (1, 6)
        "slice": base[1:3, 2:5],  # storage_offset 8, stride (6, 1)
        "every_other_column": base[:, ::2],  # stride (6, 2)
        "tail": base.flatten()[19:],  # storage_offset 19
        "expanded": torch.randn(3, 1).expand(3, 4),  # stride (1, 0)
        "channels_last": torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last),
    }

    shared = torch.randn(12)
    made["shared"] = {"whole": shared, "matrix": shared.view(3, 4), "middle": shared[4:8],
                      "column": shared.view(3, 4)[:, 1]}

    convnet_state, optimizer_state = _trained_state_dict(TinyConvNet())
    made["convnet"] = convnet_state
    made["checkpoint"] = ({"epoch": 3, "arch": "tiny_convnet", "best_acc1": 71.5, "state_dict": convnet_state,
                           "optimizer": optimizer_state}, convnet_state)
    made["resnet_tiny"], _ = _trained_state_dict(TinyResNet())

    made["new_forms"] = {  # uint16: UntypedStorage + _rebuild_tensor_v3; a Parameter: _rebuild_parameter
        "u16": torch.tensor([0, 1, 65535], dtype=torch.int32).to(torch.uint16),
        "param": nn.Parameter(torch.randn(2, 2)),
    }
    made["malicious"] = ({"weight": torch.randn(2), "payload": _RunsCommand()}, None)
    made["legacy"] = ({"weight": torch.randn(2)}, None)

    result = {}
    for name, value in made.items():
        obj, expected = value if isinstance(value, tuple) else (value, value)
        if expected is not None:
            expected = collections.OrderedDict((k, _as_numpy(t)) for k, t in expected.items())
        result[name] = (obj, expected)
    return result


def globals_of(path: Path):
    """The globals named by the pickle of a ``.pth`` zip archive, in order of first use."""
    with zipfile.ZipFile(path) as archive:
        data_pkl = next(n for n in archive.namelist() if n.endswith("/data.pkl"))
        found = []
        for opcode, arg, _ in pickletools.genops(archive.read(data_pkl)):
            if opcode.name == "GLOBAL" and arg.replace(" ", ".") not in found:
                found.append(arg.replace(" ", "."))
        return found


def write_numpy2_pickles(out: Path):
    """A checkpoint as ``megengine.save`` would write it under numpy 2, in pickle protocols 4 and 5."""
    rng = np.random.default_rng(0)
    state = collections.OrderedDict([
        ("conv.weight", rng.standard_normal((4, 3, 3, 3)).astype(np.float32)),
        ("bn.running_var", rng.random(4).astype(np.float16)), ("steps", np.arange(3, dtype=np.int64)),
        ("transposed", np.arange(6.0).reshape(2, 3).T), ("flag", np.array([True, False])),
    ])
    checkpoint = {"state_dict": state, "epoch": np.int64(3), "lr": 0.1}
    for protocol in (4, 5):
        path = out / f"numpy2_protocol{protocol}.pkl"
        path.write_bytes(pickle.dumps(checkpoint, protocol=protocol))
        print(f"{path.name:22s} {path.stat().st_size:7d} B  numpy {np.__version__}")
    np.savez(out / "numpy2.npz", **state)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"output folder (default {OUT})")
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    for name, (obj, expected) in fixtures().items():
        pth = out / f"{name}.pth"
        torch.save(obj, pth, _use_new_zipfile_serialization=name != "legacy")
        if expected is not None:
            np.savez(out / f"{name}.npz", **expected)
            loaded = torch.load(pth, weights_only=True)  # torch's own reading agrees with the .npz
            loaded = loaded.get("state_dict", loaded)
            assert list(loaded) == list(expected), name
            for key, array in expected.items():
                np.testing.assert_array_equal(_as_numpy(loaded[key]), array, err_msg=f"{name}:{key}")
        forms = ", ".join(globals_of(pth)) if zipfile.is_zipfile(pth) else "legacy non-zip format"
        print(f"{pth.name:22s} {pth.stat().st_size:7d} B  {forms}")
    write_numpy2_pickles(out)
    with zipfile.ZipFile(out / "shared.pth") as archive:
        storages = [n for n in archive.namelist() if "/data/" in n]
    assert len(storages) == 1, f"shared.pth should hold one storage, has {storages}"
    total = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    print(f"total {total} B in {out}")


if __name__ == "__main__":
    main()
