"""Recommend movies with a trained AutoRec run: python AutoRec-TensorFlow/recommend.py --help

Loads the best checkpoint of a run folder written by main.py (RUN_DIR/checkpoints/best, the
checkpoint named in train_state.json) and the run's config.json, rebuilds the network with
the run's hyperparameters and the Protocol A split of the run's seed (PROTOCOLS.md), and
feeds the network the TRAINING matrix, exactly as main.py's evaluation does. A prediction
is the network's output, the midpoint of the training ratings' scale where the user or
the movie has no training rating (cold start), clipped to that scale (1..5 and 3.0 on
ML-1M): the same rule as metrics.py.

  --user ID          top K of a user of the file, movies rated in training left out
  --user ID --movie M  the predicted rating of one pair
  --history 1193:5,661:3 / --history-file FILE (MovieID::Rating lines; ratings within
                     the scale of the run's training ratings, 0.5..5 on ML-20M)
                     a new user (U-AutoRec only: the user's ratings are a new input row;
                     I-AutoRec's input is indexed by the training users, so it cannot
                     take a new user without retraining, and says so)
  --users-file FILE  top K of many users as CSV (user_id,rank,movie_id,score), scored in
                     groups of users (USERS_PER_GROUP x movies floats at a time), each
                     group in a few batched network calls

Movies are ranked by the model's output (cold-start movies at the midpoint), ties by movie
id; the score shown is the prediction clipped to the scale. Titles and genres come from
movies.dat beside ratings.dat when it is there.
"""
import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

import data
import metrics

FOLDER = Path(__file__).resolve().parent
MODEL_NAME = "AutoRec"
DEFAULT_VARIANT = "item"
VARIANT_NAMES = {"item": "I-AutoRec", "user": "U-AutoRec"}
DEFAULT_SEED = 1994
CHUNK = 1024  # rows per network call, as model.predict_pairs ...
MAX_FLOATS = 2 ** 24  # ... fewer when a dense chunk would hold more floats than this
MAX_GROUP_FLOATS = 2 ** 24  # --users-file: users per group x movies stays under this
NO_NEW_USER = ("I-AutoRec (variant item) reads each movie's ratings by the training users, so "
               "it cannot take a new user without retraining; use --user ID for a user of "
               "the file, or a run trained with --variant user")


class RecommendError(Exception):
    """Bad input: the message is printed as one `error: ...` line."""


# ---------------------------------------------------------------- command line


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text!r}")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text}")
    return value


def parse_rating(text, scale):
    """The rating text as a number within scale (low, high), or None when it is not one."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if scale[0] <= value <= scale[1] else None


def scale_text(scale):
    """(0.5, 5.0) -> '0.5..5'."""
    return f"{scale[0]:g}..{scale[1]:g}"


def history_pairs(text):
    """--history 1193:5,661:3 -> [('1193', '5'), ('661', '3')]: the ratings are checked
    against the run's scale once its data is loaded (history_columns)."""
    pairs = []
    for part in text.split(","):
        part = part.strip()
        if ":" not in part:
            raise argparse.ArgumentTypeError(
                f"{part!r} has no rating: this model needs ratings, give MovieID:Rating "
                f"pairs (e.g. 1193:5,661:3) or --history-file FILE with MovieID::Rating lines")
        movie, _, rating = part.partition(":")
        movie = movie.strip()  # the run's type of id: history_columns
        if not movie:
            raise argparse.ArgumentTypeError(f"{part!r}: no movie id")
        if movie in {m for m, _ in pairs}:
            raise argparse.ArgumentTypeError(f"movie {movie} is given twice")
        pairs.append((movie, rating.strip()))
    return pairs


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Recommend movies with a trained AutoRec run (its best checkpoint): "
                    "the top K of a user of the file, of a new user given by ratings "
                    "(U-AutoRec only), or of many users as CSV.",
        epilog="Example: python AutoRec-TensorFlow/recommend.py "
               "runs/AutoRec-TensorFlow/<timestamp> --user 1 -k 5")
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR",
                        help="run folder written by main.py (config.json, checkpoints/)")
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", metavar="ID",
                     help="a user id of the run's ratings.dat")
    who.add_argument("--history", type=history_pairs, metavar="MOVIE:RATING,...",
                     help="a new user's ratings, e.g. 1193:5,661:3, each within the scale "
                          "of the run's training ratings (U-AutoRec only)")
    who.add_argument("--history-file", type=Path, metavar="FILE",
                     help="a new user's ratings, one 'MovieID::Rating[::Timestamp]' a line "
                          "(U-AutoRec only)")
    who.add_argument("--users-file", type=Path, metavar="FILE",
                     help="one user id a line: write the top K of each as CSV "
                          "user_id,rank,movie_id,score")
    parser.add_argument("--movie", metavar="ID",
                        help="with --user or a history: the predicted rating of this movie")
    parser.add_argument("-k", type=positive_int, default=10,
                        help="number of movies to recommend (default: %(default)s)")
    parser.add_argument("--include-seen", action="store_true",
                        help="also rank the movies the user rated in training (or in the "
                             "history)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON document instead of a table")
    parser.add_argument("--output", type=Path, metavar="FILE",
                        help="with --users-file: write the CSV here (atomically) instead "
                             "of to stdout")
    parser.add_argument("--data-dir", type=Path,
                        help="folder holding the run's ratings file (ratings.dat for ML-1M) "
                             "(default: the data_dir recorded in the run's config.json)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: a GPU when TensorFlow sees one (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.movie is not None and args.users_file is not None:
        parser.error("--movie goes with --user, --history or --history-file, "
                     "not with --users-file")
    if args.output is not None and args.users_file is None:
        parser.error("--output goes with --users-file")
    if args.json and args.users_file is not None:
        parser.error("--json does not go with --users-file (which writes CSV)")
    return args


# ---------------------------------------------------------------- the run folder


class Run:
    """What recommend needs from a run folder: its settings and its best checkpoint."""

    def __init__(self, run_dir):
        self.dir = Path(run_dir)
        if not self.dir.is_dir():
            raise RecommendError(f"{self.dir}: no such run folder")
        config_path = self.dir / "config.json"
        if not config_path.is_file():
            raise RecommendError(f"{config_path} not found: {self.dir} is not a run folder "
                                 f"written by {FOLDER.name}/main.py")
        try:
            self.config = json.loads(config_path.read_text())
        except (ValueError, UnicodeDecodeError) as error:
            raise RecommendError(f"{config_path} is not valid JSON ({error})")
        if not isinstance(self.config, dict):
            raise RecommendError(f"{config_path} does not hold a JSON object")
        model_name = self.config.get("model", MODEL_NAME)
        if model_name != MODEL_NAME:
            raise RecommendError(f"{self.dir} is a run of {model_name}, not {MODEL_NAME}: "
                                 f"use that model folder's recommend.py")
        self.settings = self.config.get("args", self.config)
        self.variant = self.settings.get("variant", DEFAULT_VARIANT)
        if self.variant not in VARIANT_NAMES:
            raise RecommendError(f"{config_path}: unknown variant {self.variant!r}")
        self.seed = int(self.settings.get("seed", DEFAULT_SEED))
        self.checkpoint, self.best_epoch = self._best_checkpoint()

    def _best_checkpoint(self):
        """(path prefix of the best checkpoint, its epoch or None); the file names in
        train_state.json are taken relative to this folder, so a moved run still loads."""
        best_dir = self.dir / "checkpoints" / "best"
        name, epoch = None, None
        state_path = self.dir / "train_state.json"
        if state_path.is_file():
            try:
                best = json.loads(state_path.read_text()).get("best") or {}
            except (ValueError, UnicodeDecodeError, AttributeError) as error:
                raise RecommendError(f"{state_path} is not valid ({error})")
            if best.get("checkpoint"):
                name, epoch = Path(best["checkpoint"]).name, best.get("epoch")
        elif (best_dir / "checkpoint").is_file():  # the index tf.train.CheckpointManager keeps
            for line in (best_dir / "checkpoint").read_text().splitlines():
                if line.startswith("model_checkpoint_path:"):
                    name = Path(line.split(":", 1)[1].strip().strip('"')).name
        if name is None or not (best_dir / f"{name}.index").is_file():
            raise RecommendError(f"{self.dir} has no best checkpoint (checkpoints/best/, "
                                 f"named in train_state.json): the run has not finished an "
                                 f"evaluation yet, or this is not a run folder")
        return best_dir / name, epoch

    def build_network(self, model, n_inputs):
        """The network of main.py with the run's hyperparameters (weights not yet loaded)."""
        return model.AutoRec(n_inputs, self.hidden(), seed=self.seed)

    def hidden(self):
        return int(self.settings.get("hidden", 500))

    def shape(self):
        return f"hidden {self.hidden()}"

    def data_dir(self, override):
        if override is not None:
            return Path(override)
        return Path(self.settings.get("data_dir") or data.default_data_dir())

    def describe(self):
        epoch = f", best epoch {self.best_epoch}" if self.best_epoch is not None else ""
        return f"{FOLDER.name} ({VARIANT_NAMES[self.variant]}{epoch})"


def load_split(run, data_dir):
    """The run's Protocol A split, from the ratings file it was trained on (its data set's,
    or for a run on one's own file, the file of that name in data_dir)."""
    config = run.settings
    name = (Path(config["ratings_file"]).name if config.get("ratings_file") else
            data.ratings_file_name(config.get("dataset") or data.DEFAULT_DATASET))
    ratings_path = data_dir / name
    if not ratings_path.is_file():
        raise RecommendError(f"{ratings_path} not found (the run's data); pass --data-dir "
                             f"DIR, the folder holding the {name} the run was trained on")
    ratings = data.load_ratings(ratings_path, config.get("format"))
    expected = run.config.get("data_sha256")
    if expected is not None and expected != ratings.sha256:
        raise RecommendError(f"{ratings_path} differs from the file the run was trained on "
                             f"(sha256 {expected}): the split and the network's input would "
                             f"not be the run's; pass --data-dir with the right file")
    split = data.split_ratings(ratings, seed=run.seed)
    for key, found in (("n_users", len(split.user_ids)), ("n_items", len(split.item_ids))):
        if run.config.get(key) not in (None, found):
            raise RecommendError(f"{ratings_path} gives {found} {key[2:]}, the run had "
                                 f"{run.config[key]}")
    return split


def load_movies(data_dir, config):
    """{movie id: (title, genres)} of the run's MovieLens set (movies.dat in Latin-1,
    MovieID::Title::Genres, for ML-1M); {} without the file or for one's own file."""
    if config.get("ratings_file"):
        return {}
    dataset = config.get("dataset") or data.DEFAULT_DATASET
    path = data_dir / data.DATASETS[dataset].titles
    if not path.is_file():
        warn(f"{path} not found: movie ids only")
        return {}
    if dataset != "ml-1m":
        return data.read_titles(data_dir, dataset) or {}
    movies = {}
    for line in path.read_text(encoding="latin-1").splitlines():
        fields = line.split("::")
        if len(fields) == 3 and fields[0].strip().isdigit():
            movies[int(fields[0])] = (fields[1], fields[2])
    return movies


# ---------------------------------------------------------------- queries


def typed_id(text, like, what):
    """An id given as text, as the run's ids (like) are: int when they are integers, else
    the text; None stays None."""
    if text is None or like.dtype.kind not in "iu":
        return None if text is None else str(text).strip()
    text = str(text).strip()
    if not (text[1:] if text.startswith("-") else text).isdigit():
        raise RecommendError(f"{what}: {text!r} is not an id of the run's ratings file "
                             f"(its ids are integers)")
    return int(text)


def read_history_file(path, scale):
    """[(movie id, rating, line number)] of a file of 'MovieID::Rating[::Timestamp]' lines,
    every rating within scale (the run's training ratings' (low, high))."""
    if not path.is_file():
        raise RecommendError(f"--history-file {path}: no such file")
    entries, lines_of = [], {}
    for number, line in enumerate(path.read_text(encoding="latin-1").splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        fields = line.split("::")
        where = f"{path}, line {number}"
        if len(fields) > 3:
            raise RecommendError(f"{where}: expected MovieID::Rating[::Timestamp], found "
                                 f"{len(fields)} fields: {line[:80]!r}")
        if not fields[0].strip():
            raise RecommendError(f"{where}: no movie id: {line[:80]!r}")
        if len(fields) == 1:
            raise RecommendError(f"{where}: no rating for movie {fields[0]}: this model "
                                 f"needs MovieID::Rating lines (e.g. 1193::5)")
        rating = parse_rating(fields[1], scale)
        if rating is None:
            raise RecommendError(f"{where}: rating {fields[1]!r} is not a number in "
                                 f"{scale_text(scale)}: {line[:80]!r}")
        if len(fields) == 3 and not fields[2].strip().isdigit():
            raise RecommendError(f"{where}: timestamp {fields[2]!r} is not a non-negative "
                                 f"integer: {line[:80]!r}")
        movie = fields[0].strip()  # the run's type of id: history_columns
        if movie in lines_of:
            raise RecommendError(f"{where}: movie {movie} is rated already on line "
                                 f"{lines_of[movie]}")
        lines_of[movie] = number
        entries.append((movie, rating, number))
    if not entries:
        raise RecommendError(f"--history-file {path}: no ratings in the file")
    return entries


def history_columns(args, split):
    """The history as (item columns, ratings, the entries kept); a movie the model has no
    column for (no rating in the run's ratings.dat) is named in a warning and skipped.
    Ratings must lie within the scale of the run's training ratings."""
    scale = metrics.rating_scale(split.train)
    if args.history_file is not None:
        entries = read_history_file(args.history_file, scale)
        source = lambda number: f"{args.history_file}, line {number}"  # noqa: E731
    else:
        entries = [(movie, history_rating(movie, text, scale), None)
                   for movie, text in args.history]
        source = lambda number: "--history"  # noqa: E731
    column = {m.item(): c for c, m in enumerate(split.item_ids)}
    kept = []
    for movie, rating, number in entries:
        movie = typed_id(movie, split.item_ids, source(number))
        if movie not in column:
            warn(f"{source(number)}: movie {movie} is not known to the model (no rating of "
                 f"it in the run's ratings.dat); skipped")
            continue
        kept.append((movie, rating))
    if not kept:
        raise RecommendError("no movie of the history is known to the model: nothing to "
                             "recommend from")
    cols = np.array([column[m] for m, _ in kept], dtype=np.int64)
    return cols, np.array([r for _, r in kept], dtype=np.float32), kept


def history_rating(movie, text, scale):
    """A --history rating as a number within scale, else RecommendError."""
    rating = parse_rating(text, scale)
    if rating is None:
        raise RecommendError(f"--history: '{movie}:{text}': rating {text!r} is not a number "
                             f"in {scale_text(scale)}")
    return rating


def read_users_file(path, split):
    """Row indices of the users listed in path (one id a line; a header 'user_id' allowed)."""
    if not path.is_file():
        raise RecommendError(f"--users-file {path}: no such file")
    row = {str(u): r for r, u in enumerate(split.user_ids.tolist())}
    users = []
    for number, line in enumerate(path.read_text(encoding="latin-1").splitlines(), start=1):
        line = line.strip()
        if not line or (number == 1 and line == "user_id"):
            continue
        key = str(int(line)) if split.user_ids.dtype.kind in "iu" and line.isdigit() else line
        if key not in row:
            problem = ("is not a user id" if split.user_ids.dtype.kind in "iu" and
                       not line.isdigit() else "is not a user of the run's ratings.dat")
            raise RecommendError(f"{path}, line {number}: {line[:40]!r} {problem}")
        users.append(row[key])
    if not users:
        raise RecommendError(f"--users-file {path}: no user ids in the file")
    return np.array(users, dtype=np.int64)


def user_row(user_id, split):
    rows = np.flatnonzero(split.user_ids == user_id)
    if not rows.size:
        raise RecommendError(f"user {user_id} is not in the run's ratings.dat (user ids "
                             f"{split.user_ids[0]}..{split.user_ids[-1]}, "
                             f"{len(split.user_ids)} users)")
    return int(rows[0])


def item_column(movie_id, split):
    cols = np.flatnonzero(split.item_ids == movie_id)
    if not cols.size:
        raise RecommendError(f"movie {movie_id} is not known to the model: no rating of it "
                             f"in the run's ratings.dat, so the network has no output for it")
    return int(cols[0])


def warn(message):
    print(f"warning: {message}", file=sys.stderr)


# ---------------------------------------------------------------- TensorFlow and the network


def import_tensorflow():
    """tf_runs.py (which imports TensorFlow quietly) and this folder's model.py."""
    import tf_runs
    with tf_runs.captured_stderr():
        import model
    return tf_runs, model


def pick_device(tf_runs, choice):
    tf = tf_runs.tf
    with tf_runs.captured_stderr():
        gpus = tf.config.list_physical_devices("GPU")
    if choice == "cuda" and not gpus:
        raise RecommendError("--device cuda was given but TensorFlow sees no GPU")
    if choice == "cpu" or not gpus:
        if gpus:
            try:
                tf.config.set_visible_devices([], "GPU")
            except RuntimeError:  # TensorFlow already running: tf.device("/CPU:0") suffices
                pass
        return "/CPU:0"
    return "/GPU:0"


class Scorer:
    """The run's network with its best weights, and the training matrix it reads.

    outputs(users) gives the network's raw outputs for those users (rows of the split)
    over every item, computed as main.py's evaluation computes them: I-AutoRec
    reconstructs every movie's column of training ratings (one pass over all movies, in
    chunks of CHUNK rows as model.predict_pairs), U-AutoRec each user's row.
    """

    def __init__(self, run, split, device_choice):
        tf_runs, self.model = import_tensorflow()
        self.tf, self.device = tf_runs.tf, pick_device(tf_runs, device_choice)
        self.run, self.split = run, split
        self._item_rows = None  # the item variant's input rows, made once
        n_inputs = len(split.user_ids) if run.variant == "item" else len(split.item_ids)
        with self.tf.device(self.device):
            self.network = run.build_network(self.model, n_inputs)
            checkpoint = self.tf.train.Checkpoint(model=self.network)
            try:
                checkpoint.restore(str(run.checkpoint)).expect_partial() \
                    .assert_existing_objects_matched()
            except (ValueError, AssertionError, self.tf.errors.OpError) as error:
                first = str(error).strip().splitlines()[0] if str(error).strip() else ""
                raise RecommendError(f"{run.checkpoint} does not fit the network of "
                                     f"config.json ({VARIANT_NAMES[run.variant]}, "
                                     f"{run.shape()}, {n_inputs} inputs): {first}")

    def _network_rows(self, matrix, columns=slice(None)):
        """Raw network outputs for the rows of matrix (scipy or numpy), a chunk of rows at
        a time (CHUNK, fewer for wide rows), only `columns` of each output kept."""
        tf = self.tf
        chunk = max(1, min(CHUNK, MAX_FLOATS // max(matrix.shape[1], 1)))
        blocks = []
        with tf.device(self.device):
            for start in range(0, matrix.shape[0], chunk):
                block = matrix[start:start + chunk]
                block = block.toarray() if hasattr(block, "toarray") else block
                blocks.append(self.network(tf.constant(block, tf.float32)).numpy()[:, columns])
        return np.vstack(blocks) if blocks else np.zeros((0, 0), np.float32)

    def outputs(self, users):
        """Outputs for the users (rows of the split), users x items."""
        train = self.split.train
        if self.run.variant == "item":
            if self._item_rows is None:
                self._item_rows = train.T.tocsr()
            return self._network_rows(self._item_rows, users).T
        return self._network_rows(train[users])

    def new_user_outputs(self, cols, ratings):
        """Outputs for a new user: a new input row of the user's ratings (U-AutoRec)."""
        row = np.zeros((1, len(self.split.item_ids)), np.float32)
        row[0, cols] = ratings
        return self._network_rows(row)


# ---------------------------------------------------------------- ranking and output


def final_scores(outputs, train, users=None):
    """(rank keys, shown scores) for outputs (users x items): the outputs, the cold-start
    midpoint for a movie without training ratings and for every movie of a user without any;
    the shown scores are those clipped to the training ratings' scale, as
    metrics.final_predictions gives them."""
    keys = np.array(outputs, dtype=np.float64)
    keys[:, train.getnnz(axis=0) == 0] = metrics.cold_start_rating(train)
    if users is not None:
        keys[train.getnnz(axis=1)[users] == 0, :] = metrics.cold_start_rating(train)
    return keys, np.clip(keys, *metrics.rating_scale(train))


def top_k(keys, excluded, k):
    """Per row, the column indices of the k highest keys (ties: lower column first, which
    is the lower movie id), leaving out the excluded (boolean, same shape) entries."""
    keys = np.where(excluded, -np.inf, keys)
    order = np.argsort(-keys, axis=1, kind="stable")[:, :k]
    valid = np.isfinite(np.take_along_axis(keys, order, axis=1))
    return order, valid


def entries(order, valid, scores, split, movies):
    rows = []
    for rank, (col, ok) in enumerate(zip(order.tolist(), valid.tolist()), start=1):
        if not ok:
            break
        movie = split.item_ids[col].item()  # an int, or the text of a string id
        title, genres = movies.get(movie, (None, None))
        rows.append({"rank": rank, "movie_id": movie, "title": title, "genres": genres,
                     "score": float(scores[col])})
    return rows


def print_table(heading, rows, has_movies):
    print(heading)
    width = max([5] + [len(r["title"] or "(not in movies.dat)") for r in rows])
    line = "{:>4}  {:>8}  {:>9}" + ("  {:<%d}  {}" % width if has_movies else "")
    print(line.format("rank", "movie_id", "score", "title", "genres").rstrip())
    for r in rows:
        print(line.format(r["rank"], r["movie_id"], f"{r['score']:.4f}",
                          r["title"] or "(not in movies.dat)", r["genres"] or "").rstrip())


def write_csv(text, output):
    if output is None:
        sys.stdout.write(text)
        return
    output = Path(output)
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp",
                               dir=output.parent if str(output.parent) else ".")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def top_k_lines(scorer, users, train, split, args):
    """The CSV lines (user_id,rank,movie_id,score) of the top K of a group of users."""
    keys, scores = final_scores(scorer.outputs(users), train, users)
    seen = train[users].toarray() > 0 if not args.include_seen else np.zeros(
        keys.shape, bool)
    order, valid = top_k(keys, seen, args.k)
    user_ids = np.repeat(split.user_ids[users], order.shape[1])
    ranks = np.tile(np.arange(1, order.shape[1] + 1), len(users))
    movie_ids = split.item_ids[order].ravel()
    shown = np.take_along_axis(scores, order, axis=1).ravel()
    keep = valid.ravel()
    return [f"{u},{r},{m},{s:.6f}" for u, r, m, s in zip(
        user_ids[keep].tolist(), ranks[keep].tolist(), movie_ids[keep].tolist(),
        shown[keep].tolist())]


# ---------------------------------------------------------------- the commands


def recommend(args):
    run = Run(args.run_dir)
    new_user = args.history is not None or args.history_file is not None
    if new_user and run.variant == "item":
        raise RecommendError(NO_NEW_USER)
    if args.output is not None and not Path(args.output).parent.is_dir():
        raise RecommendError(f"--output {args.output}: folder {Path(args.output).parent} "
                             f"does not exist")
    data_dir = run.data_dir(args.data_dir)
    split = load_split(run, data_dir)
    args.user = typed_id(args.user, split.user_ids, "--user")
    args.movie = typed_id(args.movie, split.item_ids, "--movie")
    movies = load_movies(data_dir, run.settings)
    train = split.train.tocsr()

    if args.users_file is not None:
        users = read_users_file(args.users_file, split)
        scorer = Scorer(run, split, args.device)
        group = max(1, MAX_GROUP_FLOATS // len(split.item_ids))
        lines = ["user_id,rank,movie_id,score"]
        for start in range(0, len(users), group):
            lines += top_k_lines(scorer, users[start:start + group], train, split, args)
        write_csv("\n".join(lines) + "\n", args.output)
        if args.output is not None:
            print(f"top {args.k} of {len(users)} users written to {args.output}",
                  file=sys.stderr)
        return

    if new_user:
        cols, ratings, kept = history_columns(args, split)
        movie_col = item_column(args.movie, split) if args.movie is not None else None
        scorer = Scorer(run, split, args.device)
        keys, scores = final_scores(scorer.new_user_outputs(cols, ratings), train)
        seen = np.zeros(len(split.item_ids), bool)
        seen[cols] = True
        query = {"history": [{"movie_id": m, "rating": r} for m, r in kept]}
        who = f"a new user with {len(kept)} rating{'s' * (len(kept) != 1)}"
    else:
        row = user_row(args.user, split)
        movie_col = item_column(args.movie, split) if args.movie is not None else None
        scorer = Scorer(run, split, args.device)
        users = np.array([row])
        keys, scores = final_scores(scorer.outputs(users), train, users)
        seen = train[row].toarray().ravel() > 0
        n_train = int(seen.sum())
        if n_train == 0:
            warn(f"user {args.user} has no training rating (all of them fell in validation "
                 f"or test): every prediction is the cold-start "
                 f"{metrics.cold_start_rating(train):g}")
        query = {"user": args.user}
        who = f"user {args.user} ({n_train} training rating{'s' * (n_train != 1)})"
    keys, scores = keys[0], scores[0]
    run_info = {"model": MODEL_NAME, "folder": FOLDER.name, "variant": run.variant,
                "best_epoch": run.best_epoch, "run_dir": str(run.dir)}

    if movie_col is not None:
        movie = args.movie
        title, genres = movies.get(movie, (None, None))
        cold_user = not new_user and train[row].nnz == 0
        cold_movie = train[:, movie_col].nnz == 0
        cold = bool(cold_user or cold_movie)
        score = float(scores[movie_col])
        if args.json:
            print(json.dumps({**run_info, "query": {**query, "movie": movie},
                              "prediction": {"movie_id": movie, "title": title,
                                             "genres": genres, "score": score,
                                             "cold_start": cold,
                                             "seen": bool(seen[movie_col])}}, indent=2))
            return
        name = f" {title} ({genres})" if title is not None else ""
        notes = [note for flag, note in (
            (cold, "cold start: no training rating of the "
                   + ("user" if cold_user else "movie")),
            (seen[movie_col], "rated in " + ("the history" if new_user else "training")))
            if flag]
        print(f"{run.describe()}: {who}, movie {movie}{name}: predicted rating "
              f"{score:.4f}" + (f" ({'; '.join(notes)})" if notes else ""))
        return

    excluded = seen if not args.include_seen else np.zeros_like(seen)
    order, valid = top_k(keys[None, :], excluded[None, :], args.k)
    rows = entries(order[0], valid[0], scores, split, movies)
    if args.json:
        print(json.dumps({**run_info, "query": query, "k": args.k,
                          "include_seen": args.include_seen, "recommendations": rows},
                         indent=2))
        return
    seen_note = ("rated movies included" if args.include_seen else
                 "movies of the history excluded" if new_user else
                 "movies rated in training excluded")
    print_table(f"{run.describe()}: top {len(rows)} for {who}; {seen_note}", rows,
                bool(movies))


def main(argv=None):
    args = parse_args(argv)
    try:
        recommend(args)
    except (RecommendError, data.DataError) as error:
        sys.exit(f"error: {error}")
    except BrokenPipeError:  # e.g. piped into head
        sys.stderr.close()
        sys.exit(1)
    except OSError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
