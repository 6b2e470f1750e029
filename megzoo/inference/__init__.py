"""Fast CPU inference: a model compiled for ONNX Runtime or MegEngine Lite, exported as ``.onnx`` or ``.mge``.

    compiled = megzoo.compile(model, input_shape=(16, 3, 224, 224))
    logits = compiled(batch)            # numpy (N, 3, H, W) float32 in, numpy logits out

``backend="auto"`` (default) runs the faster of the two on this machine, measured once
(:mod:`~megzoo.inference.backends`). The ONNX Runtime backend traces the module and converts its
graph to ONNX in memory, operator by operator (:mod:`~megzoo.inference.graph_onnx`, BatchNorm
folded), and runs it with every graph optimisation of ONNX Runtime. What the Lite backend does
(see ``docs/performance.md``):

1. traces ``model.forward`` in eval mode with ``megengine.jit.trace(symbolic=True,
   capture_as_const=True)``: the weights become constants of one static graph;
2. dumps that graph with MegEngine's inference optimisations: BatchNorm folded into the
   convolution weights, convolution + bias + ReLU fused into one ``ConvBias`` operator,
   constant folding. With ``layout="auto"`` the convolutions are converted to NCHW88 on x86
   with AVX2 where that layout passes its one-time probe on this machine (:func:`best_layout`),
   else they stay NCHW;
3. loads the ``.mge`` into MegEngine Lite networks with ``threads`` worker threads, weights
   pre-processed once for the chosen kernels, and the convolution algorithms chosen by
   profiling, kept in a persistent cache under ``$MEGZOO_HOME/algo_cache/`` per machine.

The batch size is dynamic; a new spatial size or channel count compiles another graph (the last
``max_shapes`` are kept). The compiled model is a snapshot of the weights.

The modules, one job each:

* :mod:`~megzoo.inference.backends`: :func:`compile`, :func:`load`, what ``backend="auto"`` means here;
  its ``base`` (the protocol a backend implements and :class:`CompiledModelBase`, the compiled
  model every backend returns), ``registry`` (:func:`register_backend`, :func:`get_backend`,
  :func:`backend_names`) and one module per runtime (``lite``, ``onnxruntime``); docs/backends.md;
* :mod:`~megzoo.inference.graph`: trace a module and dump its graph;
* :mod:`~megzoo.inference.layouts`: which convolution layouts may run here (probe, verdicts, guard);
* :mod:`~megzoo.inference.lite`: the Lite runtime (loadable alone, imports no other megzoo module);
* :mod:`~megzoo.inference.compiled`: :class:`LiteCompiledModel` (``CompiledModel``), Lite's compiled model;
* :mod:`~megzoo.inference.graph_onnx`: any traced module or ``.mge`` graph as an ONNX model (one
  mapping per MegEngine operator; int8 graphs as QDQ);
* :mod:`~megzoo.inference.mge_convert`: a ``.mge`` file to a checked ``.onnx`` (``megzoo convert``);
* :mod:`~megzoo.inference.ort`: the ONNX Runtime runtime (loadable alone, imports no other megzoo module);
* :mod:`~megzoo.inference.ort_compiled`: :class:`OrtCompiledModel`, ONNX Runtime's compiled model;
* :mod:`~megzoo.inference.export`: ``.mge`` and ``.onnx`` export with metadata and the parity check;
* :mod:`~megzoo.inference.model_files`: what a file given to :func:`load` is, by its first bytes;
* :mod:`~megzoo.inference.threads`: the thread MegEngine runs in, a clear error in the others;

Threads: compile (and export) in the main thread; a compiled model may be called from any thread.

``onnx`` and ``onnxruntime`` are imported only when an ONNX path runs.
"""
from .backends import (BACKENDS, Backend, BackendUnavailableError, BenchMode, backend_names, backend_record_path,
                       best_backend, compile, get_backend, load, register_backend, resolve_backend, unregister_backend)
from .backends.base import CompiledModelBase, CompileInfo, default_threads, metadata_path, read_metadata
from .compiled import CompiledModel, LiteCompiledModel, algo_cache_dir, algo_cache_file, dump_graph
from .graph_onnx import UnsupportedModuleError, UnsupportedOperatorError
from .ort_compiled import OrtCompiledModel
from .export import ExportReport, ParityError, check_parity, export, make_test_image
from .graph import DEFAULT_TOLERANCE, INPUT_NAME, LAYOUTS, check_input_shape
from .layouts import (LayoutUnavailableError, best_layout, layout_verdict, probe_record_path, require_layout,
                      resolve_layout)
from .threads import MegEngineThreadError

__all__ = ["compile", "CompiledModelBase", "CompiledModel", "LiteCompiledModel", "OrtCompiledModel", "BACKENDS",
           "best_backend", "resolve_backend", "backend_record_path", "BackendUnavailableError", "Backend", "BenchMode",
           "register_backend", "unregister_backend", "get_backend", "backend_names", "UnsupportedModuleError",
           "UnsupportedOperatorError", "CompileInfo", "load", "export", "check_parity", "ParityError", "ExportReport",
           "default_threads", "algo_cache_dir", "algo_cache_file", "dump_graph", "best_layout", "layout_verdict",
           "require_layout", "resolve_layout", "probe_record_path", "LayoutUnavailableError", "metadata_path",
           "read_metadata", "make_test_image", "INPUT_NAME", "LAYOUTS", "DEFAULT_TOLERANCE", "MegEngineThreadError",
           "check_input_shape"]
