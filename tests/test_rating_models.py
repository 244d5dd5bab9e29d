"""The two rating-prediction folders (AutoRec-TensorFlow, NVIDIA-DeepRec-TensorFlow), each
through the same tests: Protocol A split and metric, cold start, leakage, end to end,
resume, NaN guard, missing data, real-data smoke. Their model-specific tests (learning,
bad flags, dropout) are in test_autorec.py and test_deeprec.py.
"""
import json
import zipfile

import numpy as np
import pytest
import scipy.sparse as sp

from conftest import (SHARED_DATA, keys_naming_test, planted_rating_rows, run_main,
                      write_ratings)
from rating_folders import RATING_FOLDER_SPECS, global_mean_rmse


@pytest.fixture(scope="module", params=sorted(RATING_FOLDER_SPECS))
def rating_folder(request):
    return RATING_FOLDER_SPECS[request.param]()


# ---------------------------------------------------------------- split and metric


def test_split_follows_protocol_a(tmp_path, rating_folder):
    data = rating_folder.modules[0]
    users = np.repeat(np.arange(1, 11), 5)
    items = np.tile(np.arange(1, 6), 10) + 10 * (users % 2)
    ratings = (users + items) % 5 + 1
    split = data.split_ratings(data.load_ratings(
        write_ratings(tmp_path / "ratings.dat", users, items, ratings)), seed=7)
    n = len(users)
    perm = np.random.RandomState(7).permutation(n)
    n_test, n_val = round(0.1 * n), round(0.1 * (n - round(0.1 * n)))
    assert (len(split.test), len(split.validation)) == (5, 4) == (n_test, n_val)
    user_ids, item_ids = np.unique(users), np.unique(items)
    np.testing.assert_array_equal(split.user_ids, user_ids)
    np.testing.assert_array_equal(split.item_ids, item_ids)
    np.testing.assert_array_equal(user_ids[split.test.users], users[perm[:n_test]])
    np.testing.assert_array_equal(item_ids[split.test.items], items[perm[:n_test]])
    np.testing.assert_array_equal(split.test.ratings, ratings[perm[:n_test]])
    np.testing.assert_array_equal(user_ids[split.validation.users],
                                  users[perm[n_test:n_test + n_val]])
    train = perm[n_test + n_val:]
    expected = np.zeros((10, len(item_ids)))
    expected[users[train] - 1, np.searchsorted(item_ids, items[train])] = ratings[train]
    np.testing.assert_array_equal(split.train.toarray(), expected)


def test_duplicate_pair_is_refused_with_its_line(tmp_path, rating_folder):
    data = rating_folder.modules[0]
    path = write_ratings(tmp_path / "ratings.dat", [1, 2, 1], [5, 5, 5], [3, 4, 2])
    with pytest.raises(data.DataError, match=r"line 3: user 1 rated movie 5 already on line 1"):
        data.split_ratings(data.load_ratings(path))


def test_rmse_hand_worked_with_clipping_and_cold_start(rating_folder):
    metrics = rating_folder.modules[1]
    # users 0..2, items 0..2; user 2 and item 2 have no training rating; the training
    # ratings span 1..5 (as on ML-1M): clip to 1..5, cold start 3.0
    train = sp.csr_matrix(np.array([[4, 1, 0], [5, 2, 0], [0, 0, 0]], dtype=np.float32))
    assert metrics.rating_scale(train) == (1.0, 5.0)
    users, items = np.array([0, 1, 1, 2, 0]), np.array([1, 0, 2, 0, 0])
    predictions = np.array([0.5, 6.0, 4.0, 1.0, 2.5])
    ratings = np.array([1.0, 5.0, 2.0, 4.0, 3.0])
    final = metrics.final_predictions(predictions, users, items, train)
    np.testing.assert_array_equal(final, [1.0, 5.0, 3.0, 3.0, 2.5])
    # errors 0, 0, 1, -1, -0.5 -> sqrt(2.25 / 5)
    pairs = type("Pairs", (), {"users": users, "items": items, "ratings": ratings})
    result = metrics.rating_metrics(predictions, pairs, train)
    assert result == {"rmse": pytest.approx(np.sqrt(2.25 / 5), abs=1e-12), "n_ratings": 5}
    # rmse takes final predictions as they are (no clipping of its own): errors 2, -4
    assert metrics.rmse([7.0, -3.0], [5.0, 1.0]) == pytest.approx(np.sqrt(10), abs=1e-12)


def pairs_of(users, items, ratings):
    return type("Pairs", (), {"users": np.array(users), "items": np.array(items),
                              "ratings": np.array(ratings, dtype=np.float32)})


def test_half_star_training_ratings_set_the_scale(rating_folder):
    """ML-10M on: ratings 0.5..5. A prediction of 0.2 is clipped to 0.5 (not 1.0), one of
    5.7 to 5, and a cold-start pair gets the midpoint 2.75 (not 3.0)."""
    metrics = rating_folder.modules[1]
    # user 2 and item 2 have no training rating
    train = sp.csr_matrix(np.array([[0.5, 3.5, 0], [5, 2, 0], [0, 0, 0]], dtype=np.float32))
    assert metrics.rating_scale(train) == (0.5, 5.0)
    assert metrics.cold_start_rating(train) == 2.75
    pairs = pairs_of([0, 1, 1, 2, 0], [1, 0, 2, 0, 0], [0.5, 4.5, 2.0, 4.0, 1.5])
    predictions = np.array([0.2, 5.7, 4.0, 1.0, 1.25])
    final = metrics.final_predictions(predictions, pairs.users, pairs.items, train)
    np.testing.assert_array_equal(final, [0.5, 5.0, 2.75, 2.75, 1.25])
    # errors 0, 0.5, 0.75, -1.25, -0.25: squares 0 + .25 + .5625 + 1.5625 + .0625
    assert metrics.rating_metrics(predictions, pairs, train) == {
        "rmse": pytest.approx(np.sqrt(2.4375 / 5), abs=1e-12), "n_ratings": 5}


def test_held_out_ratings_outside_the_training_range_leave_the_scale(tmp_path,
                                                                     rating_folder):
    """No leak: the scale is the training ratings' only. Training ratings 1..4 with every 5
    held out: predictions clip at 4, the cold start is 2.5, on test and validation alike."""
    data, metrics = rating_folder.modules[:2]
    users, items, ratings, _ = planted_rating_rows(n_users=60, n_items=40, seed=1)
    ratings = np.minimum(ratings, 4)
    n = len(users)
    n_held_out = round(0.1 * n) + round(0.1 * (n - round(0.1 * n)))  # test, validation
    held_out = np.random.RandomState(0).permutation(n)[:n_held_out]  # split_ratings' rows
    ratings[held_out[::7]] = 5
    split = data.split_ratings(data.load_ratings(
        write_ratings(tmp_path / "ratings.dat", users, items, ratings)), seed=0)
    assert split.train.data.max() == 4 and split.train.data.min() == 1
    assert (split.test.ratings == 5).any() and (split.validation.ratings == 5).any()
    assert metrics.rating_scale(split.train) == (1.0, 4.0)
    for pairs in (split.test, split.validation):
        final = metrics.final_predictions(np.full(len(pairs), 4.8), pairs.users,
                                          pairs.items, split.train)
        assert final.max() == 4.0 and set(final.tolist()) <= {4.0, 2.5}
        expected = np.sqrt(np.mean((final - pairs.ratings.astype(np.float64)) ** 2))
        assert metrics.rating_metrics(np.full(len(pairs), 4.8), pairs, split.train)[
            "rmse"] == pytest.approx(expected, abs=1e-12)
    # a pair-level hand check: prediction 6 on a 5 and 0 on a 1 -> 4 and 1: errors -1, 0
    train = sp.csr_matrix(np.array([[1, 4], [2, 3]], dtype=np.float32))
    assert metrics.rating_metrics([6.0, 0.0], pairs_of([0, 1], [1, 0], [5.0, 1.0]),
                                  train)["rmse"] == pytest.approx(np.sqrt(0.5), abs=1e-12)


def test_user_and_movie_seen_only_in_test_rows_get_3(tmp_path, rating_folder):
    data, metrics = rating_folder.modules[:2]
    users, items, ratings, _ = planted_rating_rows(n_users=60, n_items=40, seed=1)
    n = len(users) + 2
    test_rows = np.random.RandomState(0).permutation(n)[:2]  # the first two test rows:
    rest = np.setdiff1d(np.arange(n), test_rows)             # user 999's only rating and
    columns = []                                             # movie 888's only rating
    for values, special in ((users, [999, 1]), (items, [1, 888]), (ratings, [5, 5])):
        column = np.empty(n, dtype=np.int64)
        column[rest], column[test_rows] = values, special
        columns.append(column)
    users, items, ratings = columns
    split = data.split_ratings(data.load_ratings(
        write_ratings(tmp_path / "ratings.dat", users, items, ratings)), seed=0)
    user_row = np.flatnonzero(split.user_ids == 999)[0]
    item_col = np.flatnonzero(split.item_ids == 888)[0]
    assert split.train[user_row].nnz == 0 and split.train[:, item_col].nnz == 0
    pairs = split.test
    assert pairs.users[0] == user_row
    final = metrics.final_predictions(np.full(len(pairs), 4.4), pairs.users, pairs.items,
                                      split.train)
    cold = (pairs.users == user_row) | (pairs.items == item_col)
    assert final[cold].tolist() == [3.0] * cold.sum() and cold.sum() >= 1
    assert (final[~cold] == 4.4).all()


@pytest.mark.parametrize("chunk, max_floats", [(1024, 2 ** 24), (7, 500), (1, 1)])
def test_predictions_at_pairs_equal_the_full_output(rating_folder, chunk, max_floats):
    """predict_pairs, which reconstructs only the rows that hold a pair, a chunk of rows at
    a time: the values the whole network gives at those entries, whatever the chunking."""
    import tensorflow as tf
    model = rating_folder.modules[2]
    rng = np.random.default_rng(5)
    inputs = sp.random(90, 50, density=0.1, random_state=6, format="csr", dtype=np.float32)
    inputs.data = rng.integers(1, 6, inputs.nnz).astype(np.float32)
    network = rating_folder.small_network(model, 50, seed=4)
    for variable in network.trainable_variables:  # biases start at 0: make them count
        if len(variable.shape) == 1:
            variable.assign(rng.normal(size=variable.shape).astype(np.float32))
    rows, cols = rng.integers(0, 90, 700), rng.integers(0, 50, 700)
    rows[:3], cols[:3] = 89, [0, 49, 0]  # a repeated pair, the last row and column
    full = network(tf.constant(inputs.toarray())).numpy()
    outputs = model.predict_pairs(network, inputs, rows, cols, chunk=chunk,
                                  max_floats=max_floats)
    np.testing.assert_allclose(outputs, full[rows, cols], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- leakage


def test_changing_test_ratings_changes_no_prediction(tmp_path, rating_file, rating_folder):
    data = rating_folder.modules[0]
    users, items, ratings, times = planted_rating_rows()
    n = len(users)
    test_rows = np.random.RandomState(3).permutation(n)[:round(0.1 * n)]
    changed = ratings.copy()
    changed[test_rows] = 6 - changed[test_rows]
    assert (changed != ratings).any()
    other = write_ratings(tmp_path / "changed" / "ratings.dat", users, items, changed, times)
    split_a, predict_a = rating_folder.train(rating_file, epochs=rating_folder.leak_epochs)
    split_b, predict_b = rating_folder.train(other, epochs=rating_folder.leak_epochs)
    assert not np.array_equal(split_a.test.ratings, split_b.test.ratings)
    assert (split_a.train != split_b.train).nnz == 0
    for name in ("validation", "test"):
        np.testing.assert_array_equal(predict_a[name], predict_b[name])


# ---------------------------------------------------------------- main.py


def results_of(run_dir):
    return json.loads((run_dir / "results.json").read_text())


def history_of(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_main_end_to_end_with_offline_comet(tmp_path, rating_file, rating_folder):
    run_dir = tmp_path / "run"
    done = run_main(rating_folder.name, "--data-dir", rating_file.parent, "--out-dir", run_dir,
                    "--epochs", "12", "--comet", "offline", "--quiet", "--no-download",
                    *rating_folder.small)
    assert done.returncode == 0, done.stderr
    results = results_of(run_dir)
    assert results["protocol"] == "A" and results["folder"] == rating_folder.name
    assert set(results) >= {"model", "test", "validation", "best_epoch", "selected",
                            "wall_seconds", "peak_memory_mb", "seed", "data_sha256", "device"}
    history = history_of(run_dir)
    assert not any(keys_naming_test(record) for record in history), history
    assert [r["epoch"] for r in history] == list(range(1, len(history) + 1))
    best = min(history, key=lambda record: record["validation"]["rmse"])
    assert results["best_epoch"] == best["epoch"]
    assert results["validation"] == best["validation"]
    # main.py's own training learns: about 0.63 (AutoRec), 0.47 (DeepRec) against 0.85
    data = rating_folder.modules[0]
    split = data.split_ratings(data.load_ratings(rating_file), seed=results["seed"])
    baseline = global_mean_rmse(split, split.test)
    assert results["test"]["rmse"] < 0.85 * baseline, (results["test"], baseline)
    assert (run_dir / "config.json").is_file()
    assert list((run_dir / "checkpoints" / "best").glob("ckpt-*.index"))
    archives = list(run_dir.glob("*.zip"))
    assert len(archives) == 1
    with zipfile.ZipFile(archives[0]) as archive:
        logged = "".join(archive.read(name).decode("utf-8", "replace")
                         for name in archive.namelist() if name.endswith(".json"))
    assert "test_rmse" in logged and "val_rmse" in logged and "train_loss" in logged
    assert "Could not find cuda" not in done.stderr and "I0000" not in done.stderr


def test_resume_gives_the_uninterrupted_result(tmp_path, rating_file, rating_folder):
    common = ("--data-dir", rating_file.parent, "--epochs", "5", "--comet", "off", "--quiet",
              *rating_folder.small)
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert run_main(rating_folder.name, "--out-dir", whole, *common).returncode == 0
    first = run_main(rating_folder.name, "--out-dir", parts, "--stop-after", "2", *common)
    assert first.returncode == 0, first.stderr
    assert not (parts / "results.json").exists()
    second = run_main(rating_folder.name, "--resume", parts, "--comet", "off", "--quiet")
    assert second.returncode == 0, second.stderr
    a, b = results_of(whole), results_of(parts)
    assert (a["test"], a["validation"], a["best_epoch"]) == \
        (b["test"], b["validation"], b["best_epoch"])
    assert history_of(whole) == history_of(parts)


def test_patience_stops_the_run_and_test_is_the_reloaded_best_model(tmp_path, rating_file,
                                                                    rating_folder):
    """With a learning rate too large to keep improving, --patience 2 stops the run two
    evaluations after its best one, long before --epochs; the test metrics are those of the
    best checkpoint, reloaded here, and not those of the last weights."""
    run_dir = tmp_path / "run"
    done = run_main(rating_folder.name, "--data-dir", rating_file.parent, "--out-dir", run_dir,
                    "--epochs", "20", "--patience", "2", "--comet", "off", "--quiet",
                    *rating_folder.small, "--lr", rating_folder.stalling_lr)
    assert done.returncode == 0, done.stderr
    results, history = results_of(run_dir), history_of(run_dir)
    epochs = [record["epoch"] for record in history]
    assert epochs == list(range(1, len(history) + 1)) and len(history) < 20, epochs
    best = min(history, key=lambda record: record["validation"]["rmse"])
    assert results["best_epoch"] == best["epoch"] == epochs[-3]  # then 2 without progress
    assert results["validation"] == best["validation"]
    reloaded = rating_folder.checkpoint_metrics(run_dir, rating_file, results["seed"])
    assert reloaded["validation"] == pytest.approx(results["validation"], rel=1e-6)
    assert reloaded["test"] == pytest.approx(results["test"], rel=1e-6)
    last = rating_folder.checkpoint_metrics(run_dir, rating_file, results["seed"], "last")
    assert last["validation"] == pytest.approx(history[-1]["validation"], rel=1e-6)
    assert last["test"]["rmse"] != pytest.approx(results["test"]["rmse"], rel=1e-3)


def test_nan_loss_stops_with_message_and_keeps_best_checkpoint(tmp_path, rating_file,
                                                               rating_folder):
    run_dir = tmp_path / "run"
    first = run_main(rating_folder.name, "--data-dir", rating_file.parent, "--out-dir", run_dir,
                     "--epochs", "6", "--stop-after", "2", "--comet", "off", "--quiet",
                     *rating_folder.small)
    assert first.returncode == 0, first.stderr
    best = {p.name: p.read_bytes() for p in (run_dir / "checkpoints" / "best").iterdir()}
    config = json.loads((run_dir / "config.json").read_text())
    config["args"]["lr"] = 1e30  # a diverging learning rate from here on
    (run_dir / "config.json").write_text(json.dumps(config))
    done = run_main(rating_folder.name, "--resume", run_dir, "--comet", "off", "--quiet")
    assert done.returncode != 0
    assert "error: training loss became" in done.stderr and "at epoch 3" in done.stderr
    assert "best checkpoint (epoch" in done.stderr and "Traceback" not in done.stderr
    assert best == {p.name: p.read_bytes() for p in (run_dir / "checkpoints" / "best").iterdir()}
    assert not (run_dir / "results.json").exists()


def test_missing_data_without_download_is_one_clear_error(tmp_path, rating_folder):
    done = run_main(rating_folder.name, "--data-dir", tmp_path / "empty", "--no-download",
                    "--comet", "off", "--out-dir", tmp_path / "run")
    assert done.returncode != 0
    assert "error:" in done.stderr and "--no-download" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()  # no empty run folder left behind


@pytest.mark.skipif(not (SHARED_DATA / "ratings.dat").is_file(),
                    reason=f"real MovieLens-1M not found at {SHARED_DATA}")
def test_real_data_smoke(tmp_path, rating_folder):
    run_dir = tmp_path / "run"
    done = run_main(rating_folder.name, "--data-dir", SHARED_DATA, "--out-dir", run_dir,
                    "--epochs", "1", "--comet", "off", "--quiet", "--no-download",
                    *rating_folder.real_data_flags)
    assert done.returncode == 0, done.stderr
    results = results_of(run_dir)
    assert results["test"]["n_ratings"] == 100021 and results["validation"]["n_ratings"] == 90019
    # the mean training rating everywhere gives about 1.116 on this split
    data = rating_folder.modules[0]
    split = data.split_ratings(data.load_ratings(SHARED_DATA / "ratings.dat"),
                               seed=results["seed"])
    baseline = global_mean_rmse(split, split.test)
    assert 0.8 < results["test"]["rmse"] < baseline - 0.03, (results["test"], baseline)
