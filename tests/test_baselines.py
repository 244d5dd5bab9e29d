"""baselines.py: popularity, item-kNN, global mean and damped biases on the models' splits.

The baselines are called in-process where possible (baselines.py loaded by path); only the
command-line checks and the split comparisons with ESAE-PyTorch and AutoRec-TensorFlow run
subprocesses.
"""
import importlib.util
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from conftest import REPO, planted_rating_rows, run_main, write_ratings

SMALL_TOP_N = ("--heldout-users", "200", "--seed", "7", "--no-download", "--quiet")


@pytest.fixture(scope="module")
def baselines():
    spec = importlib.util.spec_from_file_location("baselines_under_test", REPO / "baselines.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["baselines_under_test"] = module
    spec.loader.exec_module(module)
    return module


def run_baselines(*args, timeout=300):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, str(REPO / "baselines.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


def no_log(line):
    pass


def held_out_metric(baselines, search, split, held_out, name):
    """Test `name` of a top-N baseline's search run on split."""
    _, _, score = search(split, no_log)
    return baselines.evaluate_top_n(score(held_out), held_out)[0][name]


# ---------------------------------------------------------------- planted data


def test_itemknn_beats_popularity_on_planted_clusters(baselines, top_n_file):
    # Measured: item-kNN 0.64, popularity 0.23, random scores 0.24 (seed 98765, 200 users).
    data = baselines.top_n_data
    split = data.split_top_n(data.load_ratings(top_n_file), heldout_users=200)
    knn = held_out_metric(baselines, baselines.run_itemknn, split, split.test, "ndcg@100")
    popularity = held_out_metric(baselines, baselines.run_popularity, split, split.test,
                             "ndcg@100")
    assert knn > popularity + 0.25, (knn, popularity)


def biased_rating_rows():
    """planted_rating_rows with strong planted user and item offsets added, clipped to 1..5."""
    users, items, ratings, times = planted_rating_rows()
    rng = np.random.RandomState(1)
    user_offset = rng.normal(0, 0.8, users.max() + 1)
    item_offset = rng.normal(0, 0.8, items.max() + 1)
    shifted = np.clip(np.rint(ratings + user_offset[users] + item_offset[items]), 1, 5)
    return users, items, shifted.astype(int), times


def test_bias_beats_global_mean_on_planted_offsets(baselines, tmp_path):
    # conftest's planted rating matrix is zero-mean low rank, with no user or item offsets
    # to find (bias 0.852 vs global mean 0.849 there), so offsets are planted on top of it.
    # Measured here: bias 0.82, global mean 1.26; item biases alone 1.05, user biases alone
    # 1.07, so the margin needs both.
    data, metrics = baselines.rating_data, baselines.rating_metrics
    path = write_ratings(tmp_path / "ratings.dat", *biased_rating_rows())
    split = data.split_ratings(data.load_ratings(path))
    rmse = {}
    for name, search in (("mean", baselines.run_global_mean), ("bias", baselines.run_bias)):
        _, _, predict = search(split, no_log)
        rmse[name] = metrics.rating_metrics(predict(split.test), split.test, split.train)["rmse"]
    assert rmse["bias"] < rmse["mean"] - 0.3, rmse


# ---------------------------------------------------------------- hand-worked values


def test_damped_biases_match_hand_arithmetic(baselines):
    # Training ratings (users x items; item 3 has none):
    #   u0: i0=5, i1=3     u1: i0=4, i2=1     u2: i1=2
    train = sp.csr_matrix(np.array([[5, 3, 0, 0], [4, 0, 1, 0], [0, 2, 0, 0]], np.float32))
    pairs = SimpleNamespace(users=np.array([0, 2, 1, 0]), items=np.array([2, 0, 1, 3]))
    # mu = (5 + 3 + 4 + 1 + 2) / 5 = 3.
    # Damping 1:
    #   b_i0 = ((5-3) + (4-3)) / (1+2) = 1;  b_i1 = ((3-3) + (2-3)) / (1+2) = -1/3;
    #   b_i2 = (1-3) / (1+1) = -1;           b_i3 = 0 (no ratings)
    #   b_u0 = ((5-3-1) + (3-3+1/3)) / (1+2) = 4/9;  b_u1 = ((4-3-1) + (1-3+1)) / 3 = -1/3;
    #   b_u2 = (2-3+1/3) / (1+1) = -1/3
    #   (u0,i2): 3 + 4/9 - 1 = 22/9;  (u2,i0): 3 - 1/3 + 1 = 11/3;
    #   (u1,i1): 3 - 1/3 - 1/3 = 7/3; (u0,i3): 3 + 4/9 = 31/9
    mu, b_user, b_item = baselines.bias_parameters(train, 1)
    assert mu == pytest.approx(3)
    assert b_item == pytest.approx([1, -1 / 3, -1, 0])
    assert b_user == pytest.approx([4 / 9, -1 / 3, -1 / 3])
    assert baselines.bias_predictions((mu, b_user, b_item), pairs) == pytest.approx(
        [22 / 9, 11 / 3, 7 / 3, 31 / 9])
    # Damping 0 (plain means): b_i0 = 3/2, b_i1 = -1/2, b_i2 = -2, b_i3 = 0 (0/0 -> 0);
    #   b_u0 = ((5-3-3/2) + (3-3+1/2)) / 2 = 1/2; (u0,i2): 3 + 1/2 - 2 = 3/2
    parameters = baselines.bias_parameters(train, 0)
    assert parameters[2] == pytest.approx([3 / 2, -1 / 2, -2, 0])
    assert baselines.bias_predictions(parameters, pairs)[0] == pytest.approx(3 / 2)
    assert baselines.global_mean(train) == pytest.approx(3)


def test_itemknn_scores_match_hand_cosines(baselines):
    # Binary training matrix: u0 {i0,i1}, u1 {i0,i1,i2}, u2 {i1,i2}, u3 {i0,i3}.
    # Column sizes 3, 3, 2, 1; co-occurrences (0,1)=2, (0,2)=1, (0,3)=1, (1,2)=2, others 0:
    #   cos(0,1) = 2/3, cos(0,2) = 1/sqrt(6), cos(0,3) = 1/sqrt(3), cos(1,2) = 2/sqrt(6).
    train = sp.csr_matrix(np.array([[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 0], [1, 0, 0, 1]],
                                   np.float32))
    similarity = baselines.cosine_similarity(train)
    order = baselines.neighbour_order(similarity)
    fold_in = sp.csr_matrix(np.array([[1, 0, 1, 0]], np.float32))     # items i0 and i2
    s6, s3 = np.sqrt(6), np.sqrt(3)
    # Every neighbour: score_j = cos(0,j) + cos(2,j), with cos(j,j) = 0.
    every = baselines.knn_scores(fold_in, baselines.keep_top_k(similarity, order, "all"))
    assert every[0] == pytest.approx([1 / s6, 2 / 3 + 2 / s6, 1 / s6, 1 / s3])
    # k = 1: column j keeps only its most similar item: j0 <- i1 (2/3 > 1/sqrt3 > 1/sqrt6),
    # j1 <- i2 (2/sqrt6 > 2/3), j2 <- i1, j3 <- i0. Only j1 (from i2) and j3 (from i0) score.
    one = baselines.knn_scores(fold_in, baselines.keep_top_k(similarity, order, 1))
    assert one[0] == pytest.approx([0, 2 / s6, 0, 1 / s3])
    # Popularity: the number of training users of each item, the same for every user.
    assert np.array_equal(baselines.popularity_scores(train, 2), [[3, 3, 2, 1]] * 2)


# ---------------------------------------------------------------- run folder


def test_itemknn_run_writes_search_lines_and_results(baselines, top_n_file, tmp_path):
    out = tmp_path / "knn"
    baselines.main(["itemknn", "--data-dir", str(top_n_file.parent), "--out-dir", str(out),
                    *SMALL_TOP_N])
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["k"] for line in lines] == [10, 20, 50, 100, "all"]     # 120 items
    best = max(lines, key=lambda line: line["validation"]["ndcg@100"])
    results = json.loads((out / "results.json").read_text())
    assert results["selected"] == {"k": best["k"]}
    assert results["validation"] == best["validation"]
    assert {k: results[k] for k in ("model", "folder", "protocol", "holdout", "best_epoch",
                                    "seed", "device")} == {
        "model": "Item-kNN", "folder": "baselines", "protocol": "B", "holdout": "random",
        "best_epoch": None, "seed": 7, "device": "cpu"}
    per_user = pd.read_csv(out / "test_per_user.csv")
    assert per_user["ndcg@100"].mean() == pytest.approx(results["test"]["ndcg@100"])
    assert json.loads((out / "config.json").read_text())["heldout_users"] == 200


# ---------------------------------------------------------------- identical splits


def test_top_n_split_is_the_models(top_n_file, tmp_path):
    esae = run_main("ESAE-PyTorch", "--data-dir", top_n_file.parent, "--out-dir",
                    tmp_path / "esae", "--lam", "100", "--comet", "off", *SMALL_TOP_N)
    assert esae.returncode == 0, esae.stderr
    ours = run_baselines("popularity", "--data-dir", top_n_file.parent, "--out-dir",
                         tmp_path / "pop", *SMALL_TOP_N)
    assert ours.returncode == 0, ours.stderr
    columns = ["user_id", "n_fold_in", "n_target"]
    theirs = pd.read_csv(tmp_path / "esae" / "test_per_user.csv")[columns]
    mine = pd.read_csv(tmp_path / "pop" / "test_per_user.csv")[columns]
    assert len(mine) > 150
    pd.testing.assert_frame_equal(mine, theirs)
    results = json.loads((tmp_path / "pop" / "results.json").read_text())
    assert results["selected"] == {} and results["model"] == "Popularity"


def test_rating_split_is_the_models(rating_file, tmp_path):
    autorec = run_main("AutoRec-TensorFlow", "--data-dir", rating_file.parent, "--out-dir",
                       tmp_path / "autorec", "--epochs", "1", "--hidden", "10", "--device",
                       "cpu", "--comet", "off", "--no-download", "--quiet")
    assert autorec.returncode == 0, autorec.stderr
    ours = run_baselines("global-mean", "--data-dir", rating_file.parent, "--out-dir",
                         tmp_path / "mean", "--no-download", "--quiet")
    assert ours.returncode == 0, ours.stderr
    columns = ["user_id", "movie_id", "rating"]
    theirs = pd.read_csv(tmp_path / "autorec" / "test_predictions.csv")[columns]
    mine = pd.read_csv(tmp_path / "mean" / "test_predictions.csv")[columns]
    pd.testing.assert_frame_equal(mine, theirs)
    results = json.loads((tmp_path / "mean" / "results.json").read_text())
    assert results["protocol"] == "A" and results["seed"] == 1994 and "holdout" not in results


# ---------------------------------------------------------------- command line


@pytest.mark.parametrize("args, refused", [
    (["nearest"], "nearest"),
    (["popularity", "--seed", "abc"], "--seed"),
    (["bias", "--seed=-1"], "--seed"),
])
def test_bad_arguments_are_refused_by_argparse(args, refused):
    result = run_baselines(*args, timeout=60)
    assert result.returncode == 2, result.stderr
    assert refused in result.stderr


def test_missing_data_with_no_download_is_one_error_line(tmp_path):
    out = tmp_path / "run"
    result = run_baselines("itemknn", "--data-dir", tmp_path / "empty", "--out-dir", out,
                           "--no-download", "--quiet", timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and "ratings.dat not found" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()
