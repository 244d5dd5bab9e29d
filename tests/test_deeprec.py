"""NVIDIA-DeepRec-TensorFlow: learning planted ratings (with and without dense re-feeding),
dropout in training only, bad flags. The tests it shares with AutoRec (split, metric,
leakage, resume, NaN guard, end to end) are in test_rating_models.py.
"""
import numpy as np
import pytest

from conftest import run_main
from rating_folders import DeepRecFolder, global_mean_rmse

DEEPREC = DeepRecFolder()


@pytest.mark.parametrize("refeed", [True, False])
def test_learns_planted_low_rank_ratings(rating_file, refeed):
    split, predict = DEEPREC.train(rating_file, epochs=20, refeed=refeed)
    metrics = DEEPREC.modules[1]
    test_rmse = metrics.rating_metrics(predict["test"], split.test, split.train)["rmse"]
    assert test_rmse < 0.7 * global_mean_rmse(split, split.test)  # about 0.5 vs 0.86


def test_dropout_is_active_in_training_only():
    model = DEEPREC.modules[2]
    import tensorflow as tf
    network = model.DeepAutoEncoder(30, (16, 8), dropout=0.5, seed=0)
    rows = tf.constant(np.random.RandomState(0).randint(0, 6, (4, 30)), tf.float32)
    np.testing.assert_array_equal(network(rows).numpy(), network(rows).numpy())
    seed = tf.constant([1, 2], tf.int64)
    np.testing.assert_array_equal(network(rows, seed).numpy(), network(rows, seed).numpy())
    assert not np.allclose(network(rows, seed).numpy(), network(rows).numpy())


@pytest.mark.parametrize("flags", [("--epochs", "0"), ("--lr", "-1"), ("--dropout", "1"),
                                   ("--hidden", "512,0"), ("--optimizer", "sgd"),
                                   ("--variant", "both"), ("--batch-size", "x"),
                                   ("--device", "tpu"), ("--resume", "/nonexistent/run")])
def test_bad_flags_give_argparse_errors(flags):
    done = run_main(DEEPREC.name, *flags)
    assert done.returncode == 2
    assert "usage:" in done.stderr and "Traceback" not in done.stderr
