"""``.ci/run``'s watchdog: a run that hangs is named, its stacks dumped, and killed in bounded time."""
import os
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent

HANGING_TEST = """
import time

def test_hangs_forever():
    time.sleep(3600)
"""


def test_watchdog_names_the_hung_test_dumps_stacks_and_kills(tmp_path):
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_hang.py").write_text(HANGING_TEST)
    # the real hooks of tests/conftest.py (SIGUSR1 stack dump, current-test file)
    (suite / "conftest.py").write_text(
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('megzoo_tests_conftest', {str(TESTS / 'conftest.py')!r})\n"
        "hooks = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(hooks)\n"
        "pytest_configure, pytest_runtest_logstart = hooks.pytest_configure, hooks.pytest_runtest_logstart\n")
    env = dict(os.environ, MEGZOO_CI_LIMIT_S="8", MEGZOO_CI_GRACE_S="3")
    start = time.perf_counter()
    proc = subprocess.run(["bash", str(REPO / ".ci" / "run"), str(suite), f"--rootdir={suite}",
                           "-p", "no:cacheprovider",
                           "-o", "timeout=0",
                           "-o", "faulthandler_timeout=0"],
                          capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=240,
                          stdin=subprocess.DEVNULL)
    elapsed = time.perf_counter() - start
    assert proc.returncode != 0
    assert "watchdog: the test run passed 8 s; running test: test_hang.py::test_hangs_forever" in proc.stderr
    assert "watchdog: killing the test run" in proc.stderr
    assert 'in test_hangs_forever' in proc.stderr  # the Python stack faulthandler dumped on SIGUSR1
    assert elapsed < 120
