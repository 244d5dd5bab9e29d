"""recommend.py of the two rating folders (AutoRec-TensorFlow, NVIDIA-DeepRec-TensorFlow):
recommendations from a trained run folder.

Three tiny runs are trained once, through each folder's main.py, on a planted file where
each of three groups of users gives 5 to its own group of 8 movies and 1 or 2 to the others,
plus one movie and one user whose single rating the split holds out (cold start):
I-AutoRec, U-AutoRec and DeepRec (user variant). The checks:

- a new user who gave 5 to three movies of one taste gets that taste's other movies first
  (U-AutoRec, DeepRec); I-AutoRec refuses a new user (as does DeepRec's item variant) and
  recommends a known user's taste;
- a known user's training ratings given as a history give the same list as --user; the
  scores (every movie, --include-seen) and --movie equal the evaluation path of main.py:
  model.predict_pairs on the training matrix, then metrics.final_predictions (3.0 for cold
  pairs, clipped);
- movies rated in training (or in the history) are never recommended unless asked for;
  --users-file gives each user's --user list;
- each bad input ends with one `error: ...` line and no traceback;
- on a run trained on one's own half-star file (0.5..5), history ratings are accepted within
  that scale (0.5 yes, 0.25 and 5.5 no, with the line-numbered message naming 0.5..5) and a
  cold-start movie is shown at the scale's midpoint 2.75, as in metrics.py.

Most calls run recommend.main() in this process (TensorFlow is imported once), with the
folder's data, metrics and model modules lent under their plain names as a script sees
them; a few run the script in a subprocess, as a user does.
"""
import csv
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, load_module, write_ratings

AUTOREC, DEEPREC = "AutoRec-TensorFlow", "NVIDIA-DeepRec-TensorFlow"
TASTES, MOVIES_PER_TASTE, USERS_PER_TASTE = 3, 8, 30
N_TASTE_MOVIES = TASTES * MOVIES_PER_TASTE
COLD_MOVIE = N_TASTE_MOVIES + 1            # rated once; the split holds that rating out
COLD_USER = TASTES * USERS_PER_TASTE + 1   # rates once; the split holds that rating out
TASTE_A = set(range(1, MOVIES_PER_TASTE + 1))
SMALL_RUNS = {  # name: (folder, main.py flags); a few seconds each on the planted file
    "i-autorec": (AUTOREC, ("--variant", "item", "--hidden", "20", "--lam", "1", "--lr",
                            "0.05", "--batch-size", "2")),
    "u-autorec": (AUTOREC, ("--variant", "user", "--hidden", "20", "--lam", "1", "--lr",
                            "0.03", "--batch-size", "8")),
    "deeprec": (DEEPREC, ("--variant", "user", "--hidden", "32,16", "--dropout", "0",
                          "--lr", "0.03", "--batch-size", "8")),
}
NEW_USER_RUNS = ("u-autorec", "deeprec")


def planted_taste_rows(seed=0):
    """User u (1..90) belongs to taste (u - 1) // 30 and movie m (1..24) to taste
    (m - 1) // 8; each user rates each movie with probability 0.6: 5 for a movie of the
    user's taste, 1 or 2 otherwise. Then movie 25 gets one rating (by user 1) and user 91
    gives one (to movie 1)."""
    rng = np.random.RandomState(seed)
    rows = []
    for user in range(TASTES * USERS_PER_TASTE):
        for movie in range(N_TASTE_MOVIES):
            if rng.rand() < 0.6:
                same = movie // MOVIES_PER_TASTE == user // USERS_PER_TASTE
                rows.append((user + 1, movie + 1, 5 if same else rng.randint(1, 3)))
    rows += [(1, COLD_MOVIE, 3), (COLD_USER, 1, 4)]
    users, movies, ratings = map(np.array, zip(*rows))
    return users, movies, ratings, 1_000_000 + np.arange(len(rows))


def taste_name(movie):
    return "ABC"[(movie - 1) // MOVIES_PER_TASTE] if movie <= N_TASTE_MOVIES else "None"


# ---------------------------------------------------------------- the trained runs


def cold_start_seed(ratings_path):
    """(seed, split): the first seed whose split holds out both cold-start ratings."""
    data = load_module(AUTOREC, "data")
    ratings = data.load_ratings(ratings_path)
    for seed in range(1, 500):
        split = data.split_ratings(ratings, seed=seed)
        if (split.train[:, -1].nnz == 0 and split.train[-1].nnz == 0
                and split.item_ids[-1] == COLD_MOVIE and split.user_ids[-1] == COLD_USER):
            return seed, split
    raise AssertionError("no seed holds out both cold-start ratings")


def train_runs(root, runs, seed, *data_flags):
    """Train each run {name: (folder, flags)} through its main.py, concurrently (2 cores);
    {name: run folder}."""
    folders = {name: root / name for name in runs}
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("COMET_API_KEY", None)
    jobs = {name: subprocess.Popen(
        [sys.executable, str(REPO / folder / "main.py"), "--comet", "off", "--quiet",
         "--no-download", *map(str, data_flags), "--out-dir", str(folders[name]), "--seed",
         str(seed), "--lr-decay", "1", *flags], stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, env=env)
        for name, (folder, flags) in runs.items()}
    for name, job in jobs.items():
        output = job.communicate(timeout=600)[0]
        assert job.returncode == 0, f"training {name} failed:\n{output}"
    return folders


class Trained:
    """The planted data, its split (of the runs' seed) and the run folders."""

    def __init__(self, root):
        self.data_dir = root / "data"
        ratings_path = write_ratings(self.data_dir / "ratings.dat", *planted_taste_rows())
        (self.data_dir / "movies.dat").write_text("".join(
            f"{m}::Taste {taste_name(m)} film {m} (2000)::Taste{taste_name(m)}\n"
            for m in range(1, COLD_MOVIE + 1)), encoding="latin-1")
        self.seed, self.split = cold_start_seed(ratings_path)
        self.runs = train_runs(root / "runs", SMALL_RUNS, self.seed, "--data-dir",
                               self.data_dir, "--epochs", 10)

    def training_ratings(self, user):
        """{movie id: rating} of user's training row."""
        row = self.split.train[np.flatnonzero(self.split.user_ids == user)[0]]
        return {int(self.split.item_ids[c]): float(r) for c, r in zip(row.indices, row.data)}

    def taste_a_user(self):
        """A user of taste A with at least two taste-A movies outside training."""
        for user in range(1, USERS_PER_TASTE + 1):
            if len(TASTE_A - set(self.training_ratings(user))) >= 2:
                return user
        raise AssertionError("no taste-A user with two unrated taste-A movies")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return Trained(tmp_path_factory.mktemp("recommend"))


# ---------------------------------------------------------------- calling recommend.py


class Recommend:
    """A folder's recommend.py loaded in this process, its modules lent as `data`,
    `metrics`, `model`, `runs` and `tf_runs` while it loads and while it runs."""

    def __init__(self, folder):
        self.folder = folder
        self.modules = {}
        for name in ("data", "metrics", "model", "runs", "tf_runs"):
            with self.lent():  # tf_runs imports runs
                self.modules[name] = load_module(folder, name)
        with self.lent():
            self.module = load_module(folder, "recommend")

    def lent(self):
        import contextlib

        @contextlib.contextmanager
        def lending():
            saved = {name: sys.modules.get(name) for name in self.modules}
            sys.modules.update(self.modules)
            try:
                yield
            finally:
                for name, module in saved.items():
                    if module is None:
                        sys.modules.pop(name, None)
                    else:
                        sys.modules[name] = module
        return lending()

    def __call__(self, capsys, *argv):
        """(exit code, stdout, stderr) of recommend.main(argv)."""
        capsys.readouterr()
        code = 0
        with self.lent():
            try:
                self.module.main([str(a) for a in argv])
            except SystemExit as done:
                code = done.code
        out, err = capsys.readouterr()
        if isinstance(code, str):  # sys.exit("error: ..."): Python prints it, exit status 1
            err, code = err + code + "\n", 1
        return code, out, err


RECOMMEND = {}


def recommend(folder):
    if folder not in RECOMMEND:
        RECOMMEND[folder] = Recommend(folder)
    return RECOMMEND[folder]


def run_recommend(trained, name, capsys, *argv):
    folder = SMALL_RUNS[name][0]
    return recommend(folder)(capsys, trained.runs[name], *argv)


def run_json(trained, name, capsys, *argv):
    code, out, err = run_recommend(trained, name, capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def listed(document):
    return [(entry["movie_id"], entry["score"]) for entry in document["recommendations"]]


def script(folder, *argv):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, str(REPO / folder / "recommend.py"),
                           *map(str, argv)], capture_output=True, text=True, env=env,
                          timeout=300)


def evaluation_path(trained, name, users, movies):
    """Final predictions for the (user id, movie id) pairs as main.py's evaluate makes
    them: the run's network with its best weights, the training matrix as its input,
    model.predict_pairs, then metrics.final_predictions."""
    import tensorflow as tf
    folder, flags = SMALL_RUNS[name]
    modules = recommend(folder).modules
    model, metrics = modules["model"], modules["metrics"]
    split, variant = trained.split, flags[flags.index("--variant") + 1]
    matrix = split.train.T if variant == "item" else split.train
    inputs = tf.constant(matrix.toarray(), tf.float32)
    if folder == AUTOREC:
        network = model.AutoRec(int(inputs.shape[1]), 20, seed=trained.seed)
    else:
        network = model.DeepAutoEncoder(int(inputs.shape[1]), (32, 16), 0.0,
                                        seed=trained.seed)
    state = json.loads((trained.runs[name] / "train_state.json").read_text())
    tf.train.Checkpoint(model=network).restore(state["best"]["checkpoint"]).expect_partial()
    rows = np.searchsorted(split.user_ids, users)
    cols = np.searchsorted(split.item_ids, movies)
    pairs = (cols, rows) if variant == "item" else (rows, cols)
    outputs = model.predict_pairs(network, inputs, *pairs)
    return metrics.final_predictions(outputs, rows, cols, split.train)


# ---------------------------------------------------------------- tastes


@pytest.mark.parametrize("name", NEW_USER_RUNS)
def test_a_new_user_with_one_taste_gets_that_taste_first(trained, name, capsys, tmp_path):
    history = tmp_path / "history.txt"
    history.write_text("1::5\n2::5::978300760\n\n3::5\n")
    from_file = run_json(trained, name, capsys, "--history-file", history, "-k", "30")
    from_flag = run_json(trained, name, capsys, "--history", "1:5,2:5,3:5", "-k", "30")
    assert listed(from_file) == listed(from_flag)
    ranked = [movie for movie, _ in listed(from_file)]
    assert set(ranked[:5]) == TASTE_A - {1, 2, 3}  # the taste's other five movies on top
    assert not {1, 2, 3} & set(ranked)  # the history's movies are not recommended
    assert len(ranked) == COLD_MOVIE - 3  # every other movie, the cold one included
    scores = [score for _, score in listed(from_file)]
    assert scores == sorted(scores, reverse=True)  # the cold movie ranks at its 3.0
    assert dict(listed(from_file))[COLD_MOVIE] == 3.0
    entry = from_file["recommendations"][0]
    assert entry["title"] == f"Taste A film {entry['movie_id']} (2000)"
    assert entry["genres"] == "TasteA" and entry["rank"] == 1
    assert from_file["query"]["history"] == [{"movie_id": m, "rating": 5.0} for m in (1, 2, 3)]


@pytest.mark.parametrize("name", ["i-autorec", "deeprec-item"])
def test_the_item_variants_cannot_take_a_new_user(trained, name, tmp_path):
    """I-AutoRec, and DeepRec's item variant (the DeepRec run with config.json saying
    variant item: the refusal comes from config.json, before any weight is read)."""
    run_dir = trained.runs.get(name)
    if name == "deeprec-item":
        run_dir = shutil.copytree(trained.runs["deeprec"], tmp_path / "deeprec-item")
        config = json.loads((run_dir / "config.json").read_text())
        config["args"]["variant"] = "item"
        (run_dir / "config.json").write_text(json.dumps(config))
    folder = DEEPREC if name == "deeprec-item" else AUTOREC
    done = script(folder, run_dir, "--history", "1:5,2:5")
    assert done.returncode != 0 and done.stdout == ""
    assert "cannot take a new user without retraining" in done.stderr
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1
    assert "Traceback" not in done.stderr


def test_i_autorec_recommends_a_known_users_taste(trained):
    """The whole script, as a user runs it: the table of a taste-A user's top K."""
    user = trained.taste_a_user()
    unrated = TASTE_A - set(trained.training_ratings(user))
    done = script(AUTOREC, trained.runs["i-autorec"], "--user", user, "-k", len(unrated))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"{AUTOREC} (I-AutoRec, best epoch ")
    assert lines[1].split() == ["rank", "movie_id", "score", "title", "genres"]
    table = [line.split() for line in lines[2:]]
    assert [int(row[0]) for row in table] == list(range(1, len(unrated) + 1))
    assert {int(row[1]) for row in table} == unrated
    assert {row[-1] for row in table} == {"TasteA"}
    assert done.stderr == ""


# ---------------------------------------------------------------- the evaluation path


@pytest.mark.parametrize("name", NEW_USER_RUNS)
def test_a_known_users_ratings_as_a_history_give_the_users_list(trained, name, capsys,
                                                                 tmp_path):
    user = trained.taste_a_user()
    ratings = trained.training_ratings(user)
    history = tmp_path / "history.txt"
    history.write_text("".join(f"{m}::{r:g}\n" for m, r in ratings.items()))
    as_user = run_json(trained, name, capsys, "--user", user, "-k", 10)
    as_history = run_json(trained, name, capsys, "--history-file", history, "-k", 10)
    assert [m for m, _ in listed(as_user)] == [m for m, _ in listed(as_history)]
    np.testing.assert_allclose([s for _, s in listed(as_user)],
                               [s for _, s in listed(as_history)], atol=1e-5)


@pytest.mark.parametrize("name", list(SMALL_RUNS))
def test_scores_equal_the_evaluation_path(trained, name, capsys):
    """Every movie's score (--include-seen) for a taste-A user and for the cold user."""
    for user in (trained.taste_a_user(), COLD_USER):
        document = run_json(trained, name, capsys, "--user", user, "-k", 100,
                            "--include-seen")
        movies, scores = map(np.array, zip(*listed(document)))
        assert sorted(movies) == list(trained.split.item_ids)
        expected = evaluation_path(trained, name, np.full(len(movies), user), movies)
        np.testing.assert_allclose(scores, expected, atol=1e-5)
        assert scores[movies == COLD_MOVIE] == 3.0
        if user == COLD_USER:
            assert set(scores) == {3.0}


@pytest.mark.parametrize("name", list(SMALL_RUNS))
def test_movie_equals_the_evaluation_path(trained, name, capsys):
    user = trained.taste_a_user()
    for pair, cold in (((user, 4), False), ((user, 12), False), ((user, COLD_MOVIE), True),
                       ((COLD_USER, 4), True)):
        document = run_json(trained, name, capsys, "--user", pair[0], "--movie", pair[1])
        expected = evaluation_path(trained, name, np.array([pair[0]]), np.array([pair[1]]))
        prediction = document["prediction"]
        assert prediction["score"] == pytest.approx(float(expected[0]), abs=1e-5)
        assert prediction["cold_start"] is cold and prediction["movie_id"] == pair[1]
        assert 1 <= prediction["score"] <= 5
        if cold:
            assert prediction["score"] == 3.0


# ---------------------------------------------------------------- seen movies, many users


@pytest.mark.parametrize("name", list(SMALL_RUNS))
def test_seen_movies_are_left_out_unless_asked_for(trained, name, capsys, tmp_path):
    users = tmp_path / "users.txt"
    users.write_text("user_id\n" + "".join(f"{u}\n" for u in range(1, COLD_USER + 1)))
    output = tmp_path / "top.csv"
    code, out, err = run_recommend(trained, name, capsys, "--users-file", users, "-k", 5,
                                   "--output", output)
    assert code == 0, err
    assert out == "" and sorted(os.listdir(tmp_path)) == ["top.csv", "users.txt"]
    rows = list(csv.DictReader(io.StringIO(output.read_text())))
    assert list(rows[0]) == ["user_id", "rank", "movie_id", "score"]
    assert {int(r["user_id"]) for r in rows} == set(range(1, COLD_USER + 1))
    for row in rows:
        assert int(row["movie_id"]) not in trained.training_ratings(int(row["user_id"]))
    user = trained.taste_a_user()
    single = run_json(trained, name, capsys, "--user", user, "-k", 5)
    mine = [(int(r["movie_id"]), float(r["score"])) for r in rows
            if int(r["user_id"]) == user]
    assert [m for m, _ in mine] == [m for m, _ in listed(single)]
    assert [int(r["rank"]) for r in rows if int(r["user_id"]) == user] == [1, 2, 3, 4, 5]
    np.testing.assert_allclose([s for _, s in mine], [s for _, s in listed(single)],
                               atol=1e-5)
    seen = set(trained.training_ratings(user))
    everything = run_json(trained, name, capsys, "--user", user, "-k", 100,
                          "--include-seen")
    assert seen <= {m for m, _ in listed(everything)}
    code, out, err = run_recommend(trained, name, capsys, "--users-file", users, "-k", 5)
    assert code == 0 and out == output.read_text()  # without --output: the same, on stdout


# ---------------------------------------------------------------- errors


def error_cases(trained, folder, root):
    """(name, run folder, argv, what stderr must say) of each bad input, for the folder's
    user-input run (U-AutoRec or DeepRec)."""
    good = trained.runs["u-autorec" if folder == AUTOREC else "deeprec"]
    no_checkpoint = shutil.copytree(good, root / "no-checkpoint")
    shutil.rmtree(no_checkpoint / "checkpoints")
    no_config = shutil.copytree(good, root / "no-config")
    (no_config / "config.json").unlink()
    (root / "no-rating.txt").write_text("1::5\n2::4\n3\n")
    (root / "bad.txt").write_text("1::5\n2::five\n")
    (root / "unknown.txt").write_text("999::5\n998::4\n")
    (root / "users.txt").write_text("1\n2\n777\n")
    return [
        ("no checkpoint", no_checkpoint, ("--user", 1), "has no best checkpoint"),
        ("no config.json", no_config, ("--user", 1), "config.json not found"),
        ("not a folder", root / "nowhere", ("--user", 1), "no such run folder"),
        ("unknown user", good, ("--user", 777), "user 777 is not in the run's ratings.dat"),
        ("unknown movie", good, ("--user", 1, "--movie", 999),
         "movie 999 is not known to the model"),
        ("no known movie", good, ("--history-file", root / "unknown.txt"),
         "no movie of the history is known to the model"),
        ("k is 0", good, ("--user", 1, "-k", 0), "argument -k: must be a positive integer"),
        ("no history file", good, ("--history-file", root / "missing.txt"),
         f"--history-file {root / 'missing.txt'}: no such file"),
        ("bad rating", good, ("--history-file", root / "bad.txt"),
         f"{root / 'bad.txt'}, line 2: rating 'five' is not a number in 1..5"),
        ("no rating", good, ("--history-file", root / "no-rating.txt"),
         f"{root / 'no-rating.txt'}, line 3: no rating for movie 3"),
        ("ids only", good, ("--history", "1193,661"), "'1193' has no rating"),
        ("user and history", good, ("--user", 1, "--history", "1:5"),
         "argument --history: not allowed with argument --user"),
        ("unknown user in file", good, ("--users-file", root / "users.txt"),
         f"{root / 'users.txt'}, line 3: '777' is not a user of the run's ratings.dat"),
    ]


@pytest.mark.parametrize("folder", [AUTOREC, DEEPREC])
def test_bad_input_gives_one_error_line(trained, folder, capsys, tmp_path):
    """In this process: main() ends in SystemExit carrying the message (anything else, a
    traceback, fails the test), nothing on stdout. An unknown movie among known ones in a
    history is named in a warning and skipped."""
    for name, run_dir, argv, message in error_cases(trained, folder, tmp_path):
        code, out, err = recommend(folder)(capsys, run_dir, *argv)
        assert code not in (0, None), name
        assert message in err, (name, err)
        assert "Traceback" not in err and out == "", name
        assert "error: " in err.strip().splitlines()[-1], (name, err)
    name = "u-autorec" if folder == AUTOREC else "deeprec"
    code, out, err = run_recommend(trained, name, capsys, "--history", "999:5,1:5,2:5",
                                   "--json")
    assert code == 0 and err.startswith("warning: --history: movie 999 is not known")
    assert json.loads(out)["query"]["history"] == [{"movie_id": 1, "rating": 5.0},
                                                   {"movie_id": 2, "rating": 5.0}]


@pytest.mark.parametrize("folder", [AUTOREC, DEEPREC])
def test_bad_input_as_a_script_has_no_traceback(trained, folder, tmp_path):
    cases = {name: case for name, *case in error_cases(trained, folder, tmp_path)}
    for name in ("no checkpoint", "no config.json", "unknown user", "no rating",
                 "user and history"):
        run_dir, argv, message = cases[name]
        done = script(folder, run_dir, *argv)
        assert done.returncode != 0 and done.stdout == "", name
        assert message in done.stderr, (name, done.stderr)
        assert "Traceback" not in done.stderr, name


# ---------------------------------------------------------------- the run's rating scale


@pytest.fixture(scope="module")
def half_star(tmp_path_factory):
    """(own ratings file, {name: run folder}) of one-epoch U-AutoRec and DeepRec runs on the
    planted tastes with half stars: 1 -> 0.5, 2 -> 1.5, 3 -> 2.5, 4 -> 3.5, 5 stays. The rows
    are those of the planted file, so the same seed holds out both cold-start ratings."""
    root = tmp_path_factory.mktemp("half-star")
    users, movies, ratings, times = planted_taste_rows()
    halves = np.where(ratings == 5, 5.0, ratings - 0.5)
    path = root / "data" / "half.dat"
    path.parent.mkdir()
    path.write_text("".join(f"{u}::{m}::{r:g}::{s}\n" for u, m, r, s in
                            zip(users, movies, halves, times)), encoding="latin-1")
    seed, split = cold_start_seed(path)
    assert (split.train.data.min(), split.train.data.max()) == (0.5, 5.0)
    runs = {name: (SMALL_RUNS[name][0], SMALL_RUNS[name][1] + ("--epochs", "1"))
            for name in NEW_USER_RUNS}
    return path, train_runs(root / "runs", runs, seed, "--ratings-file", path)


@pytest.mark.parametrize("name", NEW_USER_RUNS)
def test_history_ratings_follow_the_runs_scale(half_star, name, capsys, tmp_path):
    path, runs = half_star
    call = recommend(SMALL_RUNS[name][0])
    code, out, err = call(capsys, runs[name], "--history", "1:0.5,2:5,9:4.5", "--json")
    assert code == 0, err
    assert [entry["rating"] for entry in json.loads(out)["query"]["history"]] == [0.5, 5, 4.5]
    for bad in ("0.25", "5.5"):
        history = tmp_path / f"history-{bad}.txt"
        history.write_text(f"1::5\n\n2::{bad}\n")
        code, out, err = call(capsys, runs[name], "--history-file", history)
        assert code == 1 and out == ""
        assert err.strip().splitlines() == [
            f"error: {history}, line 3: rating '{bad}' is not a number in 0.5..5: "
            f"'2::{bad}'"], err
        code, out, err = call(capsys, runs[name], "--history", f"1:5,2:{bad}")
        assert code == 1 and out == ""
        assert err.strip().splitlines() == [
            f"error: --history: '2:{bad}': rating '{bad}' is not a number in 0.5..5"], err
    # the cold-start movie (its one rating held out) is shown at the midpoint 2.75
    code, out, err = call(capsys, runs[name], "--user", 1, "--movie", COLD_MOVIE, "--json")
    assert code == 0, err
    assert json.loads(out)["prediction"]["score"] == 2.75
