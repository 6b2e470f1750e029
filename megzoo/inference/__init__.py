"""Fast CPU inference: trace a model into a static graph, optimise it, run it with MegEngine Lite.

    compiled = megzoo.compile(model, input_shape=(16, 3, 224, 224))
    logits = compiled(batch)            # numpy (N, 3, H, W) float32 in, numpy logits out

What :func:`compile` does (see ``docs/performance.md``):

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

* :mod:`~megzoo.inference.graph`: trace a module and dump its graph;
* :mod:`~megzoo.inference.layouts`: which convolution layouts may run here (probe, verdicts, guard);
* :mod:`~megzoo.inference.lite`: the Lite runtime (loadable alone, imports no other megzoo module);
* :mod:`~megzoo.inference.compiled`: :func:`compile`, :func:`load`, :class:`CompiledModel`;
* :mod:`~megzoo.inference.export`: ``.mge`` export with metadata and the parity check.
"""
from .compiled import (CompiledModel, CompileInfo, algo_cache_dir, algo_cache_file, compile, default_threads,
                       dump_graph, load, metadata_path, read_metadata)
from .export import ExportReport, ParityError, check_parity, export, make_test_image
from .graph import DEFAULT_TOLERANCE, INPUT_NAME, LAYOUTS
from .layouts import (LayoutUnavailableError, best_layout, layout_verdict, probe_record_path, require_layout,
                      resolve_layout)

__all__ = ["compile", "CompiledModel", "CompileInfo", "load", "export", "check_parity", "ParityError", "ExportReport",
           "default_threads", "algo_cache_dir", "algo_cache_file", "dump_graph", "best_layout", "layout_verdict",
           "require_layout", "resolve_layout", "probe_record_path", "LayoutUnavailableError", "metadata_path", "read_metadata",
           "make_test_image", "INPUT_NAME", "LAYOUTS", "DEFAULT_TOLERANCE"]
