"""Memory that grows with the data, not with users x items: the PyTorch folders end to end.

Each PyTorch folder runs one epoch (EASE: its fit) on two synthetic files made as
`benchmark.py --make-synthetic` makes them, with the same number of ratings, the second
with 16 times the users. Anything that grows with the ratings stays the same between the
two; a dense users x items matrix of the training data would grow by 15,000 x 4,000 x 4
bytes = 229 MB (float32) or more, on top of what grows with users alone (CDAE's user
vectors and their Adam state: about 50 MB). The limit on the growth of the peak resident
memory is 110 MB. The TensorFlow folders' training and prediction are checked the same
way, in one process each, by test_tf_scale.py.
"""
import importlib.util
import os
import subprocess
import sys

import pytest

from conftest import REPO, TOP_N_FOLDERS

SMALL, WIDE = 1_000, 16_000     # users of the two files
OTHER_SIDE = 4_000              # items, the same in both files
N_RATINGS = 320_000
LIMIT_MB = 110
QUICK_FLAGS = {"ESAE-PyTorch": ["--lam", "100"]}


def benchmark_module():
    spec = importlib.util.spec_from_file_location("benchmark_for_memory",
                                                  REPO / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_synthetic(path, n_users, n_items):
    """A synthetic file in ML-20M's ratings.csv format (header, half stars)."""
    frame = benchmark_module().synthetic_ratings(n_users, n_items, N_RATINGS, seed=7)
    frame.to_csv(path, index=False, float_format="%.1f")
    return path


@pytest.fixture(scope="module")
def ratings_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("memory")
    return (write_synthetic(root / "small.csv", SMALL, OTHER_SIDE),
            write_synthetic(root / "wide.csv", WIDE, OTHER_SIDE))


def peak_rss_mb(args, cwd):
    """Run python args to the end; its peak resident memory in MB (os.wait4)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, *map(str, args)], cwd=cwd, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    stderr = process.stderr.read()
    process.stderr.close()
    assert os.waitstatus_to_exitcode(status) == 0, stderr[-2000:]
    return usage.ru_maxrss / 1024


def one_epoch_peak(folder, ratings_file, out_dir):
    flags = ["--ratings-file", ratings_file, "--out-dir", out_dir, "--comet", "off", "--quiet",
             "--seed", "3", "--heldout-users", "100",
             *QUICK_FLAGS.get(folder, ["--epochs", "1"])]
    return peak_rss_mb([REPO / folder / "main.py", *flags], REPO)


@pytest.mark.parametrize("folder", TOP_N_FOLDERS)
def test_peak_memory_does_not_grow_with_users_times_items(folder, ratings_files, tmp_path):
    small, wide = ratings_files
    small_peak = one_epoch_peak(folder, small, tmp_path / "small")
    wide_peak = one_epoch_peak(folder, wide, tmp_path / "wide")
    dense_growth_mb = (WIDE - SMALL) * OTHER_SIDE * 4 / 2 ** 20
    assert wide_peak - small_peak < LIMIT_MB, (
        f"{folder}: peak {small_peak:.0f} MB -> {wide_peak:.0f} MB with {WIDE // SMALL} x "
        f"the rows and the same ratings (a dense float32 users x items matrix would add "
        f"{dense_growth_mb:.0f} MB)")
