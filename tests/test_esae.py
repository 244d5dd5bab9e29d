"""ESAE-PyTorch: the EASE solution, learning planted structure, and main.py end to end."""
import json
import shutil
import zipfile

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from conftest import (REPO, SHARED_DATA, keys_naming_test, load_module, planted_top_n_rows,
                      popularity_and_cooccurrence, read_history, read_results, run_main,
                      run_script, write_ratings)

FOLDER = "ESAE-PyTorch"


@pytest.fixture(scope="module")
def modules():
    return {name: load_module(FOLDER, name) for name in ("data", "model", "metrics")}


def test_ease_equals_direct_numpy_solution(modules):
    rng = np.random.RandomState(0)
    X = (rng.rand(40, 12) < 0.3).astype(np.float64)
    lam = 3.0
    P = np.linalg.inv(X.T @ X + lam * np.eye(12))
    expected = np.eye(12) - P / np.diag(P)  # I - P diag(1/diag(P))
    weights = modules["model"].ease_weights(
        modules["model"].gram_matrix(sp.csr_matrix(X), torch.device("cpu")), lam)
    assert weights.dtype == torch.float64
    np.testing.assert_allclose(weights.numpy(), expected, atol=1e-12)
    assert np.all(np.diag(weights.numpy()) == 0)


def test_ease_rejects_non_positive_lambda(modules):
    with pytest.raises(ValueError):
        modules["model"].ease_weights(torch.eye(3, dtype=torch.float64), 0.0)


def test_ease_beats_popularity_on_planted_clusters(modules, top_n_file):
    """Popularity ranks like chance on the planted clusters (NDCG@10 about 0.05); plain item
    co-occurrence reaches about 0.63, and EASE about 0.64: it must reach 95% of it."""
    data, model, metrics = modules["data"], modules["model"], modules["metrics"]
    split = data.split_top_n(data.load_ratings(top_n_file), heldout_users=200)
    weights = model.ease_weights(model.gram_matrix(split.train, torch.device("cpu")), 50.0)
    test = split.test
    ease = metrics.ranking_metrics(model.scores(weights, test.fold_in), test.fold_in,
                                   test.target)
    popular, cooccurring = popularity_and_cooccurrence(metrics, split)
    assert ease["ndcg@10"] > 0.95 * cooccurring["ndcg@10"], (ease, cooccurring)
    assert ease["recall@10"] > 0.95 * cooccurring["recall@10"], (ease, cooccurring)
    assert ease["ndcg@10"] > popular["ndcg@10"] + 0.4


def read_comet_archive(run_dir):
    archives = list(run_dir.glob("*.zip"))
    assert len(archives) == 1, f"expected one Comet offline archive in {run_dir}"
    with zipfile.ZipFile(archives[0]) as archive:
        return "\n".join(archive.read(name).decode("utf-8", "replace")
                         for name in archive.namelist() if name.endswith(".json"))


def closed_form_test_metrics(modules, ratings_file, lam, ks=(10, 20, 50, 100)):
    """The test metrics of EASE computed here in NumPy: P = (G + lam I)^-1 with G = X^T X,
    B = I - P diag(1 / diag(P)), scores = X_test B, ranked by the folder's metrics.py."""
    data, metrics = modules["data"], modules["metrics"]
    split = data.split_top_n(data.load_ratings(ratings_file), heldout_users=200)
    X = split.train.toarray().astype(np.float64)
    P = np.linalg.inv(X.T @ X + lam * np.eye(X.shape[1]))
    B = np.eye(X.shape[1]) - P / np.diag(P)
    test = split.test
    return metrics.ranking_metrics(test.fold_in.toarray() @ B, test.fold_in, test.target,
                                   list(ks))


def test_main_end_to_end_with_offline_comet(modules, top_n_file, tmp_path):
    run_dir = tmp_path / "run"
    # validation NDCG@100 on this split: about 0.624, 0.627, 0.620 -> lambda 10 in the middle
    done = run_main(FOLDER, "--data-dir", top_n_file.parent, "--out-dir", run_dir,
                    "--heldout-users", "200", "--lambdas", "1,10,50", "--comet", "offline",
                    "--quiet")
    assert done.returncode == 0, done.stderr
    results = read_results(run_dir)
    lines = read_history(run_dir)
    assert not any(keys_naming_test(line) for line in lines), lines  # validation only
    assert [line["lambda"] for line in lines] == [1.0, 10.0, 50.0]
    best = max(lines, key=lambda line: line["validation"]["ndcg@100"])
    assert results["selected"]["lambda"] == best["lambda"]
    assert results["validation"] == best["validation"]
    expected = closed_form_test_metrics(modules, top_n_file, best["lambda"])
    assert results["test"] == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert results["test"]["n_users"] > 150
    assert results["data_sha256"] == load_module(FOLDER, "data").load_ratings(
        top_n_file).sha256
    assert (run_dir / "model.pt").is_file() and (run_dir / "config.json").is_file()
    logged = read_comet_archive(run_dir)
    assert "test_ndcg@100" in logged and "val_ndcg@100" in logged
    assert "comet upload" in done.stdout


def test_main_runs_from_inside_its_folder_with_default_locations(tmp_path):
    """A copy of the folder in a repository layout of its own: run from inside the folder
    with neither --data-dir nor --out-dir, it reads REPO/ml-1m/ratings.dat and writes its
    run folder under REPO/runs/ESAE-PyTorch/, whatever the working directory."""
    repo = tmp_path / "REPO"
    shutil.copytree(REPO / FOLDER, repo / FOLDER,
                    ignore=shutil.ignore_patterns("__pycache__", "runs", "*.zip"))
    if (REPO / "runs.py").is_file():  # a shared run module at the top, if there is one
        shutil.copy(REPO / "runs.py", repo / "runs.py")
    write_ratings(repo / "ml-1m" / "ratings.dat", *planted_top_n_rows())
    done = run_script(repo / FOLDER / "main.py", "--heldout-users", "200", "--lam", "50",
                      "--comet", "off", "--quiet", "--no-download", cwd=repo / FOLDER)
    assert done.returncode == 0, done.stderr
    run_dirs = list((repo / "runs" / FOLDER).iterdir())
    assert len(run_dirs) == 1, run_dirs
    results = read_results(run_dirs[0])
    assert results["data_sha256"] == load_module(FOLDER, "data").load_ratings(
        repo / "ml-1m" / "ratings.dat").sha256
    assert sorted(p.name for p in repo.iterdir()) == [FOLDER, "ml-1m", "runs"] + (
        ["runs.py"] if (REPO / "runs.py").is_file() else [])


@pytest.mark.parametrize("flag", [["--lam", "-1"], ["--lambdas", "100,inf"], ["--ks", "10,-5"],
                                  ["--device", "tpu"]])
def test_bad_flags_give_argparse_errors(flag):
    done = run_main(FOLDER, *flag)
    assert done.returncode == 2
    # the usage line names every flag: the error line itself must name the refused one
    assert f"error: argument {flag[0]}: " in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_missing_data_without_download_is_one_clear_error(tmp_path):
    done = run_main(FOLDER, "--data-dir", tmp_path / "empty", "--no-download", "--comet", "off",
                    "--out-dir", tmp_path / "run")
    assert done.returncode != 0
    assert "ratings.dat not found" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()  # no empty run folder left behind


def test_malformed_file_is_one_clear_error(tmp_path):
    path = tmp_path / "ratings.dat"
    path.write_text("1::10::5::100\n1;11;5;101\n")
    done = run_main(FOLDER, "--data-dir", tmp_path, "--comet", "off")
    assert done.returncode != 0
    assert f"{path}, line 2" in done.stderr and "Traceback" not in done.stderr


def test_temporal_holdout_without_timestamps_is_one_clear_error(tmp_path):
    users, items, values, _ = planted_top_n_rows()
    write_ratings(tmp_path / "ratings.dat", users, items, values)
    done = run_main(FOLDER, "--data-dir", tmp_path, "--heldout-users", "200",
                    "--holdout", "temporal", "--comet", "off")
    assert done.returncode != 0
    assert "timestamps" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.skipif(not (SHARED_DATA / "ratings.dat").is_file(),
                    reason=f"real MovieLens-1M not found at {SHARED_DATA}")
@pytest.mark.parametrize("holdout, floor", [("random", 0.41), ("temporal", 0.21)])
def test_real_data_smoke(tmp_path, holdout, floor):
    done = run_main(FOLDER, "--data-dir", SHARED_DATA, "--out-dir", tmp_path, "--lam", "1000",
                    "--holdout", holdout, "--no-download", "--comet", "off", "--quiet")
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["test"]["n_users"] == 600
    assert results["test"]["ndcg@100"] >= floor
    # popularity ranking on the same split: NDCG@100 about 0.22 (random), 0.14 (temporal)
    data, metrics = load_module(FOLDER, "data"), load_module(FOLDER, "metrics")
    split = data.split_top_n(data.load_ratings(SHARED_DATA / "ratings.dat"), holdout=holdout)
    popular, _ = popularity_and_cooccurrence(metrics, split)
    assert results["test"]["ndcg@100"] > popular["ndcg@100"] + 0.05, popular
