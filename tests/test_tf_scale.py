"""AutoRec-TensorFlow and NVIDIA-DeepRec-TensorFlow at scale (issue #15): memory that grows
with the ratings, not with rows x columns, and tf.distribute training.

Each folder runs tests/tf_scale_worker.py once in a subprocess (TensorFlow's CPU must be
split into two logical devices before it initialises), which reports:
- the peak-memory growth of building, training one epoch and predicting every rating of a
  sparse 30,000 x 15,000 matrix with 40,000 ratings, whose dense form is 1.7 GiB;
- which strategy tf_runs.pick_strategy chooses here (no GPU) and with one and two GPUs faked;
- the weights and held-out RMSE after two epochs on planted data, trained on one device
  and under MirroredStrategy over the two logical CPUs (uneven slices, a short last batch,
  and every term of the loss: penalty, dropout, weight decay, a binding clip, re-feeding),
  and the mirrored weights once saved and loaded into a network on one device.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import RATING_FOLDERS

WORKER = Path(__file__).resolve().parent / "tf_scale_worker.py"


@pytest.fixture(scope="module", params=RATING_FOLDERS)
def report(request):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, str(WORKER), request.param], capture_output=True,
                          text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_memory_grows_with_the_ratings_not_rows_times_columns(report):
    memory = report["memory"]
    assert memory["growth_mb"] < memory["dense_mb"] / 3, memory  # about 450 MB of 1,716


def test_strategy_is_mirrored_over_two_gpus_and_default_otherwise(report):
    assert report["strategy"] == {"auto": "default", "1gpu": ["default", "/GPU:0"],
                                  "2gpu": ["mirrored:2", "/GPU:0,/GPU:1"]}


def test_two_replicas_make_the_single_device_updates(report):
    mirrored = report["mirrored"]
    assert mirrored["replicas"] == 2
    assert mirrored["max_weight_change"] > 0.05, mirrored  # training moved the weights
    assert mirrored["max_weight_difference"] < 1e-5, mirrored
    assert mirrored["rmse_mirrored"] == pytest.approx(mirrored["rmse_single"], abs=1e-5)
    assert mirrored["max_reload_difference"] == 0.0  # its checkpoint loads on one device
