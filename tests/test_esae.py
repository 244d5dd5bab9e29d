"""ESAE-PyTorch: the EASE solution, learning planted structure, and main.py end to end."""
import json
import zipfile

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from conftest import SHARED_DATA, load_module, planted_top_n_rows, run_main, write_ratings

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
    data, model, metrics = modules["data"], modules["model"], modules["metrics"]
    split = data.split_top_n(data.load_ratings(top_n_file), heldout_users=200)
    weights = model.ease_weights(model.gram_matrix(split.train, torch.device("cpu")), 50.0)
    test = split.test
    ease = metrics.ranking_metrics(model.scores(weights, test.fold_in), test.fold_in,
                                   test.target)
    popularity = np.asarray(split.train.sum(axis=0)).ravel()
    popular = metrics.ranking_metrics(np.tile(popularity, (len(test.user_ids), 1)),
                                      test.fold_in, test.target)
    assert ease["ndcg@10"] > popular["ndcg@10"] + 0.2
    assert ease["recall@10"] > popular["recall@10"] + 0.2


def read_comet_archive(run_dir):
    archives = list(run_dir.glob("*.zip"))
    assert len(archives) == 1, f"expected one Comet offline archive in {run_dir}"
    with zipfile.ZipFile(archives[0]) as archive:
        return "\n".join(archive.read(name).decode("utf-8", "replace")
                         for name in archive.namelist() if name.endswith(".json"))


def test_main_end_to_end_with_offline_comet(top_n_file, tmp_path):
    run_dir = tmp_path / "run"
    done = run_main(FOLDER, "--data-dir", top_n_file.parent, "--out-dir", run_dir,
                    "--heldout-users", "200", "--lambdas", "10,100", "--comet", "offline",
                    "--quiet")
    assert done.returncode == 0, done.stderr
    results = json.loads((run_dir / "results.json").read_text())
    assert results["selected"]["lambda"] in (10.0, 100.0)
    assert results["test"]["n_users"] > 150 and 0 < results["test"]["ndcg@100"] <= 1
    assert results["data_sha256"] == load_module(FOLDER, "data").load_ratings(
        top_n_file).sha256
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["lambda"] for line in lines] == [10.0, 100.0]
    assert (run_dir / "model.pt").is_file() and (run_dir / "config.json").is_file()
    logged = read_comet_archive(run_dir)
    assert "test_ndcg@100" in logged and "val_ndcg@100" in logged
    assert "comet upload" in done.stdout


def test_main_runs_from_inside_its_folder(top_n_file, tmp_path):
    from conftest import REPO
    done = run_main(FOLDER, "--data-dir", top_n_file.parent, "--out-dir", tmp_path / "run",
                    "--heldout-users", "200", "--lam", "50", "--comet", "off", "--quiet",
                    cwd=REPO / FOLDER)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "run" / "results.json").is_file()


@pytest.mark.parametrize("flag", [["--lam", "-1"], ["--lambdas", "100,inf"], ["--ks", "10,-5"],
                                  ["--device", "tpu"]])
def test_bad_flags_give_argparse_errors(flag):
    done = run_main(FOLDER, *flag)
    assert done.returncode == 2
    assert "error:" in done.stderr and flag[0] in done.stderr
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
