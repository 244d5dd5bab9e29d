"""What the shared rating-model tests need to know about each rating folder: its name, the
small training flags for main.py, and how to train it in-process on a ratings file.

main.py imports its siblings by plain name, so it only runs in a subprocess; model, data
and metrics are loaded in-process under unique names (conftest.load_module).
"""
import os

import numpy as np

from conftest import load_module

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def global_mean_rmse(split, pairs):
    """RMSE on pairs of predicting the mean training rating everywhere."""
    return float(np.sqrt(np.mean((split.train.data.mean() - pairs.ratings) ** 2)))


class RatingFolder:
    name = small = None
    leak_epochs = 2  # epochs of the in-process runs of the leakage test

    def __init__(self):
        self.modules = tuple(load_module(self.name, part) for part in ("data", "metrics", "model"))

    def train(self, path, epochs, seed=3, **options):
        """Train a small model on the file; (split, its predictions on validation and test)."""
        import tensorflow as tf
        data, _, model = self.modules
        split = data.split_ratings(data.load_ratings(path), seed=seed)
        inputs = tf.constant(self.input_matrix(split).toarray(), tf.float32)
        network, trainer = self.network_and_trainer(model, inputs, seed, **options)
        for epoch in range(1, epochs + 1):
            trainer.train_epoch(16, seed, epoch)
        predict = {name: self.predict(model, network, inputs, pairs)
                   for name, pairs in (("validation", split.validation), ("test", split.test))}
        return split, predict

    def checkpoint_metrics(self, run_dir, ratings_path, seed, which="best"):
        """Validation and test metrics of the model saved in run_dir/checkpoints/<which> (its
        latest checkpoint), rebuilt here with the `small` sizes, on the run's split."""
        import tensorflow as tf
        data, metrics, model = self.modules
        split = data.split_ratings(data.load_ratings(ratings_path), seed=seed)
        inputs = tf.constant(self.input_matrix(split).toarray(), tf.float32)
        network = self.small_network(model, int(inputs.shape[1]), seed)
        path = tf.train.latest_checkpoint(str(run_dir / "checkpoints" / which))
        tf.train.Checkpoint(model=network).restore(path).expect_partial()
        return {name: metrics.rating_metrics(self.predict(model, network, inputs, pairs),
                                             pairs, split.train)
                for name, pairs in (("validation", split.validation), ("test", split.test))}


class AutoRecFolder(RatingFolder):
    """A small I-AutoRec: each movie's ratings are one input row."""
    name = "AutoRec-TensorFlow"
    small = ("--hidden", "40", "--batch-size", "16", "--lr", "0.03", "--lam", "10")
    stalling_lr = "0.3"  # validation RMSE stops improving after about 3 epochs
    real_data_flags = ()  # one epoch of the defaults: test RMSE 1.051 (global mean 1.116)
    leak_epochs = 3

    def input_matrix(self, split):
        return split.train.T

    def small_network(self, model, n_inputs, seed):
        return model.AutoRec(n_inputs, 40, seed=seed)

    def network_and_trainer(self, model, inputs, seed):
        network = model.AutoRec(inputs.shape[1], 40, seed=seed)
        return network, model.Trainer(network, inputs, lam=10.0, lr=0.01)

    def predict(self, model, network, inputs, pairs):
        return model.predict_pairs(network, inputs, pairs.items, pairs.users)


class DeepRecFolder(RatingFolder):
    """A small user-based deep autoencoder: each user's ratings are one input row."""
    name = "NVIDIA-DeepRec-TensorFlow"
    small = ("--hidden", "64,32", "--dropout", "0.5", "--batch-size", "16", "--lr", "0.003")
    stalling_lr = "0.1"  # validation RMSE stops improving after about 5 epochs
    # one epoch of the defaults (lr 3e-4) only reaches 1.092 against the global mean's
    # 1.116; with lr 1e-3, 1.063
    real_data_flags = ("--lr", "1e-3")

    def input_matrix(self, split):
        return split.train

    def small_network(self, model, n_inputs, seed):
        return model.DeepAutoEncoder(n_inputs, (64, 32), dropout=0.5, seed=seed)

    def network_and_trainer(self, model, inputs, seed, refeed=True):
        network = model.DeepAutoEncoder(inputs.shape[1], (64, 32), dropout=0.5, seed=seed)
        return network, model.Trainer(network, inputs, "adam", 0.003, refeed=refeed)

    def predict(self, model, network, inputs, pairs):
        return model.predict_pairs(network, inputs, pairs.users, pairs.items)


RATING_FOLDER_SPECS = {spec.name: spec for spec in (AutoRecFolder, DeepRecFolder)}
