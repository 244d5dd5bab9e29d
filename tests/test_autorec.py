"""AutoRec-TensorFlow: learning planted ratings, bad flags. The tests it shares with
DeepRec (split, metric, leakage, resume, NaN guard, end to end) are in test_rating_models.py.
"""
import numpy as np
import pytest

from conftest import run_main
from rating_folders import AutoRecFolder, global_mean_rmse

AUTOREC = AutoRecFolder()


def test_learns_planted_low_rank_ratings(rating_file):
    split, predict = AUTOREC.train(rating_file, epochs=40)
    metrics = AUTOREC.modules[1]
    test_rmse = metrics.rating_metrics(predict["test"], split.test, split.train)["rmse"]
    assert test_rmse < 0.7 * global_mean_rmse(split, split.test)  # about 0.42 vs 0.86


@pytest.mark.parametrize("flags", [("--epochs", "0"), ("--lr", "-1"), ("--lam", "nan"),
                                   ("--variant", "both"), ("--batch-size", "x"),
                                   ("--device", "tpu"), ("--resume", "/nonexistent/run")])
def test_bad_flags_give_argparse_errors(flags):
    done = run_main(AUTOREC.name, *flags)
    assert done.returncode == 2
    assert "usage:" in done.stderr and "Traceback" not in done.stderr
