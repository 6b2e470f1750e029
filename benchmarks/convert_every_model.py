"""Every registered model through the graph-to-ONNX converter, checked against eager MegEngine.

    .venv/bin/python benchmarks/convert_every_model.py --json benchmarks/results/convert_every_model.json

The test suite converts the smallest model of each kind (``tests/test_onnx.py``); this script is
the slow proof for all of them. For each name in ``megzoo.list_models()``: random weights
(``megengine.random.seed(0)``), converted with a dynamic batch at ``--size`` pixels through
``megzoo.inference.ort_compiled.onnx_model`` (the path ``compile`` and ``export`` use, the ONNX
checker on), run by ONNX Runtime at batch 1 and 3 on random inputs and compared with the eager
model with ``megzoo.inference.export.check_parity`` (the largest absolute difference over the
largest absolute logit, export's measure). Prints one row per model (parity, seconds to convert, MB of ONNX)
and exits 1 when a model fails to convert or misses ``--tolerance``.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def check_model(name: str, size: int, threads: int) -> dict:
    """Convert ``name`` and compare ONNX Runtime with eager MegEngine at batch 1 and 3."""
    import megengine

    import megzoo
    from megzoo.inference.export import check_parity
    from megzoo.inference.ort import OrtRunner
    from megzoo.inference.ort_compiled import onnx_model

    megengine.random.seed(0)
    model = megzoo.get_model(name)
    model.eval()
    start = time.perf_counter()
    proto = onnx_model(model, (1, 3, size, size), check=True)
    data = proto.SerializeToString()
    seconds = time.perf_counter() - start
    runner = OrtRunner(data, threads=threads)
    inputs = {batch: np.random.RandomState(batch).standard_normal((batch, 3, size, size)).astype("float32")
              for batch in (1, 3)}
    report = check_parity(model, runner.run, inputs, tolerance=float("inf"))  # the rows report; nothing raised
    runner.close()
    parity = {batch: r["rel"] for batch, r in report["inputs"].items()}
    return {"model": name, "parity_batch1": parity[1], "parity_batch3": parity[3], "convert_s": round(seconds, 2),
            "onnx_mb": round(len(data) / 1e6, 1), "nodes": len(proto.graph.node), "error": None}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="", help="comma-separated names (default: every registered model)")
    p.add_argument("--size", type=int, default=32, help="input pixels (the mapping is the point, not the size)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tolerance", type=float, default=1e-4)
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = p.parse_args(argv)

    import megzoo

    names = [n for n in args.models.split(",") if n] or megzoo.list_models()
    rows, failed = [], 0
    print(f"{'model':<20} {'parity b1':>10} {'parity b3':>10} {'convert s':>10} {'ONNX MB':>8} {'nodes':>6}")
    for name in names:
        try:
            row = check_model(name, args.size, args.threads)
        except Exception as exc:  # noqa: BLE001 - one failing model is a row, not the end of the run
            row = {"model": name, "error": f"{type(exc).__name__}: {exc}"}
        rows.append(row)
        if row["error"] or max(row["parity_batch1"], row["parity_batch3"]) >= args.tolerance:
            failed += 1
        if row["error"]:
            print(f"{name:<20} error: {row['error']}")
        else:
            print(f"{name:<20} {row['parity_batch1']:>10.1e} {row['parity_batch3']:>10.1e} {row['convert_s']:>10.1f} "
                  f"{row['onnx_mb']:>8.1f} {row['nodes']:>6}", flush=True)
    if args.json:
        report = {"what": "every registered model converted to ONNX and run by ONNX Runtime against eager MegEngine",
                  "size": args.size, "tolerance": args.tolerance, "date": time.strftime("%Y-%m-%d"),
                  "load_average": list(os.getloadavg()), "rows": rows}
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(f"{len(rows) - failed} of {len(rows)} models within {args.tolerance:g} of the logit scale at batch 1 and 3")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
