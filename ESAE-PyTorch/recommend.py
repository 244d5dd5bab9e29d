"""Recommend movies with a trained EASE or EDLAE run: the top K movies for a user of the ratings
file, for a new user's history, or for many users at once (CSV).

    python ESAE-PyTorch/recommend.py RUN_DIR --user 1 -k 5
    python ESAE-PyTorch/recommend.py RUN_DIR --history 1193,661,914
    python ESAE-PyTorch/recommend.py RUN_DIR --history-file my_ratings.dat --json
    python ESAE-PyTorch/recommend.py RUN_DIR --users-file users.txt --output top10.csv

RUN_DIR is a run folder of main.py (the folder of the results.json its last line names).
Only what the run folder holds is used: config.json (data folder, seed, min_rating,
heldout_users, holdout) and model.pt (B, lambda, EDLAE's dropout rate and the item ids). A user's scores are
x_u B, x_u the user's binary row: for a training user the training row, for a held-out user
the fold-in items (PROTOCOLS.md, Protocol B), for a new user the history. The items of x_u
are never recommended unless --include-seen.
"""
import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

import data
import model

FOLDER = Path(__file__).resolve().parent
MODEL_NAMES = ("EASE", "EDLAE")  # main.py --model ease / --model edlae
CHECKPOINT = "model.pt"
CHECKPOINT_WHEN = "main.py writes it once the lambda search is done"
SCORE_BATCH = 1024  # users per product when scoring many users


class RecommendError(Exception):
    """Bad input: main() prints it as one `error: ...` line."""


def warn(message):
    print(f"warning: {message}", file=sys.stderr)


# ---------------------------------------------------------------- command line


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text!r}")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text}")
    return value


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Top-K movies from a trained EASE or EDLAE run (a run folder of "
                    "ESAE-PyTorch/main.py).")
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR",
                        help="a run folder of main.py, holding config.json and model.pt")
    query = parser.add_mutually_exclusive_group(required=True)
    query.add_argument("--user", metavar="ID",
                       help="a user id of the run's ratings file: training user, held-out user "
                            "(fold-in items as history) or any other user (positives as "
                            "history)")
    query.add_argument("--history", metavar="IDS",
                       help="a new user's movies, comma-separated MovieIDs (1193,661,914), "
                            "item ids of the run's ratings file")
    query.add_argument("--history-file", type=Path, metavar="FILE",
                       help="a new user's movies, one `MovieID[::Rating[::Timestamp]]` a "
                            "line; a rating below the run's min_rating is not a positive")
    query.add_argument("--users-file", type=Path, metavar="FILE",
                       help="one user id a line: write the top K of each as CSV "
                            "(user_id,rank,movie_id,score)")
    parser.add_argument("-k", type=positive_int, default=10,
                        help="how many movies (default %(default)s)")
    parser.add_argument("--include-seen", action="store_true",
                        help="also recommend the movies the model had as input")
    parser.add_argument("--json", action="store_true",
                        help="one JSON document on stdout instead of a table")
    parser.add_argument("--output", type=Path, metavar="FILE",
                        help="with --users-file: write the CSV here (atomically), not stdout")
    parser.add_argument("--data-dir", type=Path, metavar="DIR",
                        help="folder of the run's ratings file and titles (ratings.dat and "
                             "movies.dat for ML-1M) (default: the run's own, data_dir of "
                             "config.json)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: the GPU when there is one")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="CPU threads of PyTorch (default 1: on a busy 2-core machine, "
                             "two threads scored all users up to 3x slower)")
    args = parser.parse_args(argv)
    if args.output is not None and args.users_file is None:
        parser.error("--output applies to --users-file only")
    if args.json and args.users_file is not None:
        parser.error("--json does not apply to --users-file (it writes CSV)")
    return args


# ---------------------------------------------------------------- the run


def pick_device(choice):
    if choice == "cuda" and not torch.cuda.is_available():
        raise RecommendError("--device cuda was given but no CUDA device is available")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def load_config(run_dir):
    if not run_dir.is_dir():
        raise RecommendError(f"{run_dir} is not a folder (give the run folder main.py printed)")
    path = run_dir / "config.json"
    if not path.is_file():
        raise RecommendError(f"{run_dir} has no config.json: not a run folder of "
                             f"{FOLDER.name}/main.py")
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RecommendError(f"{path} could not be read: {error}")
    if config.get("model") not in MODEL_NAMES:
        raise RecommendError(f"{run_dir} is a run of {config.get('model')!r}, not of "
                             f"{' or '.join(MODEL_NAMES)}: use that folder's recommend.py")
    for key in ("data_dir", "seed", "min_rating", "heldout_users", "holdout"):
        if key not in config:
            raise RecommendError(f"{path} lacks {key!r}")
    return config


def load_checkpoint(run_dir, device):
    path = run_dir / CHECKPOINT
    if not path.is_file():
        raise RecommendError(f"{run_dir} has no checkpoint ({CHECKPOINT}): {CHECKPOINT_WHEN}")
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except Exception as error:  # a truncated or foreign file: pickle, zip or torch errors
        raise RecommendError(f"{path} could not be loaded: {error}")


class Scorer:
    """EASE or EDLAE of the run: scores = x B, x the binary input rows (scipy CSR)."""

    def __init__(self, config, checkpoint, device, split=None):
        self.item_ids = np.asarray(checkpoint["item_ids"])
        if "weights" in checkpoint:
            self.weights = model.row_major(checkpoint["weights"].to(device))
        else:  # a checkpoint with lambda only: solve B again from the training matrix
            started = time.time()
            gram = model.gram_matrix(split.train, device)
            self.weights = model.edlae_weights(gram, float(checkpoint["lambda"]),
                                               float(checkpoint.get("dropout", 0.0))).float()
            warn(f"model.pt holds no B: solved again for lambda {checkpoint['lambda']:g} "
                 f"in {time.time() - started:.1f} s")

    @staticmethod
    def needs_split(checkpoint):
        """Whether the run's split must be rebuilt even for a new user's history."""
        return "weights" not in checkpoint

    def scores(self, inputs):
        """Scores of every item for each input row (NumPy, rows x items)."""
        out = np.empty(inputs.matrix.shape, dtype=np.float32)
        for start in range(0, inputs.matrix.shape[0], SCORE_BATCH):
            rows = slice(start, start + SCORE_BATCH)
            out[rows] = model.scores(self.weights, inputs.matrix[rows])
        return out


# ---------------------------------------------------------------- users and histories


@dataclass
class Inputs:
    """What the model sees of each queried user: binary rows (CSR, users x items), the same
    items in time order, and the user's row of the training matrix (-1: not a training
    user)."""
    matrix: sp.csr_matrix
    seqs: list
    train_rows: np.ndarray


def ratings_file(data_dir, config):
    """The run's ratings file in data_dir: its data set's (ratings.dat of ml-1m, ...) or,
    for a run on one's own file, that file's name."""
    name = (Path(config["ratings_file"]).name if config.get("ratings_file") else
            data.ratings_file_name(config.get("dataset") or data.DEFAULT_DATASET))
    path = data_dir / name
    if not path.is_file():
        raise RecommendError(f"{path} not found: the run's data folder (data_dir of "
                             f"config.json) has moved? Pass --data-dir DIR")
    return path


def load_split(data_dir, config, item_ids):
    """The run's split, rebuilt from the run's file with the run's settings."""
    try:
        ratings = data.load_ratings(ratings_file(data_dir, config), config.get("format"))
        if config.get("data_sha256") not in (None, ratings.sha256):
            raise RecommendError(f"{ratings.path} differs from the file the run was trained "
                                 f"on (sha256 {config['data_sha256']}): the split cannot be "
                                 f"rebuilt")
        split = data.split_top_n(ratings, seed=config["seed"],
                                 min_rating=config["min_rating"],
                                 heldout_users=config["heldout_users"],
                                 holdout=config["holdout"])
    except data.DataError as error:
        raise RecommendError(str(error))
    if item_ids is not None and not np.array_equal(split.item_ids, item_ids):
        raise RecommendError(f"the split rebuilt from {ratings.path} has other items than "
                             f"the run's checkpoint")
    return ratings, split


def describe_users(ratings, split, user_ids, min_rating):
    """Inputs and a short description of each user id (all must be in the file).

    A training user's input is the training row; a validation or test user's the fold-in
    items; a user of the file outside the split (fewer positives than the split keeps) the
    positives on the model's items, in time order.
    """
    groups = [("training", split.train_user_ids, split.train, split.train_seqs),
              ("validation", split.validation.user_ids, split.validation.fold_in,
               split.validation.fold_in_seqs),
              ("test", split.test.user_ids, split.test.fold_in, split.test.fold_in_seqs)]
    known_ids = np.concatenate([g[1] for g in groups])
    unknown = np.setdiff1d(user_ids, known_ids)  # sorted, unique
    missing = np.setdiff1d(unknown, ratings.users)
    if missing.size:
        shown = ", ".join(str(u) for u in missing[:5]) + (", ..." if missing.size > 5 else "")
        raise RecommendError(f"user {shown} not in {ratings.path}")
    other = outside_users(ratings, split.item_ids, unknown, min_rating)
    groups.append(("outside the split", unknown, other[0], other[1]))

    ids = np.concatenate([g[1] for g in groups])
    matrix = sp.vstack([g[2] for g in groups], format="csr")
    seqs = [seq for g in groups for seq in g[3]]
    kinds = np.concatenate([[g[0]] * len(g[1]) for g in groups])
    train_rows = np.concatenate([np.arange(len(split.train_user_ids)),
                                 np.full(len(ids) - len(split.train_user_ids), -1)])
    where = np.argsort(ids, kind="stable")
    pick = where[np.searchsorted(ids[where], user_ids)]
    inputs = Inputs(matrix[pick], [seqs[p] for p in pick], train_rows[pick])
    return inputs, kinds[pick]


def outside_users(ratings, item_ids, user_ids, min_rating):
    """Rows and time-ordered sequences of users outside the split: their positives on the
    model's items, ordered by (timestamp, movie id) as data.py orders them."""
    keep = (np.isin(ratings.users, user_ids) & (ratings.ratings >= min_rating)
            & np.isin(ratings.items, item_ids))
    users, items = ratings.users[keep], ratings.items[keep]
    times = (ratings.timestamps[keep] if ratings.timestamps is not None
             else np.zeros(len(users), dtype=np.int64))
    order = np.lexsort((items, times, users))
    users, items = users[order], np.searchsorted(item_ids, items[order])
    rows = np.searchsorted(user_ids, users)
    matrix = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, items)),
                           shape=(len(user_ids), len(item_ids)))
    starts = np.searchsorted(rows, np.arange(len(user_ids) + 1))
    return matrix, [items[starts[r]:starts[r + 1]] for r in range(len(user_ids))]


def as_id(text, like):
    """An id typed by the user as the run's ids (like) are: an int when they are integers
    (None when text is not one), else the text itself (None when empty)."""
    text = text.strip()
    if like.dtype.kind in "iu":
        digits = text[1:] if text.startswith("-") else text
        return int(text) if digits.isdigit() else None
    return text or None


def parse_history(text, item_ids):
    """Movie ids of --history, in the given order."""
    ids = []
    for part in text.split(","):
        movie = as_id(part, item_ids)
        if movie is None:
            raise RecommendError(f"--history: {part.strip()!r} is not a movie id (give "
                                 f"comma-separated MovieIDs, e.g. 1193,661,914)")
        ids.append(movie)
    return ids


def read_history_file(path, min_rating, item_ids):
    """Movie ids of a history file's positives: file order, or by (timestamp, movie id)
    when every line has a timestamp. A rating below min_rating is skipped, with a warning."""
    try:
        text = path.read_bytes().decode("latin-1")
    except FileNotFoundError:
        raise RecommendError(f"history file {path} not found")
    except OSError as error:
        raise RecommendError(f"history file {path} could not be read: {error}")
    entries, below = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        fields = [field.strip() for field in line.split("::")]
        movie = as_id(fields[0], item_ids)
        if (len(fields) > 3 or movie is None or not all(_is_number(f) for f in fields[1:2])
                or not all(f.isdigit() for f in fields[2:])):
            raise RecommendError(f"{path}, line {number}: expected "
                                 f"MovieID[::Rating[::Timestamp]], found {line[:80]!r}")
        if len(fields) > 1:
            rating = float(fields[1])
            if not data.RATING_RANGE[0] <= rating <= data.RATING_RANGE[1]:
                raise RecommendError(f"{path}, line {number}: rating {fields[1]} is outside "
                                     f"0.5..5: {line[:80]!r}")
            if rating < min_rating:
                below.append(f"line {number} (movie {movie}, rating {fields[1]})")
                continue
        entries.append((movie, int(fields[2]) if len(fields) == 3 else None))
    if below:
        warn(f"{path}: {len(below)} rating(s) below the run's min_rating {min_rating} are not "
             f"positives, skipped: {', '.join(below[:10])}{', ...' if len(below) > 10 else ''}")
    if entries and all(stamp is not None for _, stamp in entries):
        entries.sort(key=lambda entry: (entry[1], entry[0]))
    return [movie for movie, _ in entries]


def _is_number(text):
    try:
        return abs(float(text)) < float("inf")
    except ValueError:
        return False


def history_inputs(movie_ids, item_ids):
    """Inputs of one new user from movie ids (in time order): repeats and movies the model
    has never seen are skipped with a warning. Returns the inputs and the ids kept."""
    seen, repeated, kept = set(), [], []
    for movie in movie_ids:
        if movie in seen:
            repeated.append(movie)
        else:
            seen.add(movie)
            kept.append(movie)
    if repeated:
        warn(f"movie(s) given more than once, kept once: {', '.join(map(str, repeated))}")
    kept = np.array(kept)
    position = np.minimum(np.searchsorted(item_ids, kept), len(item_ids) - 1)
    known = item_ids[position] == kept
    unknown = ", ".join(str(m) for m in kept[~known])
    if not known.any():
        raise RecommendError(f"no movie of the history is among the model's "
                             f"{len(item_ids)} items (movies it has never seen: {unknown}): "
                             f"nothing to recommend from")
    if not known.all():
        warn(f"movie(s) the model has never seen (not among its {len(item_ids)} items), "
             f"skipped: {unknown}")
    items = position[known]
    matrix = sp.csr_matrix((np.ones(len(items), dtype=np.float32),
                            (np.zeros(len(items), dtype=np.int64), items)),
                           shape=(1, len(item_ids)))
    return Inputs(matrix, [items], np.array([-1])), kept[known]


def read_users_file(path, user_ids):
    try:
        lines = path.read_text(encoding="latin-1").splitlines()
    except FileNotFoundError:
        raise RecommendError(f"users file {path} not found")
    except OSError as error:
        raise RecommendError(f"users file {path} could not be read: {error}")
    users = []
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line:
            continue
        user = as_id(line, user_ids)
        if user is None:
            raise RecommendError(f"{path}, line {number}: {line[:80]!r} is not a user id "
                                 f"(one id a line)")
        users.append(user)
    if not users:
        raise RecommendError(f"users file {path} holds no user id")
    return np.array(users)


# ---------------------------------------------------------------- ranking and output


def top_k(scores, seen, k, include_seen):
    """Each row's k best item indices and their scores, highest first, ties to the lower
    index (as metrics.py ranks); the input items are masked unless include_seen, and masked
    items are never listed."""
    scores = np.asarray(scores, dtype=np.float64)
    if not include_seen:
        rows, cols = seen.nonzero()
        scores[rows, cols] = -np.inf
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return top, np.take_along_axis(scores, top, axis=1)


def read_movies(data_dir, config):
    """MovieID -> (title, genres) from the run's MovieLens set (movies.dat in Latin-1 for
    ML-1M), or None without the file or for a run on one's own file (ids only)."""
    if config.get("ratings_file"):
        return None
    dataset = config.get("dataset") or data.DEFAULT_DATASET
    path = data_dir / data.DATASETS[dataset].titles
    if not path.is_file():
        warn(f"{path} not found: movie ids only")
        return None
    if dataset != "ml-1m":
        return data.read_titles(data_dir, dataset)
    movies, bad = {}, []
    for number, line in enumerate(path.read_bytes().decode("latin-1").splitlines(), start=1):
        fields = line.split("::")
        if len(fields) == 3 and fields[0].strip().isdigit():
            movies[int(fields[0])] = (fields[1], fields[2])
        elif line.strip():
            bad.append(number)
    if bad:
        warn(f"{path}: {len(bad)} line(s) not MovieID::Title::Genres, ignored (first: line "
             f"{bad[0]})")
    return movies


def entries(top, top_scores, item_ids, movies):
    result = []
    for rank, (item, score) in enumerate(zip(top, top_scores), start=1):
        if not np.isfinite(score):
            break  # only masked items are left
        movie = item_ids[item].item()  # an int, or the text of a string id
        title, genres = movies.get(movie, (None, None)) if movies is not None else (None, None)
        result.append({"rank": rank, "movie_id": movie, "title": title, "genres": genres,
                       "score": float(score)})
    return result


def print_table(heading, rows, movies):
    print(heading)
    if movies is None:
        print(f"{'rank':>4}  {'movie_id':>8}  {'score':>9}")
        for row in rows:
            print(f"{row['rank']:>4}  {row['movie_id']:>8}  {row['score']:>9.4f}")
        return
    width = max([5] + [len(row["title"] or "") for row in rows])
    print(f"{'rank':>4}  {'movie_id':>8}  {'score':>9}  {'title':<{width}}  genres")
    for row in rows:
        title = row["title"] if row["title"] is not None else "(not in movies.dat)"
        print(f"{row['rank']:>4}  {row['movie_id']:>8}  {row['score']:>9.4f}  "
              f"{title:<{width}}  {row['genres'] or ''}")


def write_csv(user_ids, top, top_scores, item_ids, output):
    lines = ["user_id,rank,movie_id,score"]
    for user, items, scores in zip(user_ids, top, top_scores):
        for rank, (item, score) in enumerate(zip(items, scores), start=1):
            if not np.isfinite(score):
                break
            lines.append(f"{user},{rank},{item_ids[item]},{score:.6g}")
    text = "\n".join(lines) + "\n"
    if output is None:
        sys.stdout.write(text)
        return
    output = output.resolve()
    if not output.parent.is_dir():
        raise RecommendError(f"--output: folder {output.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# ---------------------------------------------------------------- run


def run(args):
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    run_dir = args.run_dir
    config = load_config(run_dir)
    checkpoint = load_checkpoint(run_dir, device)
    data_dir = args.data_dir if args.data_dir is not None else Path(config["data_dir"])
    min_rating = config["min_rating"]
    item_ids = np.asarray(checkpoint["item_ids"]) if "item_ids" in checkpoint else None

    split = ratings = users = None
    if args.user is not None or args.users_file is not None or Scorer.needs_split(checkpoint):
        ratings, split = load_split(data_dir, config, item_ids)
    if args.users_file is not None:
        users = read_users_file(args.users_file, ratings.users)
    scorer = Scorer(config, checkpoint, device, split)
    item_ids = scorer.item_ids

    if users is not None:  # every user in one batched pass, in the file's order
        inputs, _ = describe_users(ratings, split, users, min_rating)
        empty = users[inputs.matrix.getnnz(axis=1) == 0]
        if empty.size:
            warn(f"{empty.size} user(s) with no positive on the model's items (their list "
                 f"ranks an empty input): {', '.join(map(str, empty[:10]))}"
                 f"{', ...' if empty.size > 10 else ''}")
        top, top_scores = top_k(scorer.scores(inputs), inputs.matrix, args.k,
                                args.include_seen)
        write_csv(users, top, top_scores, item_ids, args.output)
        return

    if args.user is not None:
        user = as_id(args.user, ratings.users)
        if user is None:
            raise RecommendError(f"--user: {args.user!r} is not a user id of {ratings.path}")
        args.user = user
        inputs, kinds = describe_users(ratings, split, np.array([user]), min_rating)
        n_input = inputs.matrix.nnz
        if n_input == 0:
            raise RecommendError(f"user {args.user} has no positive (rating >= {min_rating}) "
                                 f"on the model's items: nothing to recommend from")
        what = {"training": f"a training user; input: the {n_input} movies of their "
                            f"training row",
                "validation": f"a validation user; input: their {n_input} fold-in movies",
                "test": f"a test user; input: their {n_input} fold-in movies",
                "outside the split": f"not in the run's split; input: their {n_input} "
                                     f"positives"}[kinds[0]]
        query = {"user": args.user, "user_kind": str(kinds[0])}
        heading = f"user {args.user} ({what})"
    else:
        movie_ids = (parse_history(args.history, item_ids) if args.history is not None
                     else read_history_file(args.history_file, min_rating, item_ids))
        if not movie_ids:
            raise RecommendError(f"{args.history_file} holds no positive movie: nothing to "
                                 f"recommend from")
        inputs, kept = history_inputs(movie_ids, item_ids)
        query = {"history": [m.item() for m in kept]}
        heading = f"a new user (input: {len(kept)} movies)"

    movies = read_movies(data_dir, config)
    top, top_scores = top_k(scorer.scores(inputs), inputs.matrix, args.k, args.include_seen)
    rows = entries(top[0], top_scores[0], item_ids, movies)
    if args.json:
        json.dump({"model": config["model"], "run_dir": str(run_dir), "query": query,
                   "k": args.k, "include_seen": args.include_seen,
                   "n_input_items": int(inputs.matrix.nnz), "recommendations": rows},
                  sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        seen = "seen movies included" if args.include_seen else "seen movies excluded"
        print_table(f"{config['model']}: top {len(rows)} for {heading}; {seen}", rows, movies)


def main(argv=None):
    args = parse_args(argv)
    try:
        run(args)
    except RecommendError as error:
        sys.exit(f"error: {error}")
    except BrokenPipeError:  # e.g. piped into head
        sys.stderr.close()
        sys.exit(1)


if __name__ == "__main__":
    main()
