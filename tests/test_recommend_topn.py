"""recommend.py of the four top-N folders (issue #13): top K movies from a trained run.

One tiny run per folder is trained on the planted cluster data of conftest (cluster c holds
movies c*12+1 .. c*12+12) with a movies.dat beside it; recommend.py is then called
in-process (its main(argv), with its own folder's data and model modules lent to it) and,
for the error path, once as a real process. What is checked:

- a new user whose history is part of one planted taste gets the rest of that taste first;
- the evaluation path: --users-file for the test users ranks as main.py's evaluation scores
  rank (main.evaluate / main.score_users on the checkpoint's network, fold-in items masked);
  --user of a held-out user and --history of that user's fold-in items (in time order) give
  that same list;
- the movies the model had as input are never recommended, unless --include-seen;
- every bad input ends in one `error: ...` (or argparse) message, never a traceback;
- --json and --users-file (CSV) have their fields, K rows per user, and --output is written.
"""
import argparse
import csv
import io
import json
import shutil
import sys

import numpy as np
import pytest
import torch

from conftest import (REPO, folder_imports, TOP_N_FOLDERS, load_module, planted_top_n_rows, run_script,
                      write_ratings)

ITEMS_PER_CLUSTER = 12
HELDOUT = 200
TRAIN_FLAGS = {
    "ESAE-PyTorch": ("--lam", "50"),
    "VAE-PyTorch": ("--epochs", "3", "--eval-every", "3", "--batch-size", "100", "--lr", "3e-3",
                    "--hidden", "64", "--latent", "16"),
    "CDAE-PyTorch": ("--epochs", "4", "--eval-every", "4", "--batch-size", "64"),
    "SVAE-PyTorch": ("--epochs", "3", "--embed-dim", "32", "--rnn-dim", "32", "--hidden-dim",
                     "32", "--latent-dim", "16", "--batch-size", "32", "--lr", "0.003",
                     "--loss-steps", "32"),  # pinned: the default fell to 16 (issue 14)
}
CHECKPOINT = {"ESAE-PyTorch": "model.pt"}  # the others: best.pt


# ---------------------------------------------------------------- loading and calling


_LOADED = {}


def load_script(folder, name):
    if (folder, name) not in _LOADED:
        with folder_imports(folder):
            _LOADED[folder, name] = load_module(folder, name)
    return _LOADED[folder, name]


def recommend(folder, capsys, *argv):
    """recommend.py's main(argv) in-process: (exit code, stdout, stderr). A message given to
    sys.exit is added to stderr, as the interpreter would print it."""
    module = load_script(folder, "recommend")
    capsys.readouterr()
    code, message, threads = 0, "", torch.get_num_threads()
    try:
        module.main([str(arg) for arg in argv])
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) or stop.code is None else 1
        message = stop.code if isinstance(stop.code, str) else ""
    finally:
        torch.set_num_threads(threads)  # main() sets --threads for the whole process
    out, err = capsys.readouterr()
    return code or 0, out, err + (message + "\n" if message else "")


def recommend_json(folder, capsys, *argv):
    code, out, err = recommend(folder, capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def movie_list(document):
    return [entry["movie_id"] for entry in document["recommendations"]]


def read_csv(text):
    rows = list(csv.reader(io.StringIO(text)))
    return rows[0], rows[1:]


# ---------------------------------------------------------------- the runs


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Planted ratings (1500 users, 120 movies in 10 clusters) and a movies.dat."""
    folder = tmp_path_factory.mktemp("recommend") / "data"
    write_ratings(folder / "ratings.dat", *planted_top_n_rows())
    (folder / "movies.dat").write_text(
        "".join(f"{m}::Movie {m} ({2000 + m % 7})::Cluster{(m - 1) // ITEMS_PER_CLUSTER}\n"
                for m in range(1, 121)), encoding="latin-1")
    return folder


@pytest.fixture(scope="module", params=TOP_N_FOLDERS)
def trained(request, data_dir):
    """(folder, run folder): a tiny run of the folder's main.py on the planted data."""
    folder = request.param
    run_dir = data_dir.parent / folder
    done = run_script(REPO / folder / "main.py", "--comet", "off", "--quiet", "--no-download",
                      "--data-dir", data_dir, "--out-dir", run_dir, "--heldout-users", HELDOUT,
                      *TRAIN_FLAGS[folder], cwd=REPO)
    assert done.returncode == 0, done.stderr
    return folder, run_dir


@pytest.fixture(scope="module")
def split(data_dir):
    """The split the runs were trained on (default seed and settings, 200 held-out)."""
    data = load_module("ESAE-PyTorch", "data")
    return data.split_top_n(data.load_ratings(data_dir / "ratings.dat"), heldout_users=HELDOUT)


# ---------------------------------------------------------------- what the model learnt


def test_new_user_gets_the_rest_of_a_planted_taste(trained, capsys):
    folder, run_dir = trained
    for cluster in (0, 3, 7):
        first = cluster * ITEMS_PER_CLUSTER + 1
        history = list(range(first, first + 6))
        top = movie_list(recommend_json(folder, capsys, run_dir, "--history",
                                        ",".join(map(str, history)), "-k", "6"))
        rest = set(range(first + 6, first + ITEMS_PER_CLUSTER))
        assert len(top) == 6 and not set(top) & set(history)
        assert len(set(top) & rest) >= 5, (cluster, top)


# ---------------------------------------------------------------- the evaluation path


def evaluation_scores(folder, run_dir, split):
    """The test users' scores as main.py's evaluation computes them, from the checkpoint:
    recorded where main.evaluate hands them to metrics.per_user_metrics (SVAE:
    main.score_users, the function its evaluate calls)."""
    main = load_script(folder, "main")
    model = main.model  # the folder's model.py, as main.py imported it
    config = json.loads((run_dir / "config.json").read_text())
    checkpoint = torch.load(run_dir / CHECKPOINT.get(folder, "best.pt"), map_location="cpu",
                            weights_only=False)
    cpu = torch.device("cpu")
    if folder == "SVAE-PyTorch":
        net = model.SVAE(split.n_items, config["embed_dim"], config["rnn_dim"],
                         config["hidden_dim"], config["latent_dim"], config["dropout"])
        net.load_state_dict(checkpoint["model"])
        return main.score_users(net, split.test.fold_in_seqs, split.n_items, cpu,
                                config["score"])
    metrics = main.metrics
    recorded, original = [], metrics.per_user_metrics

    def record(scores, *args, **kwargs):
        recorded.append(np.array(scores, copy=True))
        return original(scores, *args, **kwargs)

    metrics.per_user_metrics = record
    try:
        if folder == "ESAE-PyTorch":
            main.evaluate(checkpoint["weights"], split.test, [10])
        elif folder == "VAE-PyTorch":
            net = model.MultVAE(split.n_items, config["hidden"], config["latent"],
                                config["dropout"], variational=True)
            net.load_state_dict(checkpoint["model"])
            main.evaluate(net, split.test, [10], config["batch_size"], cpu)
        else:
            net = model.CDAE(split.n_items, len(split.train_user_ids), config["hidden"], True)
            net.load_state_dict(checkpoint["model"])
            main.evaluate(net, split.test, argparse.Namespace(**config), [10], cpu)
    finally:
        metrics.per_user_metrics = original
    assert recorded  # VAE: one call per batch of users, in user order
    return np.concatenate(recorded)


def ranked(scores, fold_in, item_ids, k):
    """Movie ids of each row's top k, fold-in items masked, ties to the lower index."""
    masked = np.array(scores, dtype=np.float64)
    rows, cols = fold_in.nonzero()
    masked[rows, cols] = -np.inf
    return item_ids[np.argsort(-masked, axis=1, kind="stable")[:, :k]]


def test_recommendations_follow_the_evaluation_path(trained, split, tmp_path, capsys):
    folder, run_dir = trained
    k = 10
    expected = ranked(evaluation_scores(folder, run_dir, split), split.test.fold_in,
                      split.item_ids, k)

    users = tmp_path / "users.txt"
    users.write_text("".join(f"{user}\n" for user in split.test.user_ids))
    code, out, err = recommend(folder, capsys, run_dir, "--users-file", users, "-k", k)
    assert code == 0, err
    _, rows = read_csv(out)
    batch = np.array([int(row[2]) for row in rows]).reshape(len(split.test.user_ids), k)
    assert np.array_equal(batch, expected)

    for row in (0, 1, 57, 123):  # one user at a time, as a user of the file and as history
        user = split.test.user_ids[row]
        by_user = recommend_json(folder, capsys, run_dir, "--user", user, "-k", k)
        assert by_user["query"]["user_kind"] == "test"
        history = split.item_ids[split.test.fold_in_seqs[row]]  # in time order
        by_history = recommend_json(folder, capsys, run_dir, "--history",
                                    ",".join(map(str, history)), "-k", k)
        assert movie_list(by_user) == movie_list(by_history) == list(expected[row])
        assert np.allclose([e["score"] for e in by_user["recommendations"]],
                           [e["score"] for e in by_history["recommendations"]], atol=1e-5)


def test_history_file_is_time_ordered_and_drops_low_ratings(trained, split, tmp_path,
                                                             capsys):
    """A held-out user's own lines of ratings.dat, shuffled and with a low rating added,
    as a history file: the same list as --user (for SVAE the order matters)."""
    folder, run_dir = trained
    row = 5
    user = split.test.user_ids[row]
    movies = split.item_ids[split.test.fold_in_seqs[row]]
    lines = [f"{movie}::5::{1000 + t}" for t, movie in enumerate(movies)]
    low = int(np.setdiff1d(split.item_ids, movies)[0])
    lines = lines[::-1] + [f"{low}::2::5000"]
    history = tmp_path / "history.dat"
    history.write_text("\n".join(lines) + "\n")
    code, out, err = recommend(folder, capsys, run_dir, "--history-file", history, "--json")
    assert code == 0, err
    assert f"line {len(lines)} (movie {low}, rating 2)" in err and "min_rating 4" in err
    document = json.loads(out)
    assert document["query"]["history"] == [int(m) for m in movies]
    assert movie_list(document) == movie_list(
        recommend_json(folder, capsys, run_dir, "--user", user))


# ---------------------------------------------------------------- seen items


def test_seen_items_are_excluded_unless_asked(trained, split, tmp_path, capsys):
    folder, run_dir = trained
    everything = str(split.n_items)
    train_row = int(np.argmax(split.train.getnnz(axis=1)))
    cases = [(("--user", split.train_user_ids[train_row]), split.train[train_row].indices),
             (("--user", split.validation.user_ids[0]), split.validation.fold_in[0].indices),
             (("--history", "1,2,3,50"), np.searchsorted(split.item_ids, [1, 2, 3, 50]))]
    for query, seen in cases:
        seen = set(split.item_ids[seen].tolist())
        top = movie_list(recommend_json(folder, capsys, run_dir, *query, "-k", everything))
        assert len(top) == split.n_items - len(seen) and not set(top) & seen, query
        top = movie_list(recommend_json(folder, capsys, run_dir, *query, "-k", everything,
                                        "--include-seen"))
        assert len(top) == split.n_items and seen <= set(top), query

    users = tmp_path / "users.txt"
    users.write_text(f"{split.train_user_ids[train_row]}\n{split.validation.user_ids[0]}\n")
    code, out, err = recommend(folder, capsys, run_dir, "--users-file", users, "-k", "30")
    _, rows = read_csv(out)
    for user, (_, seen) in zip(users.read_text().split(), cases):
        listed = {int(r[2]) for r in rows if r[0] == user}
        assert len(listed) == 30 and not listed & set(split.item_ids[seen].tolist())


# ---------------------------------------------------------------- output formats


def test_json_table_and_users_csv(trained, split, tmp_path, capsys):
    folder, run_dir = trained
    user = split.train_user_ids[3]
    document = recommend_json(folder, capsys, run_dir, "--user", user, "-k", "4")
    assert document["query"] == {"user": int(user), "user_kind": "training"}
    entries = document["recommendations"]
    assert [e["rank"] for e in entries] == [1, 2, 3, 4]
    for entry in entries:
        assert set(entry) == {"rank", "movie_id", "title", "genres", "score"}
        movie = entry["movie_id"]
        assert entry["title"] == f"Movie {movie} ({2000 + movie % 7})"
        assert entry["genres"] == f"Cluster{(movie - 1) // ITEMS_PER_CLUSTER}"
    assert [e["score"] for e in entries] == sorted([e["score"] for e in entries], reverse=True)

    code, out, err = recommend(folder, capsys, run_dir, "--user", user, "-k", "4")
    assert code == 0 and out.count("\n") == 6  # heading, column names, 4 rows
    assert f"Movie {entries[0]['movie_id']} " in out.splitlines()[2]

    users = [split.train_user_ids[0], split.test.user_ids[0], split.validation.user_ids[0],
             split.train_user_ids[0]]
    users_file = tmp_path / "users.txt"
    users_file.write_text("".join(f"{u}\n" for u in users) + "\n")
    output = tmp_path / "top.csv"
    code, out, err = recommend(folder, capsys, run_dir, "--users-file", users_file, "-k", "7",
                               "--output", output)
    assert code == 0 and out == "", err
    header, rows = read_csv(output.read_text())
    assert header == ["user_id", "rank", "movie_id", "score"]
    assert [int(r[0]) for r in rows] == [u for u in users for _ in range(7)]
    assert [int(r[1]) for r in rows] == list(range(1, 8)) * len(users)
    assert rows[:7] == rows[-7:]  # a user given twice gets the same list twice
    assert sorted(p.name for p in tmp_path.iterdir()) == ["top.csv", "users.txt"]


def test_without_movies_dat_ids_only(trained, split, tmp_path, capsys):
    folder, run_dir = trained
    bare = tmp_path / "data"
    bare.mkdir()
    shutil.copy(run_dir.parent / "data" / "ratings.dat", bare / "ratings.dat")
    document = recommend_json(folder, capsys, run_dir, "--user", split.train_user_ids[0],
                              "--data-dir", bare, "-k", "3")
    assert [e["title"] for e in document["recommendations"]] == [None] * 3
    code, out, err = recommend(folder, capsys, run_dir, "--history", "1,2", "--data-dir", bare)
    assert code == 0 and "movies.dat not found" in err and "title" not in out


# ---------------------------------------------------------------- errors


def test_bad_input_gets_one_error_line(trained, split, tmp_path, capsys):
    folder, run_dir = trained
    no_checkpoint = tmp_path / "no_checkpoint"
    no_checkpoint.mkdir()
    shutil.copy(run_dir / "config.json", no_checkpoint / "config.json")
    no_config = tmp_path / "no_config"
    no_config.mkdir()
    checkpoint = CHECKPOINT.get(folder, "best.pt")
    shutil.copy(run_dir / checkpoint, no_config / checkpoint)
    malformed = tmp_path / "malformed.dat"
    malformed.write_text("1::5::100\n2:5\n")
    absent = 10 ** 6

    cases = [
        ((no_checkpoint, "--user", "1"), 1, f"has no checkpoint ({checkpoint})"),
        ((no_config, "--user", "1"), 1, "has no config.json"),
        ((run_dir, "--user", absent), 1, f"user {absent} not in"),
        ((run_dir, "--history", f"{absent},{absent + 1}"), 1,
         f"no movie of the history is among the model's 120 items (movies it has never "
         f"seen: {absent}, {absent + 1})"),
        ((run_dir, "--user", "1", "-k", "0"), 2, "argument -k: must be a positive integer"),
        ((run_dir, "--history-file", tmp_path / "absent.dat"), 1,
         f"history file {tmp_path / 'absent.dat'} not found"),
        ((run_dir, "--history-file", malformed), 1, f"{malformed}, line 2: expected "
                                                    "MovieID[::Rating[::Timestamp]]"),
        ((run_dir, "--user", "1", "--history", "1,2"), 2,
         "argument --history: not allowed with argument --user"),
        ((run_dir, "--users-file", tmp_path / "absent.txt"), 1, "users file"),
    ]
    if not torch.cuda.is_available():
        cases.append(((run_dir, "--user", "1", "--device", "cuda"), 1,
                      "no CUDA device is available"))
    for argv, expected_code, message in cases:
        code, out, err = recommend(folder, capsys, *argv)
        assert code == expected_code and message in err, (argv, err)
        assert out == "" and "Traceback" not in err
        if expected_code == 1:
            assert err.startswith("error: ") and err.count("\n") == 1, err

    # an unseen movie among known ones: named in a warning, skipped
    code, out, err = recommend(folder, capsys, run_dir, "--history", f"1,{absent},2", "--json")
    assert code == 0 and f"skipped: {absent}" in err
    assert json.loads(out)["query"]["history"] == [1, 2]


def test_error_in_a_real_process_has_no_traceback(trained):
    folder, run_dir = trained
    done = run_script(REPO / folder / "recommend.py", run_dir, "--user", 10 ** 6)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("error: user 1000000 not in ")
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def test_user_outside_the_split_has_their_positives_as_input(top_n_file, tmp_path, capsys):
    """A user of the file with too few positives to be in the split (EASE): the positives
    on the model's items are the input (a low rating is not), and are never recommended."""
    with open(top_n_file, "a") as out:
        out.write("9999::1::5::1\n9999::2::4::2\n9999::3::5::3\n9999::50::2::4\n")
    run_dir = tmp_path / "run"
    done = run_script(REPO / "ESAE-PyTorch" / "main.py", "--comet", "off", "--quiet",
                      "--no-download", "--data-dir", top_n_file.parent, "--out-dir", run_dir,
                      "--heldout-users", HELDOUT, "--lam", "50", cwd=REPO)
    assert done.returncode == 0, done.stderr
    document = recommend_json("ESAE-PyTorch", capsys, run_dir, "--user", "9999", "-k", "120")
    assert document["query"]["user_kind"] == "outside the split"
    assert document["n_input_items"] == 3
    top = movie_list(document)
    assert len(top) == 117 and not {1, 2, 3} & set(top) and 50 in top
    assert top == movie_list(recommend_json("ESAE-PyTorch", capsys, run_dir, "--history",
                                            "1,2,3", "-k", "120"))
