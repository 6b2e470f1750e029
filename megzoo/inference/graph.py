"""Trace a MegEngine module into a static graph and dump it as a ``.mge`` for MegEngine Lite.

:func:`trace_and_dump` is the one place megzoo turns a module into a graph file: the compiled
path, ``.mge`` export, the layout probe and the benchmarks all go through it. The layout given
here is taken as it is; choosing one for this machine is :mod:`megzoo.inference.layouts`' job.
"""
import contextlib
import os
from typing import List, Sequence, Tuple, Union

import numpy as np

from ..device import move_tensors, quiet_stderr, using_device
from .threads import require_megengine_thread

__all__ = ["INPUT_NAME", "LAYOUTS", "TRACE_DEVICE", "DEFAULT_TOLERANCE", "trace_and_dump", "output_names",
           "read_layout", "check_input_shape", "flatten_outputs"]

PathLike = Union[str, "os.PathLike[str]"]

#: the input variable name in every graph megzoo dumps
INPUT_NAME = "data"
#: internal convolution layouts MegEngine can convert a graph to (inputs and outputs stay NCHW):
#: portable NCHW, x86's channel blocks of 8 (AVX2/AVX-512 kernels), ARM's blocks of 4
LAYOUTS = ("nchw", "nchw88", "nchw44")
#: how far a dumped graph's outputs may be from eager MegEngine's: max |graph - eager| / max |eager|
#: (the export parity check and the layout probe)
DEFAULT_TOLERANCE = 1e-4
TRACE_DEVICE = "xpux"  #: where graphs are traced (Lite later runs them on the CPU it is given)


def output_names(outputs) -> List[str]:
    """``["output"]`` for one output, ``["output0", "output1", ...]`` for a list or tuple, the
    keys for a dict; nested, the parts joined by ``_`` (``output1_0``, ``boxes_0``)."""
    return flatten_outputs(outputs)[1]


def flatten_outputs(outputs) -> Tuple[list, List[str]]:
    """``(tensors, names)``: the tensors of a model's output (a tensor, or lists, tuples and dicts
    of them, nested), in order, with :func:`output_names`' names; anything else is refused."""
    tensors: list = []
    names: List[str] = []

    def walk(value, name: str, top: bool) -> None:
        if isinstance(value, (list, tuple, dict)):
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                label = str(key) if isinstance(value, dict) else f"{'output' if top else ''}{key}"
                walk(item, label if top else f"{name}_{label}", False)
        elif hasattr(value, "shape") and hasattr(value, "dtype"):
            tensors.append(value)
            names.append(name)
        else:
            raise TypeError(f"the model's output {name} is a {type(value).__name__}: megzoo exports outputs "
                            "that are tensors, or lists, tuples and dicts of them")

    walk(outputs, "output", True)
    if len(set(names)) != len(names):  # dict keys that clash with the generated names
        names = [f"output{i}" for i in range(len(names))]
    return tensors, names


def check_traceable(model) -> None:
    """ValueError for what MegEngine's trace would stop at with a C++ assertion, named first: a
    BatchNorm without running statistics (it has nothing to normalise with in inference)."""
    from megengine.module.batchnorm import _BatchNorm

    for name, module in model.named_modules():
        if isinstance(module, _BatchNorm) and (module.running_mean is None or module.running_var is None):
            raise ValueError(f"cannot trace {name or 'the model'} ({type(module).__name__}) for inference: it has no "
                             "running statistics (track_running_stats=False) to normalise with; build it with "
                             "track_running_stats=True and train it, or run it eagerly")


def check_input_shape(model, input_shape: Sequence[int]) -> Tuple[int, ...]:
    """``input_shape`` as ints when it is (N, C, H, W) of positive sizes that ``model`` takes:
    its ``in_channels`` and ``min_input_size`` where it has them (megzoo models do), checked as
    the model's own forward checks an input, so a traced graph (where that check cannot see the
    sizes) and an ONNX export refuse the same shapes with the same words; else ValueError."""
    from ..layers import check_input

    try:
        shape = tuple(int(s) for s in input_shape)
    except (TypeError, ValueError):
        shape = ()
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"input_shape must be (N, C, H, W) of positive sizes, got {input_shape!r}")

    class _Shape:  # what check_input reads of an input
        pass

    probe = _Shape()
    probe.shape = shape
    channels = getattr(model, "in_channels", None)
    min_size = getattr(model, "min_input_size", 1)
    check_input(probe, channels if isinstance(channels, int) else shape[1],
                getattr(model, "model_name", type(model).__name__), min_size if isinstance(min_size, int) else 1)
    return shape


@contextlib.contextmanager
def _on_trace_device(model):
    """Trace on :data:`TRACE_DEVICE`: MegEngine's dump creates the graph's input there, and the
    weights, the input and the constants the trace records must share one device (a model built
    on ``cpux`` fails with "different input comp_nodes"; traced on ``cpu0`` the fusion pass fails).
    Weights elsewhere are moved there for the trace and moved back afterwards."""
    import megengine

    with quiet_stderr():  # the first use of xpux probes CUDA and prints "failed to load cuda" lines
        megengine.tensor(0.0, device=TRACE_DEVICE).numpy()
    moved = move_tensors(list(model.parameters()) + list(model.buffers()), TRACE_DEVICE)
    try:
        with using_device(TRACE_DEVICE):
            yield
    finally:
        for tensor, device in moved:
            tensor._reset(tensor.to(device))


def trace_and_dump(model, input_shape: Sequence[int], file: PathLike, *, fuse: bool = True,
                   layout: str = "nchw", name_outputs: bool = True) -> List[str]:
    """Trace ``model`` (in eval mode; its train/eval state is restored) on a zero input of
    ``input_shape`` (N, C, H, W) and write the static inference graph to ``file``.

    ``fuse``: MegEngine's inference optimisations (BatchNorm folded into the convolutions,
    conv + bias + nonlinearity fused, constants folded). ``layout``: one of :data:`LAYOUTS`, the
    internal layout of the convolutions (needs ``fuse``). Returns the output names
    (:func:`output_names`), which the file's outputs take unless ``name_outputs=False`` (then
    they keep the module path MegEngine gave them, for the ONNX converter's messages)."""
    import megengine
    from megengine.jit import trace

    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if layout != "nchw" and not fuse:
        raise ValueError(f"layout {layout!r} needs the graph optimisations (fuse=True)")
    input_shape = tuple(int(s) for s in input_shape)
    if hasattr(model, "min_input_size") or hasattr(model, "in_channels"):  # a model that says what it takes
        check_input_shape(model, input_shape)
    check_traceable(model)
    require_megengine_thread("tracing a model (megzoo.compile with backend='lite', a .mge export)")
    was_training = model.training
    model.eval()
    _drop_stale_naming_scopes()
    try:
        with _on_trace_device(model):
            names: List[str] = []

            @trace(symbolic=True, capture_as_const=True)
            def forward(data):
                out, names[:] = flatten_outputs(model(data))  # MegEngine's trace returns tensors only
                return out[0] if names == ["output"] else out

            forward(megengine.tensor(np.zeros(input_shape, dtype=np.float32)))
            options = {"enable_fuse_conv_bias_nonlinearity": True} if fuse else {}
            if layout != "nchw":
                options[f"enable_{layout}"] = True
            forward.dump(os.fspath(file), arg_names=[INPUT_NAME], output_names=names if name_outputs else None,
                         optimize_for_inference=fuse, **options)
        return names
    finally:
        _drop_stale_naming_scopes()  # this trace's, when the model raised in it
        model.train(was_training)


def _drop_stale_naming_scopes() -> None:
    """Pop the operator-naming scopes MegEngine left open: its ``Module.__call__`` pushes one per
    module call and pops it only when the call returns, so a forward that raised, anywhere in the
    process before, leaves its modules' names as a prefix of every operator traced later (the
    converter then names ``Cumsum`` "conv.Cumsum"). A trace starts at the top level, where none is open."""
    from megengine.utils.naming import AutoNaming

    while AutoNaming.scopes:
        AutoNaming.pop_scope()


def read_layout(path: PathLike) -> str:
    """The internal convolution layout of a dumped graph, read from the graph itself (the
    ``format`` of its convolution operators): one of :data:`LAYOUTS`, the non-portable one when
    several appear, ``"nchw"`` for a graph without convolutions. For files that come without
    their metadata, so a layout that fails here can still be refused."""
    import warnings

    from megengine.utils.network import Network

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # MegEngine's loader leaves its file open
        network = Network.load(os.fspath(path))
    found = set()
    for opr in network.all_oprs:
        params = getattr(opr, "params", None)
        if "Conv" in type(opr).__name__ and isinstance(params, dict) and params.get("format"):
            found.add(str(params["format"]).lower())
    for layout in LAYOUTS[::-1]:  # nchw44, nchw88 before nchw; "nchw44_dot" counts as nchw44
        if any(f == layout or f.startswith(layout + "_") for f in found):
            return layout
    return "nchw"
