"""A ``.mge`` graph file to ONNX, checked against MegEngine Lite running the same file (``megzoo convert``).

:func:`convert_mge` is what mgeconvert's ``convert mge_to_onnx -i m.mge -o m.onnx`` does: the
graph MegEngine dumped (with or without ``optimize_for_inference``) is converted operator by
operator (:func:`megzoo.inference.graph_onnx.mge_to_onnx`), then the ONNX model runs under ONNX
Runtime and the ``.mge`` under MegEngine Lite on a random normal batch at the dumped batch size
and, for a dynamic batch, at a second size; the outputs are compared with export's rule
(:func:`~megzoo.inference.export.check_parity`: max |ONNX - Lite| / max |Lite| at most the
tolerance). Only a file that passed is written, atomically: a failed check or a refusal leaves
nothing (an existing file at the output keeps its content).
"""
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from ..host import atomic_write_bytes
from .graph import DEFAULT_TOLERANCE

__all__ = ["convert_mge", "ConvertReport", "dumped_input_shape"]

PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class ConvertReport:
    """What :func:`convert_mge` wrote: the file, its opset and batch axis, the dumped input shape,
    the parity figures (None without the check), seconds per step."""

    path: Path
    opset: int
    dynamic_batch: bool
    input_shape: Tuple[int, ...]
    output_names: List[str]
    parity: Optional[Dict[str, Any]] = None
    seconds: Dict[str, float] = field(default_factory=dict)


def dumped_input_shape(proto) -> Tuple[int, ...]:
    """The (N, C, H, W) shape the graph was dumped for, as :func:`~megzoo.inference.graph_onnx.mge_to_onnx`
    records it in the model's ``metadata_props`` (``input_shape``)."""
    props = {p.key: p.value for p in proto.metadata_props}
    return tuple(int(v) for v in json.loads(props["input_shape"]))


def convert_mge(source: PathLike, output: PathLike, *, opset: Optional[int] = None, dynamic_batch: bool = True,
                check: bool = True, tolerance: float = DEFAULT_TOLERANCE, threads: Optional[int] = None,
                seed: int = 0) -> ConvertReport:
    """Convert the ``.mge`` at ``source`` to the ONNX model ``output`` (module docstring).
    ``opset``: default :data:`~megzoo.inference.graph_onnx.DEFAULT_OPSET`; ``dynamic_batch``: the
    first axis symbolic (``"N"``), else the dumped batch size. Raises
    :class:`~megzoo.inference.graph_onnx.UnsupportedOperatorError` (an operator without a mapping,
    a blocked layout, an input that is not one float32 NCHW batch), ``ValueError`` (not a
    ``.mge``), or :class:`~megzoo.inference.export.ParityError` (above ``tolerance``), in each
    case before anything is written."""
    from .graph_onnx import mge_to_onnx
    from .ort import onnxruntime_version
    from .threads import require_megengine_thread

    require_megengine_thread("converting a .mge (megzoo convert)", "convert in the main thread")

    source, output = Path(source), Path(output)
    if check and onnxruntime_version() is None:
        raise RuntimeError("the parity check runs the converted file with ONNX Runtime, which is not installed: "
                           "pip install 'onnxruntime>=1.20', or convert without the check (--no-check)")
    seconds: Dict[str, float] = {}
    t0 = time.perf_counter()
    proto = mge_to_onnx(source, dynamic_batch=dynamic_batch, **({} if opset is None else {"opset": opset}))
    seconds["convert"] = time.perf_counter() - t0
    shape = dumped_input_shape(proto)
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    report = ConvertReport(output, opset, dynamic_batch, shape, [o.name for o in proto.graph.output], None, seconds)
    if check:
        t0 = time.perf_counter()
        report.parity = _check_against_lite(source, proto, shape, dynamic_batch, tolerance, threads, seed)
        seconds["parity"] = time.perf_counter() - t0
        proto.metadata_props.add(key="parity_max_rel", value=f"{report.parity['max_rel']:.3g}")
    atomic_write_bytes(output, proto.SerializeToString())
    return report


def _check_against_lite(source: Path, proto, shape, dynamic_batch: bool, tolerance: float, threads: Optional[int],
                        seed: int) -> Dict[str, Any]:
    """:func:`~megzoo.inference.export.check_parity` of the ONNX model (ONNX Runtime) against
    the ``.mge`` (Lite, kernels by heuristic: nothing profiled or cached) on random normal batches."""
    from .backends import load
    from .compiled import default_threads
    from .export import _second_batch, check_parity  # export's second batch size for a dynamic batch
    from .ort import OrtRunner

    threads = threads or default_threads()
    lite = load(source, threads=threads, algo="heuristic")
    onnx = OrtRunner(proto.SerializeToString(), threads)
    try:
        rng = np.random.RandomState(seed)
        batches = [shape[0]] + ([_second_batch(shape[0])] if dynamic_batch else [])
        inputs = {f"random normal batch (N={n})": rng.standard_normal((n,) + tuple(shape[1:])).astype(np.float32)
                  for n in batches}

        def reference(x):
            out = lite(x)
            return out if isinstance(out, list) else [out]

        return check_parity(None, onnx.run, inputs, tolerance, reference=reference, against="Lite")
    finally:
        onnx.close()
