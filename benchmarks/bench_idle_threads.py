"""What MegEngine's idle threads cost NumPy's BLAS, and which switches quiet them.

    .venv/bin/python benchmarks/bench_idle_threads.py [--idle 3] [--rounds 3] [--reps 10]
        [--scenarios numpy,import,op-cpux,op-mt,...] [--json FILE]

Once MegEngine has run one eager operator, its ``CompNodeSync`` thread (the poller of
``CompNodeSyncManager`` in ``imperative/src/impl/physical_tensor.cpp``) polls its event queue
every 10 microseconds (``condition_variable::wait_for(10us)``) for the rest of the process,
whether or not there is work. Every scenario below runs in a fresh process:

1. it imports NumPy (and MegEngine unless the scenario is ``numpy``), runs one small operator
   on the scenario's device, applies the scenario's remedy;
2. it sleeps ``--idle`` seconds and records, per thread (``/proc/self/task/*``), the name, the
   CPU time (utime + stime) and the context switches taken meanwhile (wakeups per second);
3. it times float32 matrix products with NumPy (``--reps`` calls per shape after 2 warm-up ones):
   1024x1024 @ 1024x1024, and an im2col-like (16*56*56, 576) @ (576, 64), in GFLOP/s.

Scenarios are interleaved over ``--rounds`` rounds and each figure is given as
median [min-max] over the rounds. Scenarios (``--scenarios``, comma-separated):

* ``numpy``: no MegEngine at all (the reference);
* ``import``: ``import megengine`` only;
* ``op-cpux``: one operator on ``cpux`` (MegEngine's default CPU device);
* ``op-mt``: one operator on ``multithread<T>:0`` (T = usable cores; megzoo's training device);
* remedies, each on top of ``op-mt``:
  ``async0`` (``megengine.config.async_level = 0`` before the operator),
  ``full-sync`` (``megengine._full_sync()`` after it), ``close`` (``megengine._close()``),
  ``nice`` (the poller's nice value set to 19), ``sched-idle`` (megzoo's
  ``megzoo.device.poller_yields()``: ``SCHED_IDLE``, or ``SCHED_BATCH`` when that cannot be undone),
  ``slack`` (``prctl(PR_SET_TIMERSLACK, --slack-us)`` on the main thread while MegEngine creates its
  threads, which inherit it: the poller's 10 us timeout then fires at most every ``--slack-us``;
  unprivileged), ``slack-proc`` (the same written to ``/proc/<tid>/timerslack_ns`` of the existing
  poller; needs ``CAP_SYS_NICE``), ``finalize`` (``mgb::CompNode::finalize()`` from
  ``libmegengine_shared.so`` by ctypes after a full sync: joins the poller; MegEngine tensors made
  before it are unusable afterwards), ``spin0`` (``MGB_WORKER_MAX_SPIN=1`` in the environment:
  MegEngine's worker threads stop spinning ~5 ms after each task).

The machine's load average is printed before and after; figures taken while other processes use
the cores are not reliable.
"""
import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
POLLER = "CompNodeSync"
REMEDIES = ["async0", "full-sync", "close", "nice", "sched-idle", "slack", "slack-proc", "finalize", "spin0"]
SCENARIOS = ["numpy", "import", "op-cpux", "op-mt"] + REMEDIES
SHAPES = {"1024^3": (1024, 1024, 1024), "im2col": (16 * 56 * 56, 576, 64)}
PR_SET_TIMERSLACK, PR_GET_TIMERSLACK = 29, 30


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def cores() -> int:
    return len(os.sched_getaffinity(0))


# -- worker (one scenario, fresh process) --------------------------------------------------------

def thread_stats() -> dict:
    """tid -> (name, CPU seconds, context switches) of this process's threads."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for tid in os.listdir("/proc/self/task"):
        base = f"/proc/self/task/{tid}"
        try:
            with open(f"{base}/comm") as f:
                name = f.read().strip()
            with open(f"{base}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"{base}/status") as f:
                switches = sum(int(line.split()[1]) for line in f if "ctxt_switches:" in line)
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        out[int(tid)] = (name, (int(fields[11]) + int(fields[12])) / tick, switches)
    return out


def poller_tids() -> list:
    return [tid for tid, (name, _, _) in thread_stats().items() if name == POLLER]


def set_timer_slack(ns: int) -> None:
    """The calling thread's timer slack (threads it creates inherit it)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_TIMERSLACK, ctypes.c_ulong(ns), 0, 0, 0)


def timer_slack() -> int:
    """The calling thread's timer slack (ns)."""
    import ctypes

    return int(ctypes.CDLL(None, use_errno=True).prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0))


def finalize_comp_nodes() -> None:
    import ctypes

    import megengine

    megengine._full_sync()
    lib = Path(megengine.__file__).parent / "core" / "lib" / "libmegengine_shared.so"
    ctypes.CDLL(str(lib))._ZN3mgb8CompNode8finalizeEv()  # mgb::CompNode::finalize()


def run_op(device: str) -> None:
    import numpy as np
    import megengine

    x = megengine.Tensor(np.ones((64, 64), "float32"), device=device)
    (x @ x + 1).numpy()


def setup(scenario: str, slack_us: int, stack: contextlib.ExitStack) -> dict:
    """Import, run an operator and apply the remedy of ``scenario`` (context managers enter
    ``stack``); returns notes."""
    import numpy as np  # noqa: F401  (NumPy's BLAS threads exist in every scenario)

    notes = {}
    if scenario == "numpy":
        return notes
    import megengine

    if scenario == "import":
        return notes
    device = "cpux" if scenario == "op-cpux" else f"multithread{cores()}:0" if cores() > 1 else "cpu0"
    notes["device"] = device
    if scenario == "async0":
        megengine.config.async_level = 0
    default_slack = None
    if scenario == "slack":
        default_slack = timer_slack()
        set_timer_slack(slack_us * 1000)
    run_op(device)
    if default_slack is not None:
        set_timer_slack(default_slack)
    if scenario == "full-sync":
        megengine._full_sync()
    elif scenario == "close":
        megengine._close()
    elif scenario == "nice":
        for tid in poller_tids():
            os.setpriority(os.PRIO_PROCESS, tid, 19)
    elif scenario == "sched-idle":
        from megzoo.device import poller_yields

        tids = stack.enter_context(poller_yields())
        notes["policy"] = {os.SCHED_IDLE: "SCHED_IDLE", os.SCHED_BATCH: "SCHED_BATCH"}.get(
            os.sched_getscheduler(tids[0]) if tids else -1, "none")
    elif scenario == "slack-proc":
        for tid in poller_tids():
            try:
                with open(f"/proc/{tid}/timerslack_ns", "w") as f:
                    f.write(str(slack_us * 1000))
            except OSError as e:
                notes["error"] = str(e)
    elif scenario == "finalize":
        finalize_comp_nodes()
    return notes


def idle_cost(seconds: float) -> list:
    """[(name, CPU seconds, wakeups per second)] per thread over ``seconds`` idle seconds."""
    before = thread_stats()
    time.sleep(seconds)
    after = thread_stats()
    rows = []
    for tid, (name, cpu, switches) in sorted(after.items()):
        _, cpu0, switches0 = before.get(tid, (name, 0.0, 0))
        rows.append((name, cpu - cpu0, (switches - switches0) / seconds))
    return rows


def blas_gflops(reps: int) -> dict:
    import numpy as np

    rng = np.random.default_rng(0)
    out = {}
    for key, (m, k, n) in SHAPES.items():
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        for _ in range(2):
            a @ b
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t)
        out[key] = 2 * m * k * n / statistics.median(times) / 1e9
    return out


def worker(scenario: str, idle: float, reps: int, slack_us: int) -> dict:
    sys.path.insert(0, str(ROOT))
    with contextlib.ExitStack() as stack:
        notes = setup(scenario, slack_us, stack)
        result = {"threads": idle_cost(idle), "gflops": blas_gflops(reps)}
    result.update({k: v for k, v in notes.items() if k in ("device", "policy", "error")})
    if scenario == "numpy":
        from threadpoolctl import threadpool_info

        result["blas"] = [{k: i.get(k) for k in ("internal_api", "version", "num_threads", "architecture")}
                          for i in threadpool_info()]
    return result


# -- driver ---------------------------------------------------------------------------------------

def run_worker(scenario: str, args) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if scenario == "spin0":
        env["MGB_WORKER_MAX_SPIN"] = "1"
    spec = {"scenario": "op-mt" if scenario == "spin0" else scenario, "idle": args.idle, "reps": args.reps,
            "slack_us": args.slack_us}
    proc = subprocess.run([sys.executable, str(HERE), "--worker", json.dumps(spec)], capture_output=True,
                          text=True, env=env, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        tail = [line for line in proc.stderr.splitlines() if line.strip()][-3:]
        return {"error": f"exit {proc.returncode}: {' | '.join(tail)}"}
    result = json.loads(lines[-1])
    result["exit"] = proc.returncode
    return result


def spread(values) -> str:
    values = sorted(values)
    return f"{statistics.median(values):6.2f} [{values[0]:.2f}-{values[-1]:.2f}]"


def report(results: dict, idle: float) -> None:
    reference = {key: statistics.median(r["gflops"][key] for r in results["numpy"]) for key in SHAPES}
    print(f"\nIdle cost over {idle:g} s and NumPy float32 matmul, median [min-max] over rounds")
    print(f"{'scenario':<11} {'idle CPU s':>18} {POLLER + ' CPU s':>18} {'poller wakeups/s':>22}  "
          + "  ".join(f"{key + ' GFLOP/s':>22} {'vs numpy':>8}" for key in SHAPES))
    for scenario, runs in results.items():
        good = [r for r in runs if "error" not in r]
        if not good:
            print(f"{scenario:<11} {runs[0]['error']}")
            continue
        total = [sum(cpu for _, cpu, _ in r["threads"]) for r in good]
        poller = [sum(cpu for name, cpu, _ in r["threads"] if name == POLLER) for r in good]
        wakeups = [sum(w for name, _, w in r["threads"] if name == POLLER) for r in good]
        cells = []
        for key in SHAPES:
            g = [r["gflops"][key] for r in good]
            cells.append(f"{spread(g):>22} {statistics.median(g) / reference[key]:7.2f}x")
        extra = " ".join(f"{k}={good[0][k]}" for k in ("device", "policy", "error") if k in good[0])
        exits = {r["exit"] for r in good}
        if exits != {0}:
            extra += f" exit codes {sorted(exits)}"
        print(f"{scenario:<11} {spread(total):>18} {spread(poller):>18} {spread(wakeups):>22}  "
              + "  ".join(cells) + f"  {extra}")
    print("\nThreads of the last round (name: CPU seconds while idle):")
    for scenario, runs in results.items():
        r = runs[-1]
        if "threads" in r:
            print(f"  {scenario:<11} " + ", ".join(f"{name} {cpu:.2f}" for name, cpu, _ in r["threads"]))
    blas = results["numpy"][-1].get("blas")
    if blas:
        print("\nNumPy's BLAS (threadpoolctl): " + "; ".join(
            f"{b['internal_api']} {b['version']} {b['architecture']} kernel, {b['num_threads']} threads" for b in blas))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--idle", type=float, default=3.0, help="idle seconds measured (default 3)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reps", type=int, default=10, help="timed matrix products per shape")
    parser.add_argument("--slack-us", type=int, default=2000, help="timer slack of the slack remedies (us)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"from {', '.join(SCENARIOS)}")
    parser.add_argument("--json", metavar="FILE", help="also write the raw results as JSON")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(**json.loads(args.worker))))
        return 0
    scenarios = [s for s in args.scenarios.split(",") if s]
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    if "numpy" not in scenarios:
        scenarios.insert(0, "numpy")
    print(f"{cores()} cores; load average before: {load()}", flush=True)
    results = {s: [] for s in scenarios}
    for i in range(args.rounds):
        for scenario in scenarios:
            results[scenario].append(run_worker(scenario, args))
        print(f"round {i + 1}/{args.rounds} done, load average {load()}", flush=True)
    report(results, args.idle)
    print(f"\nload average after: {load()}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
