"""Run a cosmic-ray session's pending mutants with pytest in this one process.

`cosmic-ray exec CONFIG SESSION` starts a new Python for every mutant, and importing numpy,
scipy, pandas and the test modules again each time costs more than most test runs. This
script does the same work items with cosmic-ray's own mutation code (apply the mutant to the
file, run the tests, restore the file, record killed / survived in the session), but runs the
config's pytest command in-process with pytest.main, so the imports happen once. Before each
test run every module loaded from the mutated file is dropped from sys.modules, so the tests
(tests/conftest.load_module, baselines.py) read the mutant from disk afresh; bytecode caching
is off for the same reason.

    python mutation/exec_in_process.py mutation/metrics_topn.toml metrics_topn.sqlite

The config's test-command must be `python -m pytest ARGS...`. A test run that takes longer
than the config's timeout is stopped and counted as killed (output "timeout"), as cosmic-ray
does. Run it in a scratch clone: it mutates files in place.
"""
import contextlib
import io
import shlex
import signal
import sys
import time
from pathlib import Path

sys.dont_write_bytecode = True

import pytest  # noqa: E402
import cosmic_ray.mutating  # noqa: E402
from cosmic_ray.config import load_config  # noqa: E402
from cosmic_ray.work_db import WorkDB, use_db  # noqa: E402
from cosmic_ray.work_item import TestOutcome  # noqa: E402


class TestTimeout(BaseException):
    """Raised by the alarm; a BaseException so that pytest does not report it as a failure."""


def pytest_args(test_command):
    words = shlex.split(test_command)
    if words[:3] != ["python", "-m", "pytest"]:
        raise SystemExit(f"test-command must start with 'python -m pytest': {test_command!r}")
    return words[3:]


def forget_modules_from(paths):
    """Drop every module loaded from one of paths (baselines.py keeps the data and metrics
    modules it loads in sys.modules and would otherwise hand the next mutant's tests a stale
    copy)."""
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if file and Path(file).resolve() in paths:
            del sys.modules[name]


def in_process_runner(args, module_paths):
    paths = {Path(path).resolve() for path in module_paths}

    def run_tests(_command, timeout):
        forget_modules_from(paths)

        def alarm(_signum, _frame):
            raise TestTimeout()

        output = io.StringIO()
        previous = signal.signal(signal.SIGALRM, alarm)
        signal.alarm(max(1, int(timeout)))
        try:
            with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
                code = pytest.main(list(args))
        except TestTimeout:
            return TestOutcome.KILLED, "timeout"
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)
            if STOPPED:  # unwinds through cosmic-ray's use_mutation, which restores the file
                raise SystemExit("stopped; the session can be resumed")
        outcome = TestOutcome.SURVIVED if code == 0 else TestOutcome.KILLED
        return outcome, output.getvalue()
    return run_tests


STOPPED = []


def stop(_signum, _frame):
    """SIGTERM: interrupt pytest, then leave without recording this mutant (see run_tests)."""
    STOPPED.append(True)
    raise KeyboardInterrupt()


def main(config_path, session_path):
    signal.signal(signal.SIGTERM, stop)
    config = load_config(config_path)
    args = pytest_args(config.test_command)
    module_paths = config["module-path"]
    if isinstance(module_paths, str):
        module_paths = [module_paths]
    cosmic_ray.mutating.run_tests = in_process_runner(args, module_paths)
    with use_db(session_path, WorkDB.Mode.open) as db:
        pending = db.pending_work_items
        print(f"{len(pending)} pending mutants", flush=True)
        for number, item in enumerate(pending, start=1):
            start = time.time()
            result = cosmic_ray.mutating.mutate_and_test(item.mutations, config.test_command,
                                                         config.timeout)
            db.set_result(item.job_id, result)
            mutation = item.mutations[0]
            print(f"{number}/{len(pending)} {result.test_outcome} {time.time() - start:.1f}s "
                  f"{mutation.operator_name} {mutation.occurrence} line {mutation.start_pos[0]}",
                  flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
