"""The trainer without its CPU engine: with ``megzoo.train.cpu_engine`` impossible to import (as if
the package were removed), a ResNet-18 trains on MegEngine's own operators, its log says the
engine is off and why, and it ends where a run with the engine switched off (``fast_conv="off"``)
ends, in the same process."""
import json
import subprocess
import sys

SCRIPT = r'''
import json, sys
sys.modules["megzoo.train.cpu_engine"] = None  # any import of the engine now fails
import numpy as np
from megzoo.train import Trainer, TrainConfig

def run(out, fast_conv):
    config = TrainConfig(model="resnet18", data=sys.argv[1], output=out, input_size=16, resize_size=16,
                         crop_scale=(0.6, 1.0), hflip=0.0, epochs=1, batch_size=4, steps_per_epoch=2, lr=0.01,
                         warmup_epochs=0, workers=0, progress=False, plot=False, seed=3, device="cpu",
                         cpu_threads=1, fast_conv=fast_conv)
    trainer = Trainer(config)
    result = trainer.fit()
    trainer.close()
    return trainer, result

blocked, result = run(sys.argv[2] + "/blocked", "auto")
own, _ = run(sys.argv[2] + "/own", "off")
a = {k: np.asarray(v) for k, v in blocked.model.state_dict().items()}
b = {k: np.asarray(v) for k, v in own.model.state_dict().items()}
print(json.dumps({
    "engine_modules": sorted(n for n in sys.modules if n.startswith("megzoo.train.cpu_engine.")),
    "fast_conv": blocked.fast_conv, "epochs": result.epochs, "loss": blocked.history[-1]["train_loss"],
    "own_loss": own.history[-1]["train_loss"], "describe": blocked.describe().splitlines()[-1],
    "same_keys": sorted(a) == sorted(b),
    "max_difference": max(float(np.abs(a[k] - b[k]).max()) for k in a if a[k].dtype.kind == "f"),
}))
'''


def test_training_runs_with_the_cpu_engine_unimportable(shapes, tmp_path):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, shapes, str(tmp_path)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["engine_modules"] == [] and report["fast_conv"] is None and report["epochs"] == 1
    assert "fast conv backward off (not installed), " in report["describe"], report["describe"]
    assert report["same_keys"] and report["max_difference"] <= 1e-6, report
    assert abs(report["loss"] - report["own_loss"]) <= 1e-6 * abs(report["own_loss"])
    log = (tmp_path / "blocked" / "log.txt").read_text()
    assert "fast conv backward off (not installed), " in log
