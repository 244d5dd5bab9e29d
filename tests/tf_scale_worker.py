"""Subprocess half of test_tf_scale.py: python tf_scale_worker.py FOLDER prints one JSON line.

TensorFlow's logical devices must be configured before it initialises, so this runs in a
fresh process: the CPU is split into two logical devices, then, on FOLDER's model.py and
main.py,
- memory: peak RSS growth while training one epoch and predicting on a sparse matrix whose
  dense form would take 1.7 GB (30,000 rows x 15,000 columns, 40,000 ratings);
- strategy: tf_runs.pick_strategy's choice on this machine (no GPU) and with 1 and 2 GPUs
  faked;
- mirrored: the weights and the held-out RMSE after two epochs on planted data, trained
  under the default strategy and under MirroredStrategy over the two logical CPUs, and
  the mirrored weights once saved and loaded into a network on one device.
"""
import json
import os
import resource
import sys
import tempfile
from pathlib import Path

import numpy as np
import scipy.sparse as sp

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
FOLDER = Path(__file__).resolve().parent.parent / sys.argv[1]
sys.path.insert(0, str(FOLDER))

import tensorflow as tf  # noqa: E402

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])

import main  # noqa: E402

main.load_tensorflow()
tf.config.experimental.enable_op_determinism()
model = main.model
AUTOREC = FOLDER.name == "AutoRec-TensorFlow"


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def args_for(n_inputs_hint=None):
    """Small settings that exercise every term of the update: the L2 penalty (AutoRec);
    dropout, weight decay, a gradient clip that binds and re-feeding (DeepRec)."""
    if AUTOREC:
        return main.parse_args(["--hidden", "8", "--lam", "5", "--lr", "0.02"])
    return main.parse_args(["--hidden", "12,6", "--dropout", "0.3", "--lr", "0.01",
                            "--weight-decay", "0.01", "--clip-norm", "0.5"])


def sparse_matrix(rows, cols, n_ratings, seed):
    rng = np.random.default_rng(seed)
    cells = rng.choice(rows * cols, n_ratings, replace=False)
    ratings = rng.integers(1, 6, n_ratings).astype(np.float32)
    return sp.csr_matrix((ratings, (cells // cols, cells % cols)), shape=(rows, cols))


def memory():
    matrix = sparse_matrix(30_000, 15_000, 40_000, seed=0)
    before = peak_rss_mb()
    network, trainer = main.build(args_for(), matrix)
    trainer.train_epoch(64, 0, 1)
    rows, cols = matrix.nonzero()
    model.predict_pairs(network, matrix, rows, cols)
    return {"dense_mb": 30_000 * 15_000 * 4 / 2 ** 20, "growth_mb": peak_rss_mb() - before}


def strategy_choice():
    chosen = {"auto": main.tf_runs.pick_strategy("auto")[2]}
    real_list, real_mirrored = tf.config.list_physical_devices, tf.distribute.MirroredStrategy
    try:
        tf.distribute.MirroredStrategy = lambda devices: ("mirrored", devices)
        for n in (1, 2):
            tf.config.list_physical_devices = lambda kind, n=n: (
                [f"GPU{k}" for k in range(n)] if kind == "GPU" else real_list(kind))
            strategy, device, name = main.tf_runs.pick_strategy("auto")
            chosen[f"{n}gpu"] = [name, device]
    finally:
        tf.config.list_physical_devices, tf.distribute.MirroredStrategy = real_list, real_mirrored
    return chosen


def planted():
    """60 users x 40 items in two taste groups: 5 within a group, 1 across; a third of the
    cells observed; every fifth observed cell held out. Rows are the model's input rows."""
    rng = np.random.default_rng(1)
    taste = np.arange(60) % 2 == (np.arange(40) % 2)[:, None]  # 40 x 60 (rows x cols)
    observed = rng.random(taste.shape) < 0.35
    rows, cols = np.nonzero(observed)
    held = np.arange(len(rows)) % 5 == 0
    ratings = np.where(taste[rows, cols], 5.0, 1.0).astype(np.float32)
    train = sp.csr_matrix((ratings[~held], (rows[~held], cols[~held])), shape=taste.shape)
    return train, rows[held], cols[held], ratings[held]


def train_under(strategy):
    train, rows, cols, ratings = planted()
    with main.tf_runs.placement(strategy, "/CPU:0"):
        network, trainer = main.build(args_for(), train, strategy)
        for epoch in (1, 2):
            trainer.train_epoch(7, 3, epoch)  # 6 batches of 7 and one of 5 (odd slices)
    predictions = model.predict_pairs(network, train, rows, cols)
    return network, float(np.sqrt(np.mean((predictions - ratings) ** 2)))


def reloaded(network):
    """network's weights saved, then loaded into a fresh network on one device."""
    with tempfile.TemporaryDirectory() as folder:
        path = tf.train.Checkpoint(model=network).save(os.path.join(folder, "ckpt"))
        fresh = main.new_network(args_for(), planted()[0])
        tf.train.Checkpoint(model=fresh).restore(path).assert_existing_objects_matched()
    return [v.numpy() for v in fresh.trainable_variables]


def mirrored():
    single, single_rmse = train_under(tf.distribute.get_strategy())
    single = [v.numpy() for v in single.trainable_variables]
    strategy = tf.distribute.MirroredStrategy(["/CPU:0", "/CPU:1"])
    network, double_rmse = train_under(strategy)
    double = [v.numpy() for v in network.trainable_variables]
    differences = [float(np.max(np.abs(a - b))) for a, b in zip(single, double)]
    loaded = [float(np.max(np.abs(a - b))) for a, b in zip(reloaded(network), double)]
    changed = [float(np.max(np.abs(a - b))) for a, b in
               zip(single, main.new_network(args_for(), planted()[0]).trainable_variables)]
    return {"replicas": strategy.num_replicas_in_sync, "max_weight_difference":
            max(differences), "max_weight_change": max(changed),
            "max_reload_difference": max(loaded),
            "rmse_single": single_rmse, "rmse_mirrored": double_rmse}


print(json.dumps({"memory": memory(), "strategy": strategy_choice(), "mirrored": mirrored()}))
