"""NVIDIA-DeepRec-TensorFlow: learning planted ratings (with and without dense re-feeding),
dropout in training only, the weight-decay step, bad flags. The tests it shares with
AutoRec (split, metric, leakage, resume, NaN guard, end to end) are in
test_rating_models.py.
"""
import numpy as np
import pytest

from conftest import read_results, run_main
from rating_folders import DeepRecFolder, global_mean_rmse

DEEPREC = DeepRecFolder()


@pytest.mark.parametrize("refeed", [True, False])
def test_learns_planted_low_rank_ratings(rating_file, refeed):
    split, predict = DEEPREC.train(rating_file, epochs=20, refeed=refeed)
    metrics = DEEPREC.modules[1]
    test_rmse = metrics.rating_metrics(predict["test"], split.test, split.train)["rmse"]
    assert test_rmse < 0.7 * global_mean_rmse(split, split.test)  # about 0.5 vs 0.86


@pytest.mark.parametrize("flags", [("--variant", "item"), ("--no-refeed",)],
                         ids=["item-variant", "no-refeed"])
def test_model_options_through_main_learn(rating_file, tmp_path, flags):
    """Each option through main.py: 8 epochs reach a test RMSE of about 0.6 (item-based)
    and 0.66 (no re-feeding) against the global mean's 0.85."""
    run_dir = tmp_path / "run"
    done = run_main(DEEPREC.name, "--data-dir", rating_file.parent, "--out-dir", run_dir,
                    "--epochs", "8", "--comet", "off", "--quiet", "--no-download",
                    *DEEPREC.small, *flags)
    assert done.returncode == 0, done.stderr
    results = read_results(run_dir)
    assert results["variant"] == ("item" if "item" in flags else "user")
    data = DEEPREC.modules[0]
    split = data.split_ratings(data.load_ratings(rating_file), seed=results["seed"])
    baseline = global_mean_rmse(split, split.test)
    assert results["test"]["rmse"] < 0.85 * baseline, (results["test"], baseline)


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


def test_refeeding_step_is_the_sparse_update_then_the_dense_update():
    """Dense re-feeding (Kuchaiev & Ginsburg 2017, section 3.3): one step is an update on
    the sparse batch x, whose forward pass gives the dense output f(x), then a second update
    with f(x) as both input and target (every entry observed), on the weights left by the
    first. Written out here with a Keras SGD (momentum 0.9, as Trainer's "momentum") and a
    masked MSE of the test's own, no dropout and no weight decay; without re-feeding the
    step is the first update alone."""
    import tensorflow as tf
    model = DEEPREC.modules[2]
    rng = np.random.RandomState(0)
    ratings = rng.randint(1, 6, (8, 20)) * (rng.rand(8, 20) < 0.4)
    inputs = tf.constant(ratings, tf.float32)
    batch = tf.constant([1, 4, 6], tf.int64)
    lr = 0.05

    def network():
        return model.DeepAutoEncoder(20, (6, 3), dropout=0.0, seed=0)

    def update(net, optimizer, x):
        """One gradient step on the MSE over the non-zero entries of x; returns f(x)."""
        with tf.GradientTape() as tape:
            outputs = net(x)
            loss = tf.reduce_mean(tf.square(tf.boolean_mask(outputs - x, x != 0)))
        variables = net.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return outputs

    def by_hand(refeed):
        net = network()
        optimizer = tf.keras.optimizers.SGD(learning_rate=lr, momentum=0.9)
        dense = update(net, optimizer, tf.gather(inputs, batch))
        assert np.all(dense.numpy() != 0)  # f(x) is dense: the second loss sees every entry
        if refeed:
            update(net, optimizer, tf.constant(dense.numpy()))
        return net

    def by_trainer(refeed):
        net = network()
        trainer = model.Trainer(net, inputs, "momentum", lr, 0.0, refeed=refeed)
        trainer.step(batch, tf.constant([3, 5], tf.int64))  # (step holds trainer weakly)
        return net

    def values(net):
        return [v.numpy() for v in net.weights + net.biases]

    def same(a, b):
        return all(np.allclose(x, y, rtol=1e-5, atol=1e-6) for x, y in zip(a, b))

    refed, plain = values(by_trainer(True)), values(by_trainer(False))
    for got, expected in zip(refed, values(by_hand(True))):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    for got, expected in zip(plain, values(by_hand(False))):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert not same(refed, plain)
    assert not same(plain, values(network()))  # the step changed the weights at all


@pytest.mark.parametrize("flags", [("--epochs", "0"), ("--lr", "-1"), ("--dropout", "1"),
                                   ("--hidden", "512,0"), ("--optimizer", "sgd"),
                                   ("--variant", "both"), ("--batch-size", "x"),
                                   ("--device", "tpu"), ("--resume", "/nonexistent/run")])
def test_bad_flags_give_argparse_errors(flags):
    done = run_main(DEEPREC.name, *flags)
    assert done.returncode == 2
    assert "usage:" in done.stderr and "Traceback" not in done.stderr
    # the usage line names every flag: the error line itself must name the refused one
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and flags[0] in errors[0], done.stderr
