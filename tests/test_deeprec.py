"""NVIDIA-DeepRec-TensorFlow: learning planted ratings (with and without dense re-feeding),
dropout in training only, the weight-decay step, bad flags. The tests it shares with
AutoRec (split, metric, leakage, resume, NaN guard, end to end) are in
test_rating_models.py.
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


def test_weight_decay_shrinks_weights_and_spares_biases():
    """On rows with no observed rating the masked loss is 0, so the first SGD step (momentum
    has nothing to carry yet) follows the penalty's gradient alone: W -> (1 - lr *
    weight_decay) W, biases unchanged."""
    model = DEEPREC.modules[2]
    import tensorflow as tf
    network = model.DeepAutoEncoder(30, (16, 8), dropout=0.5, seed=0)
    for b in network.biases:
        b.assign(tf.fill(b.shape, 0.25))  # non-zero, so a penalty on them would show
    biases = [b.numpy() for b in network.biases]
    weights = [w.numpy() for w in network.weights]
    lr, weight_decay = 0.1, 0.5
    trainer = model.Trainer(network, tf.zeros([4, 30]), "momentum", lr, weight_decay,
                            refeed=False)
    trainer.step(tf.constant([0, 1, 2, 3], tf.int64), tf.constant([1, 2], tf.int64))
    for before, after in zip(weights, network.weights):
        np.testing.assert_allclose(after.numpy(), (1 - lr * weight_decay) * before, rtol=1e-5)
    for before, after in zip(biases, network.biases):
        np.testing.assert_array_equal(after.numpy(), before)


@pytest.mark.parametrize("flags", [("--epochs", "0"), ("--lr", "-1"), ("--dropout", "1"),
                                   ("--hidden", "512,0"), ("--optimizer", "sgd"),
                                   ("--variant", "both"), ("--batch-size", "x"),
                                   ("--device", "tpu"), ("--resume", "/nonexistent/run")])
def test_bad_flags_give_argparse_errors(flags):
    done = run_main(DEEPREC.name, *flags)
    assert done.returncode == 2
    assert "usage:" in done.stderr and "Traceback" not in done.stderr
