"""AutoRec-TensorFlow: learning planted ratings, bad flags. The tests it shares with
DeepRec (split, metric, leakage, resume, NaN guard, end to end) are in test_rating_models.py.
"""
import numpy as np
import pytest

from conftest import read_results, run_main
from rating_folders import AutoRecFolder, global_mean_rmse

AUTOREC = AutoRecFolder()


def test_learns_planted_low_rank_ratings(rating_file):
    split, predict = AUTOREC.train(rating_file, epochs=40)
    metrics = AUTOREC.modules[1]
    test_rmse = metrics.rating_metrics(predict["test"], split.test, split.train)["rmse"]
    assert test_rmse < 0.7 * global_mean_rmse(split, split.test)  # about 0.42 vs 0.86


def test_user_variant_through_main_learns(rating_file, tmp_path):
    """U-AutoRec (each user's ratings one input row) through main.py: 12 epochs reach a test
    RMSE of about 0.64 against the global mean's 0.85."""
    run_dir = tmp_path / "run"
    done = run_main(AUTOREC.name, "--data-dir", rating_file.parent, "--out-dir", run_dir,
                    "--epochs", "12", "--variant", "user", "--comet", "off", "--quiet",
                    "--no-download", *AUTOREC.small)
    assert done.returncode == 0, done.stderr
    results = read_results(run_dir)
    assert results["variant"] == "user"
    data = AUTOREC.modules[0]
    split = data.split_ratings(data.load_ratings(rating_file), seed=results["seed"])
    baseline = global_mean_rmse(split, split.test)
    assert results["test"]["rmse"] < 0.85 * baseline, (results["test"], baseline)


@pytest.mark.parametrize("flags", [("--epochs", "0"), ("--lr", "-1"), ("--lam", "nan"),
                                   ("--variant", "both"), ("--batch-size", "x"),
                                   ("--device", "tpu"), ("--resume", "/nonexistent/run")])
def test_bad_flags_give_argparse_errors(flags):
    done = run_main(AUTOREC.name, *flags)
    assert done.returncode == 2
    assert "usage:" in done.stderr and "Traceback" not in done.stderr
    # the usage line names every flag: the error line itself must name the refused one
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and flags[0] in errors[0], done.stderr
