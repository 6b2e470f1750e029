"""benchmarks/bench_inference.py's pure steps: rounds merged into medians and spread, the load rule
(disturbed rounds, --wait-quiet), which rows are int8/bf16, the summary's bf16 refusal and its cell."""
import argparse
import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_inference.py"
REFUSAL = ("worker exited with 1: ValueError: precision='bf16' needs a CPU with BF16 arithmetic (avx512_bf16 or "
           "amx_bf16); this CPU (AMD EPYC) has none: use precision='fp32' (the default)")


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_inference_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def row(mode, ips, **extra):
    return {"model": "resnet18", "batch": 1, "mode": mode, "threads": 2, "images_per_s": ips,
            "latency_p50_ms": 1000 / ips if ips else None, "latency_p90_ms": 1100 / ips if ips else None,
            "peak_rss_mib": 800.0, "repeats": 5, "gmacs": 1.8, "error": None, **extra}


def test_spread_is_median_min_max_and_range_over_median(bench):
    assert bench.spread([10.0, 12.0, 11.0]) == {"median": 11.0, "min": 10.0, "max": 12.0,
                                                "spread_pct": 100 * 2.0 / 11.0, "rounds": 3}
    assert bench.spread([4.0, 6.0]) == {"median": 5.0, "min": 4.0, "max": 6.0, "spread_pct": 40.0, "rounds": 2}
    assert bench.spread([]) is None


def test_a_round_is_disturbed_above_half_a_core_of_load(bench):
    assert bench.QUIET_LOAD == 0.5
    assert [bench.is_disturbed(v) for v in (0.0, 0.5, 0.51, 2.0)] == [False, False, True, True]


class FakeLoad:
    """os.getloadavg and time.sleep stand-ins: the 1-minute loads in turn (the last repeats), the sleeps kept."""

    def __init__(self, *loads):
        self.loads, self.sleeps = list(loads), []

    def loadavg(self):
        value = self.loads.pop(0) if len(self.loads) > 1 else self.loads[0]
        return (value, 0.25, 0.125)

    def sleep(self, seconds):
        self.sleeps.append(seconds)


def test_wait_quiet_polls_every_5_s_until_the_load_falls(bench):
    fake, said = FakeLoad(1.2, 0.9, 0.4), []
    assert bench.wait_quiet(60, said.append, fake.loadavg, fake.sleep) == 10.0
    assert fake.sleeps == [5.0, 5.0]
    assert said == ["waiting up to 60 s for the 1-minute load (1.20) to fall to 0.5 ...", "... load 0.40 after 10 s"]


def test_wait_quiet_gives_up_after_its_seconds(bench):
    fake, said = FakeLoad(2.0), []
    assert bench.wait_quiet(12, said.append, fake.loadavg, fake.sleep) == 12.0
    assert fake.sleeps == [5.0, 5.0, 2.0]
    assert said[-1] == "... load 2.00 after 12 s: running anyway"


def test_wait_quiet_does_not_wait_when_quiet_or_told_not_to(bench):
    for loads, max_s in (((0.5,), 60), ((3.0,), 0)):
        fake, said = FakeLoad(*loads), []
        assert bench.wait_quiet(max_s, said.append, fake.loadavg, fake.sleep) == 0.0
        assert (fake.sleeps, said) == ([], [])


def test_start_round_records_the_load_after_waiting(bench):
    fake, said = FakeLoad(1.0, 0.25), []
    record = bench.start_round(1, 30, said.append, fake.loadavg, fake.sleep)
    assert record == {"round": 1, "load_average_start": [0.25, 0.25, 0.125], "load_1min": 0.25,
                      "disturbed": False, "waited_s": 5.0}
    assert said[-1] == "round 1: 1-minute load 0.25 at the start"
    fake = FakeLoad(0.75, 0.625)
    record = bench.start_round(2, 30, said.append, fake.loadavg, fake.sleep)
    assert record == {"round": 2, "load_average_start": [0.625, 0.25, 0.125], "load_1min": 0.625,
                      "disturbed": True, "waited_s": 30.0}
    assert said[-1] == "round 2: 1-minute load 0.62 at the start (above 0.5: marked disturbed)"


def rounds_of(*per_round):
    """Round records: round n disturbed when its load is above 0.5; ``per_round``: (load, rows)."""
    return [{"round": n, "load_1min": load, "disturbed": load > 0.5, "results": rows}
            for n, (load, rows) in enumerate(per_round, 1)]


def test_merge_rounds_takes_medians_and_keeps_every_round(bench):
    rounds = rounds_of((0.25, [row("onnxruntime", 40.0), row("openvino_bf16", None, error=REFUSAL)]),
                       (0.75, [row("onnxruntime", 50.0, peak_rss_mib=900.0),
                               row("openvino_bf16", None, error=REFUSAL)]),
                       (0.25, [row("onnxruntime", 45.0), row("openvino_bf16", None, error=REFUSAL)]))
    ort, bf16 = bench.merge_rounds(rounds)
    assert (ort["images_per_s"], ort["latency_p50_ms"], ort["peak_rss_mib"], ort["repeats"]) == (45.0, 1000 / 45.0,
                                                                                                 900.0, 15)
    assert ort["gflops"] == 1.8 * 2 * 45.0
    assert ort["spread"] == {"median": 45.0, "min": 40.0, "max": 50.0, "spread_pct": 100 * 10 / 45.0, "rounds": 3}
    assert ort["per_round"] == [{"round": 1, "images_per_s": 40.0, "disturbed": False, "error": None},
                                {"round": 2, "images_per_s": 50.0, "disturbed": True, "error": None},
                                {"round": 3, "images_per_s": 45.0, "disturbed": False, "error": None}]
    assert ort["disturbed_rounds"] == [2]
    assert (bf16["error"], bf16["spread"], bf16["images_per_s"]) == (REFUSAL, None, None)


def test_merge_rounds_uses_the_rounds_that_gave_a_figure(bench):
    rounds = rounds_of((0.25, [row("torch_bf16", None, error="timed out after 60 s")]),
                       (0.25, [row("torch_bf16", 0.75)]))
    (merged,) = bench.merge_rounds(rounds)
    assert (merged["error"], merged["images_per_s"], merged["spread"]["rounds"]) == (None, 0.75, 1)
    assert merged["per_round"][0]["error"] == "timed out after 60 s"


def test_short_reason_is_the_refusal_without_status_class_or_fix(bench):
    assert bench.short_reason(REFUSAL) == ("precision='bf16' needs a CPU with BF16 arithmetic "
                                           "(avx512_bf16 or amx_bf16)")
    assert bench.short_reason("exit 1: RuntimeError: boom") == "boom"
    assert bench.short_reason("timed out after 60 s") == "timed out after 60 s"


def test_the_kinds_of_rows(bench):
    assert [bench.torch_precision(m) for m in ("torch_int8_jit", "torch_bf16", "torch_bf16_jit", "torch_jit",
                                               "torch_jit_channels_last", "torch_eager")] == [
        "int8", "bf16", "bf16", "fp32", "fp32", "fp32"]
    assert [bench.is_int8(m) for m in ("onnxruntime_int8", "openvino_int8", "lite_int8", "torch_int8",
                                       "onnxruntime", "openvino_bf16", "torch_bf16")] == [
        True, True, True, True, False, False, False]


def test_int8_fraction_is_macs_per_second_over_the_limit_of_the_threads_used(bench):
    assert bench.int8_fraction(row("onnxruntime_int8", 20.0), 84.0, 2) == 1.8 * 20.0 / 84.0
    assert bench.int8_fraction(row("onnxruntime_int8", 20.0, threads=1), 84.0, 2) == 1.8 * 20.0 / 42.0
    assert bench.int8_fraction(row("onnxruntime_int8", 20.0), None, 2) is None
    assert bench.int8_fraction(row("onnxruntime_int8", None, error="x"), 84.0, 2) is None
    assert bench.best_limit({"gmacs": 80.0}, {"gmacs": 84.0}, "gmacs") == 84.0
    assert bench.best_limit({"gmacs": None, "error": "no C compiler"}, None, "gmacs") is None


def test_summary_sets_bf16_apart_and_prints_the_refusal(bench):
    rows = [row("onnxruntime", 48.0), row("openvino_bf16", None, error=REFUSAL), row("torch_channels_last", 38.0),
            row("torch_bf16", 0.5), row("torch_bf16_jit", 0.75), row("torch_int8", 70.0)]
    for r in rows:
        r["spread"] = r["images_per_s"] and bench.spread([r["images_per_s"]])
    (s,) = bench.summarize(rows, ["resnet18"], [1], "onnxruntime")
    assert (s["torch_best"], s["torch_best_mode"]) == (38.0, "channels_last")
    assert (s["torch_bf16_best"], s["torch_bf16_best_mode"]) == (0.75, "bf16_jit")
    assert (s["torch_int8_best"], s["torch_int8_best_mode"]) == (70.0, "int8")
    assert (s["megzoo_openvino_bf16"], s["openvino_bf16_error"]) == (None, REFUSAL)
    assert s["ratio_openvino_bf16_vs_torch_bf16_best"] is None
    assert s["spread_pct"] == {"onnxruntime": 0.0, "torch_channels_last": 0.0, "torch_bf16": 0.0,
                               "torch_bf16_jit": 0.0, "torch_int8": 0.0}
    args = argparse.Namespace(poller_check=False, int8=False, openvino=False, bf16=True)
    assert bench.summary_cells(s, args)[-4:] == ["precision='bf16' needs a CPU with BF16 arithmetic "
                                                 "(avx512_bf16 or amx_bf16)", "-", "0.8 (bf16_jit)", "-"]


def test_summary_ratios_of_openvino_bf16(bench):
    rows = [row("onnxruntime", 40.0), row("openvino_bf16", 60.0), row("torch_bf16", 20.0)]
    for r in rows:
        r["spread"] = bench.spread([r["images_per_s"]])
    (s,) = bench.summarize(rows, ["resnet18"], [1], "onnxruntime")
    assert (s["ratio_openvino_bf16_vs_default_fp32"], s["ratio_openvino_bf16_vs_torch_bf16_best"]) == (1.5, 3.0)


def test_rounds_table_marks_disturbed_rounds_with_a_footnote(bench):
    rounds = rounds_of((0.25, [row("onnxruntime", 40.0)]), (0.75, [row("onnxruntime", 50.0)]))
    assert bench.rounds_table(bench.merge_rounds(rounds), rounds).splitlines() == [
        "rounds (images/s): 1-minute load at the start: round 1 0.25, round 2 0.75*",
        "model      batch mode                  median         min-max  spread    round 1   round 2",
        "resnet18       1 onnxruntime            45.00   40.00-50.00     22.2%      40.00    50.00*",
        "* the round started with the 1-minute load above 0.5 (other work, or this benchmark's previous round: "
        "see --wait-quiet); its figures may be low"]


def test_chosen_modes_add_bf16_and_the_default_backend(bench):
    args = bench.parse_args(["--no-eager", "--no-lite", "--bf16", "--torch-python", "py", "--torch-modes", "jit"])
    assert bench.chosen_modes(args, "openvino") == (("onnxruntime", "ort_alone", "openvino_bf16", "openvino"),
                                                    ["jit", "bf16", "bf16_jit"])
    assert bench.chosen_modes(args, "lite")[0] == ("onnxruntime", "ort_alone", "openvino_bf16")


@pytest.mark.parametrize("argv, message", [
    (["--rounds", "0"], "--rounds must be 1 or more, got 0"),
    (["--wait-quiet", "-1"], "--wait-quiet must be 0 or more seconds, got -1"),
])
def test_bad_rounds_and_wait_are_refused(bench, capsys, argv, message):
    with pytest.raises(SystemExit):
        bench.parse_args(argv)
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(f": error: {message}")


def test_record_limits_keeps_the_better_measurement(bench):
    machine = {"peak_gflops": 78.2, "flop_per_cycle": 32, "isa": "AVX2 + FMA"}
    fp32 = ({"gflops": 60.0, "how": "2 threads x 12 FMA chains"}, {"gflops": 64.0, "how": "2 threads x 12 FMA chains"})
    int8 = ({"gmacs": 84.0, "how": "vpmaddubsw"}, {"gmacs": None, "error": "the int8 loop failed: x"})
    bench.record_limits(machine, {"fp32": fp32[0], "int8": int8[0]}, {"fp32": fp32[1], "int8": int8[1]}, None)
    assert machine == {"peak_gflops": 64.0, "flop_per_cycle": None, "estimated_peak_gflops": 78.2,
                       "isa": "measured: 2 threads x 12 FMA chains, best of before/after the run", "fma_loop": fp32[1],
                       "int8_peak_gmacs": 84.0, "int8_loop": int8[0]}
    given = {"peak_gflops": 50.0, "flop_per_cycle": 32, "isa": "given with --peak-gflops"}
    bench.record_limits(given, {"fp32": fp32[0], "int8": None}, {"fp32": fp32[1], "int8": None}, 50.0)
    assert given == {"peak_gflops": 50.0, "flop_per_cycle": 32, "isa": "given with --peak-gflops"}
