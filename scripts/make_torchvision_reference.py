"""Write tests/fixtures/torchvision_reference.{json,npz}: torchvision's own outputs for
deterministic weights, so megzoo's torchvision conversion is checked against real torchvision
without shipping its large weight files.

For each architecture in tests/torchvision_reference.ARCHS it records the torchvision state-dict
layout (key -> shape) and the logits torchvision computes for ``make_image()`` with the weights of
``make_state_dict(layout)``. The tests rebuild the same weights with numpy, convert them with
megzoo and compare.

Run it (needs torch and torchvision; this machine installs them from its local disk):
    python3.11 -m venv /tmp/tvenv
    /tmp/tvenv/bin/pip install torch==2.14.1 torchvision==0.29.1
    /tmp/tvenv/bin/python scripts/make_torchvision_reference.py
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torchvision

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import torchvision_reference as ref  # noqa: E402


def main() -> None:
    torch.manual_seed(0)
    layouts, logits = {}, {}
    x = torch.from_numpy(ref.torchvision_input(ref.make_image()))
    for arch in ref.ARCHS:
        model = getattr(torchvision.models, arch)(weights=None).eval()
        layout = {k: list(v.shape) for k, v in model.state_dict().items()}
        state = {k: torch.from_numpy(v) for k, v in ref.make_state_dict(layout).items()}
        model.load_state_dict(state, strict=True)
        with torch.no_grad():
            logits[arch] = model(x).numpy()
        layouts[arch] = layout
        print(arch, len(layout), "keys, logits", logits[arch].shape, float(np.abs(logits[arch]).max()))
    out = ROOT / "tests" / "fixtures"
    (out / "torchvision_reference.json").write_text(json.dumps(
        {"torch": torch.__version__, "torchvision": torchvision.__version__, "layouts": layouts}))
    np.savez_compressed(out / "torchvision_reference.npz", **logits)


if __name__ == "__main__":
    main()
