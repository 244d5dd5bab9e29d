"""No held-out answer reaches a model's input, checked through each folder's own main.py.

Each test evaluates a small network twice through the folder's own evaluation function
(main.evaluate, with the network input built the way main.py builds it): once on a split and
once on the same split with every held-out answer changed. Everything a model may see is
the same both times, so its predictions (rating folders) or item scores (top-N folders) must
be identical; a main.py that fed validation or test ratings, or target items, to the network
would change them. The values are recorded where main.py hands them to metrics.py: a wrapper
around the loaded module's metrics.rating_metrics or metrics.per_user_metrics.

- Rating folders (Protocol A): every validation and test rating of the file is changed
  (r -> 6 - r, and 3 -> 1, so every value differs); a tiny network is trained two epochs
  on main.network_input(split, variant), then main.evaluate predicts the held-out pairs.
- Top-N folders (Protocol B): each validation and test user's target movies are moved to
  movies the user never rated (same timestamps, so the hold-out picks the same positions);
  the fold-in items stay, and main.evaluate (SVAE: both hold-outs, score "last" and "mean")
  scores the held-out users.
"""
import os
import sys

import numpy as np
import pytest
import torch

from conftest import (REPO, folder_imports, load_module, planted_rating_rows,
                      planted_top_n_rows, write_ratings)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

KS = [10, 50]
CPU = torch.device("cpu")


# ---------------------------------------------------------------- loading main.py


def load_main(folder):
    with folder_imports(folder):
        main = load_module(folder, "main")
        if hasattr(main, "load_tensorflow"):  # the rating folders import TF (and model) late
            main.load_tensorflow()
    return main


def sibling(main, name):
    """The data, model or metrics module that main.py's evaluate() itself uses."""
    module = main.evaluate.__globals__.get(name)
    return module if module is not None else getattr(main, name)


def record(monkeypatch, main, function):
    """Wrap metrics.<function> as main.py's evaluate() sees it; returns the list that gets a
    copy of the first argument (predictions or scores) of every call."""
    metrics = sibling(main, "metrics")
    original = getattr(metrics, function)
    calls = []

    def wrapper(values, *args, **kwargs):
        calls.append(np.array(values, copy=True))
        return original(values, *args, **kwargs)

    monkeypatch.setattr(metrics, function, wrapper)
    return calls


def assert_all_identical(first, second):
    assert len(first) == len(second) > 0
    for a, b in zip(first, second):
        assert a.shape == b.shape
        assert np.array_equal(a, b), (
            f"{np.mean(a != b):.1%} of the values changed with the held-out answers")


# ---------------------------------------------------------------- rating folders


RATING_FLAGS = {
    "AutoRec-TensorFlow": ("--hidden", "24", "--batch-size", "16", "--lr", "0.01",
                           "--lam", "1"),
    "NVIDIA-DeepRec-TensorFlow": ("--hidden", "24,12", "--dropout", "0.5", "--batch-size",
                                  "16", "--lr", "0.003"),
}


def rating_network(folder, model, inputs, args):
    """Network and trainer as main.run() builds them from the parsed flags."""
    if folder == "AutoRec-TensorFlow":
        network = model.AutoRec(int(inputs.shape[1]), args.hidden, seed=args.seed)
        return network, model.Trainer(network, inputs, args.lam, args.lr, args.lr_decay)
    network = model.DeepAutoEncoder(int(inputs.shape[1]), args.hidden, args.dropout,
                                    seed=args.seed)
    return network, model.Trainer(network, inputs, args.optimizer, args.lr,
                                  args.weight_decay, args.refeed, args.clip_norm,
                                  args.lr_decay)


def rating_predictions(main, folder, path, variant, monkeypatch, epochs=2):
    """The split, and the validation and test predictions main.evaluate() passes on."""
    import tensorflow as tf
    tf.config.experimental.enable_op_determinism()  # as main.run() does
    args = main.parse_args(["--data-dir", str(path.parent), "--variant", variant,
                            *RATING_FLAGS[folder]])
    data = sibling(main, "data")
    split = data.split_ratings(data.load_ratings(path), seed=args.seed)
    inputs = main.network_input(split, args.variant)
    network, trainer = rating_network(folder, sibling(main, "model"), inputs, args)
    for epoch in range(1, epochs + 1):
        trainer.train_epoch(args.batch_size, args.seed, epoch)
    with monkeypatch.context() as patch:
        calls = record(patch, main, "rating_metrics")
        main.evaluate(network, inputs, split.validation, split, args.variant)
        main.evaluate(network, inputs, split.test, split, args.variant)
    assert len(calls) == 2
    return split, calls


@pytest.mark.parametrize("variant", ["item", "user"])
@pytest.mark.parametrize("folder", ["AutoRec-TensorFlow", "NVIDIA-DeepRec-TensorFlow"])
def test_rating_predictions_ignore_held_out_ratings(folder, variant, tmp_path, monkeypatch):
    main = load_main(folder)
    users, items, ratings, times = planted_rating_rows(n_users=120, n_items=90, density=0.3)
    original = write_ratings(tmp_path / "a" / "ratings.dat", users, items, ratings, times)
    split_a, predictions_a = rating_predictions(main, folder, original, variant, monkeypatch)

    held_out = {(split_a.user_ids[u], split_a.item_ids[i])
                for pairs in (split_a.validation, split_a.test)
                for u, i in zip(pairs.users, pairs.items)}
    rows = np.array([(u, i) in held_out for u, i in zip(users, items)])
    changed = ratings.copy()
    changed[rows] = np.where(ratings[rows] == 3, 1, 6 - ratings[rows])
    altered = write_ratings(tmp_path / "b" / "ratings.dat", users, items, changed, times)
    split_b, predictions_b = rating_predictions(main, folder, altered, variant, monkeypatch)

    assert (split_a.train != split_b.train).nnz == 0  # the change touched held-out rows only
    for name in ("validation", "test"):
        a, b = getattr(split_a, name), getattr(split_b, name)
        assert np.array_equal(a.users, b.users) and np.array_equal(a.items, b.items)
        assert (a.ratings != b.ratings).all()
    assert_all_identical(predictions_a, predictions_b)


# ---------------------------------------------------------------- top-N folders


HELDOUT_USERS = 40  # of 240 planted users: 160 training, 40 validation, 40 test


def moved_targets(rows, split, seed=1):
    """The rows with every held-out user's target movies replaced by movies (of the item
    set) that the user never rated; ratings and timestamps stay."""
    users, items, ratings, times = rows
    rng = np.random.RandomState(seed)
    moved = items.copy()
    for group in (split.validation, split.test):
        for row, user in enumerate(group.user_ids):
            targets = split.item_ids[group.target[row].indices]
            mine = users == user
            free = np.setdiff1d(split.item_ids, items[mine])
            for old, new in zip(targets, rng.choice(free, len(targets), replace=False)):
                moved[mine & (items == old)] = new
    return users, moved, ratings, times


def top_n_splits(data, tmp_path, holdout):
    """A split of planted data, and the split of the same data with the targets moved."""
    rows = planted_top_n_rows(n_users=240)
    options = dict(heldout_users=HELDOUT_USERS, holdout=holdout)
    split_a = data.split_top_n(
        data.load_ratings(write_ratings(tmp_path / "a" / "ratings.dat", *rows)), **options)
    altered = write_ratings(tmp_path / "b" / "ratings.dat", *moved_targets(rows, split_a))
    split_b = data.split_top_n(data.load_ratings(altered), **options)
    assert np.array_equal(split_a.item_ids, split_b.item_ids)
    assert (split_a.train != split_b.train).nnz == 0
    for name in ("validation", "test"):
        a, b = getattr(split_a, name), getattr(split_b, name)
        assert np.array_equal(a.user_ids, b.user_ids)
        assert (a.fold_in != b.fold_in).nnz == 0
        assert all(np.array_equal(x, y) for x, y in zip(a.fold_in_seqs, b.fold_in_seqs))
        assert a.target.nnz == b.target.nnz > 0
        assert a.target.multiply(b.target).nnz == 0  # every target moved
    return split_a, split_b


def top_n_scores(main, evaluate, split, monkeypatch):
    """Scores main.evaluate() passes to metrics.per_user_metrics, validation then test."""
    with monkeypatch.context() as patch:
        calls = record(patch, main, "per_user_metrics")
        for group in (split.validation, split.test):
            evaluate(group)
    return calls


def check_top_n(folder, tmp_path, monkeypatch, evaluate_with, holdout="random"):
    """evaluate_with(main, args, split) -> a function of one HeldOut group that calls
    main.evaluate the way main.py does."""
    main = load_main(folder)
    split_a, split_b = top_n_splits(sibling(main, "data"), tmp_path, holdout)
    scores = [top_n_scores(main, evaluate_with(main, split), split, monkeypatch)
              for split in (split_a, split_b)]
    assert_all_identical(*scores)


def test_ease_scores_ignore_targets(tmp_path, monkeypatch):
    def evaluate_with(main, split):
        model = sibling(main, "model")
        weights = model.ease_weights(model.gram_matrix(split.train, CPU), 50.0)
        return lambda group: main.evaluate(weights, group, KS)

    check_top_n("ESAE-PyTorch", tmp_path, monkeypatch, evaluate_with)


def test_mult_vae_scores_ignore_targets(tmp_path, monkeypatch):
    def evaluate_with(main, split):
        args = main.parse_args(["--hidden", "32", "--latent", "8", "--batch-size", "16"])
        torch.manual_seed(args.seed)
        net = sibling(main, "model").MultVAE(split.n_items, args.hidden, args.latent,
                                             args.dropout, variational=args.variant == "vae")
        return lambda group: main.evaluate(net, group, KS, args.batch_size, CPU)

    check_top_n("VAE-PyTorch", tmp_path, monkeypatch, evaluate_with)


def test_cdae_fold_in_and_scores_ignore_targets(tmp_path, monkeypatch):
    def evaluate_with(main, split):
        args = main.parse_args(["--hidden", "16", "--fold-in-steps", "5"])
        torch.manual_seed(args.seed)
        net = sibling(main, "model").CDAE(split.n_items, len(split.train_user_ids),
                                          args.hidden, not args.no_user_node)

        return lambda group: main.evaluate(net, group, args, KS, CPU)

    check_top_n("CDAE-PyTorch", tmp_path, monkeypatch, evaluate_with)


@pytest.mark.parametrize("score", ["last", "mean"])
@pytest.mark.parametrize("holdout", ["random", "temporal"])
def test_svae_scores_ignore_targets(tmp_path, monkeypatch, holdout, score):
    def evaluate_with(main, split):
        args = main.parse_args(["--embed-dim", "16", "--rnn-dim", "16", "--hidden-dim", "16",
                                "--latent-dim", "8", "--holdout", holdout, "--score", score])
        torch.manual_seed(args.seed)
        net = sibling(main, "model").SVAE(split.n_items, args.embed_dim, args.rnn_dim,
                                          args.hidden_dim, args.latent_dim, args.dropout)
        return lambda group: main.evaluate(net, group, KS, split.n_items, CPU, args.score)

    check_top_n("SVAE-PyTorch", tmp_path, monkeypatch, evaluate_with, holdout)
