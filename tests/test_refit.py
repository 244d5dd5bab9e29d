"""--refit of the two rating folders (AutoRec-TensorFlow, NVIDIA-DeepRec-TensorFlow): after
the normal run, a fresh network trained on training + validation ratings for the best
epoch's number of epochs, evaluated once on the test set (issue #14).

In-process (main.py loaded with its own siblings): the refit's training matrix is exactly
training + validation, and the test ratings do not reach it (NaN test ratings give the same
refit weights). Through main.py: results.json's "refit" entry, refit_test_predictions.csv,
the refit checkpoint, the Comet metrics, the normal results unchanged, no "refit" without
the flag, --refit refused with --resume, and a resumed --refit run refitting at its end.
"""
import csv
import dataclasses
import json
import sys
import zipfile

import numpy as np
import pytest

from conftest import REPO, folder_imports, load_module, run_main
from rating_folders import RATING_FOLDER_SPECS


@pytest.fixture(scope="module", params=sorted(RATING_FOLDER_SPECS))
def rating_folder(request):
    return RATING_FOLDER_SPECS[request.param]()


_MAINS = {}


def load_main(folder):
    if folder not in _MAINS:
        with folder_imports(folder):
            main = load_module(folder, "main")
            main.load_tensorflow()
        _MAINS[folder] = main
    return _MAINS[folder]


def planted_split(main, rating_file):
    return main.data.split_ratings(main.data.load_ratings(rating_file), seed=3)


# ---------------------------------------------------------------- in-process


def test_refit_matrix_is_training_plus_validation(rating_file, rating_folder):
    main = load_main(rating_folder.name)
    split = planted_split(main, rating_file)
    merged = main.refit_split(split)
    expected = split.train.toarray()
    val = split.validation
    assert (expected[val.users, val.items] == 0).all()  # a pair is in one part only
    expected[val.users, val.items] = val.ratings
    np.testing.assert_array_equal(merged.train.toarray(), expected)
    assert merged.train.nnz == split.train.nnz + len(val)
    test = split.test
    assert (merged.train.toarray()[test.users, test.items] == 0).all()
    assert len(merged.validation) == 0  # nothing to select on during a refit
    assert merged.test is split.test
    # and that matrix is the network's input, oriented like the normal run's
    args = main.parse_args(["--data-dir", str(rating_file.parent), *rating_folder.small])
    inputs = main.network_input(merged, args.variant).toarray()
    np.testing.assert_array_equal(inputs, rating_folder.input_matrix(merged).toarray())


def test_refit_weights_do_not_depend_on_test_ratings(rating_file, rating_folder):
    """Training twice for 2 epochs, once with every test rating NaN and its pair moved:
    the same weights (a test rating anywhere in the refit's input would give NaN)."""
    main = load_main(rating_folder.name)
    split = planted_split(main, rating_file)
    test = split.test
    garbage = dataclasses.replace(
        split, test=type(test)(test.users[::-1].copy(), test.items.copy(),
                               np.full(len(test), np.nan, np.float32)))
    args = main.parse_args(["--data-dir", str(rating_file.parent), *rating_folder.small])
    weights = []
    for which in (split, garbage):
        network, inputs, merged = main.refit_train(args, which, 2)
        assert merged.train.nnz == split.train.nnz + len(split.validation)
        weights.append([v.numpy() for v in network.variables])
    assert all(np.isfinite(w).all() for w in weights[0])
    for a, b in zip(*weights):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- main.py


def read_csv(path):
    with open(path) as handle:
        return list(csv.reader(handle))


def test_main_refit_writes_results_predictions_and_checkpoint(tmp_path, rating_file,
                                                              rating_folder):
    common = ("--data-dir", rating_file.parent, "--epochs", "4", "--quiet", "--no-download",
              *rating_folder.small)
    plain, refitted = tmp_path / "plain", tmp_path / "refit"
    done = run_main(rating_folder.name, "--out-dir", plain, "--comet", "off", *common)
    assert done.returncode == 0, done.stderr
    done = run_main(rating_folder.name, "--out-dir", refitted, "--comet", "offline",
                    "--refit", *common)
    assert done.returncode == 0, done.stderr
    a = json.loads((plain / "results.json").read_text())
    b = json.loads((refitted / "results.json").read_text())
    assert "refit" not in a and not (plain / "refit_test_predictions.csv").exists()
    assert not (plain / "checkpoints" / "refit").exists()
    # the normal run's results are the same with and without --refit
    assert (a["test"], a["validation"], a["best_epoch"]) == \
        (b["test"], b["validation"], b["best_epoch"])
    refit = b["refit"]
    assert set(refit) == {"epochs", "train_ratings", "test", "wall_seconds"}
    config = json.loads((refitted / "config.json").read_text())
    assert refit["epochs"] == b["best_epoch"]
    assert refit["train_ratings"] == config["n_train"] + config["n_validation"]
    assert set(refit["test"]) == set(b["test"])
    assert refit["test"]["n_ratings"] == b["test"]["n_ratings"]
    assert refit["test"]["rmse"] != b["test"]["rmse"]
    assert 0 < refit["wall_seconds"] <= b["wall_seconds"]
    # predictions: rows pair with test_predictions.csv
    ours = read_csv(refitted / "refit_test_predictions.csv")
    theirs = read_csv(refitted / "test_predictions.csv")
    assert len(ours) == len(theirs) == b["test"]["n_ratings"] + 1
    assert [row[:3] for row in ours] == [row[:3] for row in theirs]
    assert ours[0] == theirs[0]
    errors = np.array([float(row[3]) - float(row[2]) for row in ours[1:]])
    assert np.sqrt(np.mean(errors ** 2)) == pytest.approx(refit["test"]["rmse"], rel=1e-9)
    # the saved refit weights are the ones evaluated
    assert list((refitted / "checkpoints" / "refit").glob("ckpt-*.index"))
    import tensorflow as tf
    data, metrics, model = rating_folder.modules
    split = data.split_ratings(data.load_ratings(rating_file), seed=b["seed"])
    main = load_main(rating_folder.name)
    merged = main.refit_split(split)
    inputs = tf.constant(rating_folder.input_matrix(merged).toarray(), tf.float32)
    network = rating_folder.small_network(model, int(inputs.shape[1]), b["seed"])
    path = tf.train.latest_checkpoint(str(refitted / "checkpoints" / "refit"))
    tf.train.Checkpoint(model=network).restore(path).expect_partial()
    reloaded = metrics.rating_metrics(rating_folder.predict(model, network, inputs, split.test),
                                      split.test, merged.train)
    assert reloaded == pytest.approx(refit["test"], rel=1e-6)
    # Comet got the refit metrics under refit_ names
    archives = list(refitted.glob("*.zip"))
    assert len(archives) == 1
    with zipfile.ZipFile(archives[0]) as archive:
        logged = "".join(archive.read(name).decode("utf-8", "replace")
                         for name in archive.namelist() if name.endswith(".json"))
    assert "refit_test_rmse" in logged and "refit_train_loss" in logged


def test_refit_cannot_be_added_to_a_resumed_run(tmp_path, rating_folder):
    (tmp_path / "config.json").write_text(json.dumps({"args": {}}))
    done = run_main(rating_folder.name, "--resume", tmp_path, "--refit")
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "--refit" in errors[0], done.stderr


def test_a_resumed_refit_run_refits_at_its_end(tmp_path, rating_file, rating_folder):
    run_dir = tmp_path / "run"
    first = run_main(rating_folder.name, "--data-dir", rating_file.parent, "--out-dir", run_dir,
                     "--epochs", "3", "--stop-after", "2", "--refit", "--comet", "off",
                     "--quiet", *rating_folder.small)
    assert first.returncode == 0, first.stderr
    assert not (run_dir / "results.json").exists()
    assert not (run_dir / "refit_test_predictions.csv").exists()
    second = run_main(rating_folder.name, "--resume", run_dir, "--comet", "off", "--quiet")
    assert second.returncode == 0, second.stderr
    results = json.loads((run_dir / "results.json").read_text())
    assert results["refit"]["epochs"] == results["best_epoch"]
    assert (run_dir / "refit_test_predictions.csv").is_file()
