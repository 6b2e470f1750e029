"""The measured int8 limit of ``megzoo benchmark`` (``megzoo.benchmark.measure_int8_peak``): its loop
on this CPU, its error without a compiler, the machine record, each int8 row's ``int8_fraction`` and
the table's int8 limit and ``% int8`` column."""
import re
import shutil
from pathlib import Path

import pytest

from megzoo import benchmark
from megzoo.benchmark import RESULT_KEYS, format_table, measure_int8_peak

NO_CC = {"gmacs": None, "error": "no C compiler (cc or gcc) on PATH"}


def expected_instruction() -> str:
    """What the loop runs here, from the kernel's CPU flags (``/proc/cpuinfo``)."""
    line = next(x for x in Path("/proc/cpuinfo").read_text().splitlines() if x.startswith("flags"))
    flags = set(line.split(":", 1)[1].split())
    if "avx512_vnni" in flags:
        return "vpdpbusd zmm"
    if "avx_vnni" in flags:
        return "vpdpbusd ymm (AVX-VNNI)"
    return "vpmaddubsw+vpmaddwd zmm" if "avx512bw" in flags else "vpmaddubsw+vpmaddwd ymm"


def test_int8_limit_without_a_compiler(monkeypatch):
    result = measure_int8_peak(1, repeats=1, compiler="/nonexistent/cc")
    assert set(result) == {"gmacs", "error"} and result["gmacs"] is None
    assert result["error"].startswith("cannot run /nonexistent/cc: ")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert measure_int8_peak(1, repeats=1) == NO_CC


def test_int8_limit_refuses_counts_below_one():
    with pytest.raises(ValueError, match=re.escape("threads, iters and repeats must be integers of at least 1, "
                                                   "got threads=0, iters=1000, repeats=1")):
        measure_int8_peak(0, repeats=1, iters=1000)
    with pytest.raises(ValueError, match=re.escape("got threads=1, iters=1000, repeats=0")):
        measure_int8_peak(1, repeats=0, iters=1000)


def fake_compiler(tmp_path, body: str) -> str:
    """A ``cc`` that runs ``body`` (a shell script; ``$out`` is its ``-o`` path)."""
    cc = tmp_path / "cc"
    cc.write_text('#!/bin/sh\nfor a; do out="$a"; done\n' + body)  # the last argument is the -o path
    cc.chmod(0o755)
    return str(cc)


def test_int8_limit_says_when_the_compiler_or_the_loop_fails(tmp_path):
    cc = fake_compiler(tmp_path, "echo 'loop.c:1: error: one' >&2\necho 'cc: error: unknown flag' >&2\nexit 1\n")
    assert measure_int8_peak(1, repeats=1, compiler=cc) == {"gmacs": None,
                                                            "error": f"{cc} failed: cc: error: unknown flag"}
    cc = fake_compiler(tmp_path, "printf '#!/bin/sh\\necho 12.5 only\\n' > \"$out\"\nchmod +x \"$out\"\n")
    assert measure_int8_peak(1, repeats=1, compiler=cc) == {
        "gmacs": None, "error": "the int8 loop failed: exit status 0, printed '12.5 only'"}
    cc = fake_compiler(tmp_path, "printf '#!/bin/sh\\necho 12.5 7 vpdpbusd zmm\\nexit 3\\n' > \"$out\"\n"
                                 "chmod +x \"$out\"\n")
    assert measure_int8_peak(1, repeats=1, compiler=cc) == {
        "gmacs": None, "error": "the int8 loop failed: exit status 3, printed '12.5 7 vpdpbusd zmm'"}
    cc = fake_compiler(tmp_path, "printf '#!/bin/sh\\necho 12.5 7 vpdpbusd zmm\\n' > \"$out\"\nchmod +x \"$out\"\n")
    assert measure_int8_peak(3, repeats=2, compiler=cc) == {
        "gmacs": 12.5, "runs": [12.5, 12.5], "instruction": "vpdpbusd zmm", "threads": 3,
        "how": "3 threads x 12 independent vpdpbusd zmm accumulator chains, best of 2"}


def test_int8_loop_runs_here_with_this_cpus_instruction():
    result = measure_int8_peak(2, repeats=1, iters=2_000_000)
    instruction = expected_instruction()
    assert result == {"gmacs": result["runs"][0], "runs": result["runs"], "instruction": instruction, "threads": 2,
                      "how": f"2 threads x 12 independent {instruction} accumulator chains, best of 1"}
    assert len(result["runs"]) == 1 and result["gmacs"] > 0


def test_machine_record_keeps_the_int8_limit_beside_the_fma_limit(monkeypatch):
    fma = {"gflops": 90.0, "runs": [90.0], "lanes": 8, "threads": 2, "how": "2 threads x 12 FMA"}
    int8 = {"gmacs": 180.5, "runs": [180.5], "instruction": "vpmaddubsw+vpmaddwd ymm", "threads": 2, "how": "x"}
    calls = []
    monkeypatch.setattr(benchmark, "measure_fma_peak", lambda threads: calls.append(("fma", threads)) or fma)
    monkeypatch.setattr(benchmark, "measure_int8_peak", lambda threads: calls.append(("int8", threads)) or int8)

    machine = benchmark._measured_machine(2, None, True)
    assert (machine["peak_gflops"], machine["fma_loop"]) == (90.0, fma)
    assert (machine["int8_peak_gmacs"], machine["int8_loop"]) == (180.5, int8)
    assert calls == [("fma", 2), ("int8", 2)]
    # --peak-gflops replaces the fp32 limit only: the int8 limit is still measured
    machine = benchmark._measured_machine(2, 50.0, True)
    assert "fma_loop" not in machine and (machine["peak_gflops"], machine["int8_peak_gmacs"]) == (50.0, 180.5)
    machine = benchmark._measured_machine(2, 50.0, False)
    assert machine["int8_peak_gmacs"] is None and "int8_loop" not in machine
    monkeypatch.setattr(benchmark, "measure_int8_peak", lambda threads: NO_CC)
    machine = benchmark._measured_machine(2, None, True)
    assert machine["int8_peak_gmacs"] is None and machine["int8_loop"] == NO_CC


def row(mode, threads=1):
    return {"model": "resnet18", "batch": 4, "input_size": 224, "threads": threads, "mode": mode,
            "images_per_s": 40.0, "latency_p50_ms": 100.0, "latency_p90_ms": 110.0, "peak_rss_mib": 300.0,
            "repeats": 5, "precision": "int8"}


def test_int8_rows_get_their_fraction_of_the_int8_limit():
    machine = {"peak_gflops": 100.0, "int8_peak_gmacs": 200.0, "cores": 2}
    done = benchmark._finish_row(row("onnxruntime_int8"), 1.5, machine, 2)
    # 1.5 GMACs x 40 images/s = 60 G MAC/s of 200 x 1/2 (1 of the 2 threads the limit was measured on)
    assert done == {"model": "resnet18", "batch": 4, "input_size": 224, "threads": 1, "mode": "onnxruntime_int8",
                    "images_per_s": 40.0, "latency_p50_ms": 100.0, "latency_p90_ms": 110.0, "peak_rss_mib": 300.0,
                    "gmacs": 1.5, "gflops": 120.0, "peak_fraction": 2.4, "int8_fraction": 0.6, "repeats": 5,
                    "error": None}
    assert tuple(done) == RESULT_KEYS
    # a row without its thread count uses the run's: 60 of 200 x 2/2
    assert benchmark._finish_row(row("lite_int8", threads=None), 1.5, machine, 2)["int8_fraction"] == 0.3


def test_other_rows_and_rows_without_a_limit_have_no_int8_fraction():
    machine = {"peak_gflops": 100.0, "int8_peak_gmacs": 200.0, "cores": 2}
    fp32 = benchmark._finish_row(row("onnxruntime"), 1.5, machine, 2)
    assert fp32["int8_fraction"] is None and fp32["peak_fraction"] == 2.4
    unmeasured = dict(machine, int8_peak_gmacs=None)
    assert benchmark._finish_row(row("onnxruntime_int8"), 1.5, unmeasured, 2)["int8_fraction"] is None
    failed = dict(row("onnxruntime_int8"), images_per_s=None, error="boom")
    assert benchmark._finish_row(failed, 1.5, machine, 2)["int8_fraction"] is None


def report(**machine):
    how = "2 threads x 12 independent vpmaddubsw+vpmaddwd ymm accumulator chains, best of 5"
    base = {"cpu": "AMD EPYC", "cpu_family": "25", "cores": 2, "flop_per_cycle": None, "peak_gflops": 95.3,
            "isa": "measured: 2 threads x 12 independent 256-bit FMA chains, best of 5", "int8_peak_gmacs": 190.64,
            "int8_loop": {"gmacs": 190.64, "runs": [190.64], "instruction": "vpmaddubsw+vpmaddwd ymm", "threads": 2,
                          "how": how},
            "load_average": [0.5, 0.25, 0.0]}
    common = {"model": "resnet18", "batch": 1, "threads": 2, "latency_p90_ms": 21.0, "peak_rss_mib": 250.0}
    rows = [dict(common, mode="onnxruntime", images_per_s=50.0, latency_p50_ms=20.0, peak_fraction=0.25,
                 int8_fraction=None, error=None),
            dict(common, mode="onnxruntime_int8", images_per_s=80.0, latency_p50_ms=12.5, peak_fraction=0.4,
                 int8_fraction=0.123, error=None),
            dict(common, mode="lite_int8", error="quantize failed")]
    return {"machine": {**base, **machine}, "results": rows, "compile": [], "int8": []}


def test_table_states_the_int8_limit_and_shows_int8_rows_percent_of_it():
    assert format_table(report()).splitlines() == [
        "machine: AMD EPYC (family 25), 2 threads; fp32 limit 95.3 GFLOP/s (measured: 2 threads x 12 independent "
        "256-bit FMA chains, best of 5); int8 limit 190.6 G MAC/s (measured: 2 threads x 12 independent "
        "vpmaddubsw+vpmaddwd ymm accumulator chains, best of 5); load average at start [0.5, 0.25, 0.0]",
        "% peak = GMACs x 2 x images/s / fp32 limit of the threads used (eager uses 1 thread; int8 rows too); "
        "% int8 (int8 rows) = GMACs x images/s / int8 limit of the threads used",
        "model      batch mode                thr    img/s    p50 ms    p90 ms  peak MiB  % peak  % int8",
        "resnet18       1 onnxruntime           2    50.00      20.0      21.0       250   25.0%",
        "resnet18       1 onnxruntime_int8      2    80.00      12.5      21.0       250   40.0%   12.3%",
        "resnet18       1 lite_int8           error: quantize failed"]


def test_table_says_why_the_int8_limit_is_missing():
    failed = format_table(report(int8_peak_gmacs=None, int8_loop=NO_CC)).splitlines()[0]
    assert failed.endswith("best of 5); int8 limit not measured: no C compiler (cc or gcc) on PATH; "
                           "load average at start [0.5, 0.25, 0.0]")
    unmeasured = format_table(report(int8_peak_gmacs=None, int8_loop=None)).splitlines()[0]
    assert unmeasured.endswith("best of 5); load average at start [0.5, 0.25, 0.0]")
    given = format_table(report(int8_peak_gmacs=300.0, int8_loop=None)).splitlines()[0]
    assert "; int8 limit 300.0 G MAC/s (given); load" in given
