"""Non-neural baselines of the benchmark, on the very splits and metrics of the models.

Owns four baselines, their small validation searches and their run folders:
- popularity (Protocol B, top-N): every user gets the items ranked by training popularity;
- itemknn (Protocol B): cosine item-item similarity on the binary training matrix, the
  neighbourhood size k chosen on validation NDCG@100;
- global-mean (Protocol A, rating): every pair predicted the training mean;
- bias (Protocol A): damped user and item biases (Koren's baseline predictor), the damping
  chosen on validation RMSE.

The split and metric code is not copied: the files of ESAE-PyTorch (top-N) and
AutoRec-TensorFlow (rating) are loaded by path under unique module names, so a baseline's
users, items and pairs are those of the models for the same seed. The protocols are those
of PROTOCOLS.md. A run writes config.json, metrics.jsonl (one line
per validation candidate), results.json (the models' shape) and test_per_user.csv (top-N)
or test_predictions.csv (rating). Usage: python baselines.py --help
"""
import argparse
import importlib.util
import json
import os
import resource
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import scipy.sparse as sp

REPO = Path(__file__).resolve().parent
TOP_N_FOLDER = "ESAE-PyTorch"
RATING_FOLDER = "AutoRec-TensorFlow"
KS = (10, 20, 50, 100)
SELECTION_METRIC = "ndcg@100"
KNN_GRID = (10, 20, 50, 100, 200, 500, "all")
DAMPING_GRID = (0, 1, 2, 5, 10, 15, 25, 50, 100)
TOP_N_SEED, RATING_SEED = 98765, 1994


def load_module(folder, name):
    """Import REPO/folder/name.py as a module named `baselines_<folder>_<name>`."""
    unique = f"baselines_{folder}_{name}".replace("-", "_")
    if unique in sys.modules:
        return sys.modules[unique]
    spec = importlib.util.spec_from_file_location(unique, REPO / folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[unique] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


top_n_data = load_module(TOP_N_FOLDER, "data")
top_n_metrics = load_module(TOP_N_FOLDER, "metrics")
rating_data = load_module(RATING_FOLDER, "data")
rating_metrics = load_module(RATING_FOLDER, "metrics")
runs = load_module(TOP_N_FOLDER, "runs")  # the models' data flags and their defaults


# ---------------------------------------------------------------- top-N baselines


def popularity_scores(train, n_users):
    """Each item's number of training users, the same row for each of n_users."""
    counts = np.asarray((train > 0).sum(axis=0), dtype=np.float64).ravel()
    return np.tile(counts, (n_users, 1))


def cosine_similarity(train):
    """Items x items cosine between the item columns of the binary training matrix,
    diagonal 0; an item without training users has similarity 0 to everything."""
    binary = (train > 0).astype(np.float32).tocsc()
    co_counts = (binary.T @ binary).toarray().astype(np.float64)
    norms = np.sqrt(np.diag(co_counts))
    safe = np.where(norms > 0, norms, 1.0)
    similarity = co_counts / safe[:, None] / safe[None, :]
    np.fill_diagonal(similarity, 0.0)
    return similarity


def neighbour_order(similarity):
    """For each column j, the row indices by decreasing similarity, ties by lower index."""
    return np.argsort(-similarity, axis=0, kind="stable")


def keep_top_k(similarity, order, k):
    """similarity with only the k most similar items i of each column j kept."""
    if k == "all" or k >= similarity.shape[0]:
        return similarity
    kept = np.zeros(similarity.shape, dtype=bool)
    kept[order[:k], np.arange(similarity.shape[1])[None, :]] = True
    return np.where(kept, similarity, 0.0)


def knn_scores(fold_in, neighbours):
    """Users x items: the sum of each fold-in item's (kept) similarities, fold_in @ S_k."""
    return np.asarray(sp.csr_matrix(fold_in) @ neighbours)


def knn_grid(n_items):
    """The neighbourhood sizes to try: grid values below n_items, and every item."""
    return [k for k in KNN_GRID if k == "all" or k < n_items]


def evaluate_top_n(scores, held_out):
    """(averaged metrics, per-user metrics) of a score matrix for held-out users."""
    per_user = top_n_metrics.per_user_metrics(scores, held_out.fold_in, held_out.target, KS)
    return top_n_metrics.average([per_user]), per_user


def run_popularity(split, log):
    """Popularity needs no choice: one validation line, selected {}."""
    def score(held_out):
        return popularity_scores(split.train, held_out.fold_in.shape[0])
    validation, _ = evaluate_top_n(score(split.validation), split.validation)
    log({"validation": validation})
    return {}, validation, score


def run_itemknn(split, log):
    """Choose k on validation NDCG@100; returns (selected, validation, scorer)."""
    similarity = cosine_similarity(split.train)
    order = neighbour_order(similarity)
    best = None
    for k in knn_grid(split.n_items):
        validation, _ = evaluate_top_n(
            knn_scores(split.validation.fold_in, keep_top_k(similarity, order, k)),
            split.validation)
        log({"k": k, "validation": validation})
        if best is None or validation[SELECTION_METRIC] > best[1][SELECTION_METRIC]:
            best = (k, validation)
    k, validation = best
    neighbours = keep_top_k(similarity, order, k)
    return {"k": k}, validation, lambda held_out: knn_scores(held_out.fold_in, neighbours)


# ---------------------------------------------------------------- rating baselines


def bias_parameters(train, damping):
    """(mu, b_user, b_item) of the damped baseline predictor on the training ratings.

    b_i = sum_{u in R(i)} (r_ui - mu) / (damping + |R(i)|), then
    b_u = sum_{i in R(u)} (r_ui - mu - b_i) / (damping + |R(u)|); 0 for an empty row/column.
    """
    coo = sp.coo_matrix(train)
    rows, cols, values = coo.row, coo.col, coo.data.astype(np.float64)
    n_users, n_items = train.shape
    mu = float(values.mean())
    b_item = damped_mean(np.bincount(cols, values - mu, n_items),
                         np.bincount(cols, minlength=n_items), damping)
    b_user = damped_mean(np.bincount(rows, values - mu - b_item[cols], n_users),
                         np.bincount(rows, minlength=n_users), damping)
    return mu, b_user, b_item


def damped_mean(sums, counts, damping):
    """sums / (damping + counts), 0 where the denominator is 0."""
    denominators = damping + counts.astype(np.float64)
    return np.divide(sums, denominators, out=np.zeros(len(sums)), where=denominators > 0)


def bias_predictions(parameters, pairs):
    mu, b_user, b_item = parameters
    return mu + b_user[pairs.users] + b_item[pairs.items]


def global_mean(train):
    return float(sp.csr_matrix(train).data.astype(np.float64).mean())


def run_global_mean(split, log):
    mu = global_mean(split.train)
    validation = rating_metrics.rating_metrics(np.full(len(split.validation), mu),
                                               split.validation, split.train)
    log({"validation": validation})
    return {}, validation, lambda pairs: np.full(len(pairs), mu)


def run_bias(split, log):
    """Choose the damping on validation RMSE; returns (selected, validation, predictor)."""
    best = None
    for damping in DAMPING_GRID:
        parameters = bias_parameters(split.train, damping)
        validation = rating_metrics.rating_metrics(
            bias_predictions(parameters, split.validation), split.validation, split.train)
        log({"damping": damping, "validation": validation})
        if best is None or validation["rmse"] < best[2]["rmse"]:
            best = (damping, parameters, validation)
    damping, parameters, validation = best
    return ({"damping": damping}, validation,
            lambda pairs: bias_predictions(parameters, pairs))


BASELINES = {
    "popularity": ("Popularity", "B", run_popularity),
    "itemknn": ("Item-kNN", "B", run_itemknn),
    "global-mean": ("Global mean", "A", run_global_mean),
    "bias": ("Bias (damped)", "A", run_bias),
}


# ---------------------------------------------------------------- command line


def non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be zero or more, not {text}")
    return value


def positive_int(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text}")
    return value


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Non-neural baselines on MovieLens-1M, on the models' splits: "
                    "popularity and item-kNN (top-N, Protocol B), global mean and damped "
                    "biases (rating prediction, Protocol A).")
    parser.add_argument("baseline", choices=tuple(BASELINES))
    runs.add_data_arguments(parser, "baselines/<baseline>", REPO / "ml-1m")
    parser.add_argument("--seed", type=non_negative_int,
                        help=f"seed of the split (default: {TOP_N_SEED} top-N, "
                             f"{RATING_SEED} rating, as the models)")
    parser.add_argument("--holdout", choices=("random", "temporal"), default="random",
                        help="top-N only: targets are a random 20%% of each held-out user's "
                             "positives, or the latest 20%%")
    parser.add_argument("--heldout-users", type=positive_int,
                        help="top-N only: number of validation users, and of test users "
                             "(default: the data set's, as the models: --help of a model)")
    parser.add_argument("--min-rating", type=runs.non_negative_float, default=4,
                        help="top-N only: ratings at or above this are positives")
    parser.add_argument("--quiet", action="store_true",
                        help="no download progress bar, no line per validation candidate")
    args = runs.resolve_data_arguments(parser, parser.parse_args(argv))
    if args.seed is None:
        args.seed = TOP_N_SEED if BASELINES[args.baseline][1] == "B" else RATING_SEED
    return args


# ---------------------------------------------------------------- run folder


def make_run_dir(out_dir, baseline):
    if out_dir is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        out_dir = REPO / "runs" / "baselines" / baseline / stamp
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def write_atomic(path, write):
    """Call write(tmp_path), then rename tmp_path onto path: readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def write_json(path, obj):
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2) + "\n"))


def peak_memory_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def config_of(args, protocol):
    """The arguments as written to config.json; top-N options only for Protocol B."""
    top_n_only = ("holdout", "heldout_users", "min_rating")
    return {k: str(v.resolve()) if isinstance(v, Path) else v for k, v in vars(args).items()
            if protocol == "B" or k not in top_n_only}


def summary(metrics):
    names = ("rmse", "precision@20", "recall@20", "ndcg@100")
    return ", ".join(f"{name} {metrics[name]:.4f}" for name in names if name in metrics)


# ---------------------------------------------------------------- run


def load_split(args, protocol):
    """The models' split for this protocol; raises the data module's DataError."""
    data = top_n_data if protocol == "B" else rating_data
    ratings = data.load_ratings(data.find_ratings(args.data_dir, args.dataset,
                                                  args.ratings_file, not args.no_download,
                                                  quiet=args.quiet), args.format)
    if protocol == "A":
        return ratings, data.split_ratings(ratings, seed=args.seed)
    return ratings, data.split_top_n(ratings, seed=args.seed, min_rating=args.min_rating,
                                     heldout_users=args.heldout_users, holdout=args.holdout)


def write_test_file(run_dir, protocol, split, evaluate):
    """Test metrics, with test_per_user.csv (top-N) or test_predictions.csv (rating)."""
    if protocol == "B":
        test, per_user = evaluate_top_n(evaluate(split.test), split.test)
        top_n_metrics.write_per_user(run_dir / "test_per_user.csv", split.test.user_ids,
                                     split.test.fold_in, split.test.target, per_user)
        return test
    predictions = evaluate(split.test)
    rating_metrics.write_predictions(run_dir / "test_predictions.csv", split.test,
                                     predictions, split)
    return rating_metrics.rating_metrics(predictions, split.test, split.train)


def run(args):
    started = time.time()
    model_name, protocol, search = BASELINES[args.baseline]
    ratings, split = load_split(args, protocol)
    run_dir = make_run_dir(args.out_dir, args.baseline)  # only once the data is good
    write_json(run_dir / "config.json", {**config_of(args, protocol), "model": model_name,
                                         "protocol": protocol, "data_sha256": ratings.sha256})
    (run_dir / "metrics.jsonl").write_text("")

    def log(line):
        with open(run_dir / "metrics.jsonl", "a") as out:
            out.write(json.dumps(line) + "\n")
        if not args.quiet:
            choice = {k: v for k, v in line.items() if k != "validation"}
            print(f"validation{' ' + str(choice) if choice else ''}: "
                  f"{summary(line['validation'])}")

    selected, validation, evaluate = search(split, log)
    test = write_test_file(run_dir, protocol, split, evaluate)
    print(f"{model_name} test{' ' + str(selected) if selected else ''}: {summary(test)}")
    results = {"model": model_name, "folder": "baselines", "protocol": protocol,
               **({"holdout": args.holdout} if protocol == "B" else {}),
               "test": test, "validation": validation, "best_epoch": None,
               "selected": selected, "wall_seconds": round(time.time() - started, 2),
               "peak_memory_mb": round(peak_memory_mb(), 1), "seed": args.seed,
               "data_sha256": ratings.sha256, "device": "cpu"}
    write_json(run_dir / "results.json", results)
    print(f"results written to {run_dir / 'results.json'}")
    return results


def main(argv=None):
    args = parse_args(argv)
    try:
        run(args)
    except (top_n_data.DataError, rating_data.DataError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
