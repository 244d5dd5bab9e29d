"""ESAE-PyTorch: train and evaluate EASE (Steck 2019) or full-rank EDLAE (Steck 2020,
--model edlae) on MovieLens, Protocol B of PROTOCOLS.md (top-N ranking under strong
generalisation).

The experiment: command line, data, the lambda (and EDLAE's dropout rate) search on the
validation users, the single test evaluation and the results. The run folder
(config.json, metrics.jsonl, results.json, model.pt) and CometML logging use runs.py.
Usage: python ESAE-PyTorch/main.py --help
"""
import argparse
import sys
import time
from pathlib import Path

import torch

import data
import metrics
import model
import runs
from runs import non_negative_int, positive_float

FOLDER = Path(__file__).resolve().parent
MODEL_NAMES = {"ease": "EASE", "edlae": "EDLAE"}
# The lambda grids: 9 values, 4 per decade (np.geomspace to 3 digits), EASE from 50 to
# 5000, EDLAE from 20 to 2000; EDLAE's dropout rates. How they were chosen: README.md.
DEFAULT_LAMBDAS = {"ease": (50.0, 88.9, 158.0, 281.0, 500.0, 889.0, 1580.0, 2810.0, 5000.0),
                   "edlae": (20.0, 35.6, 63.2, 112.0, 200.0, 356.0, 632.0, 1120.0, 2000.0)}
DEFAULT_DROPOUTS = (0.2, 0.33, 0.5, 0.67)
SELECTION_METRIC = "ndcg@100"
SEARCH_DTYPE = torch.float32  # the validation solves; the final B is float64
EVAL_BATCH = 2000  # held-out users scored at a time


# ---------------------------------------------------------------- command line


def dropout_list(text):
    return [runs.dropout_rate(part) for part in text.split(",")]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="EASE (Steck 2019) or full-rank EDLAE (Steck 2020) on MovieLens-1M "
                    "(the default), another MovieLens set or your own ratings file: "
                    "top-N ranking under strong generalisation (PROTOCOLS.md, Protocol B).")
    runs.add_data_arguments(parser, FOLDER.name, data.default_data_dir())
    parser.add_argument("--model", choices=tuple(MODEL_NAMES), default="ease",
                        help="ease: B = I - P diag(1/diag P), P = (X^T X + lambda I)^-1; "
                             "edlae: the same with X^T X's diagonal also weighted by "
                             "p/(1-p), p the dropout rate (default: %(default)s)")
    parser.add_argument("--seed", type=non_negative_int, default=98765,
                        help="seed of the user permutation and the random hold-out")
    parser.add_argument("--lam", type=positive_float,
                        help="fixed L2 weight lambda; skips the lambda search")
    parser.add_argument("--lambdas", type=runs.positive_float_list,
                        help="comma-separated lambda grid searched on the validation users "
                             "(default, ease: " + fmt(DEFAULT_LAMBDAS["ease"]) + "; edlae: "
                             + fmt(DEFAULT_LAMBDAS["edlae"]) + ")")
    parser.add_argument("--dropout", type=runs.dropout_rate,
                        help="edlae: fixed dropout rate p in [0, 1); skips the p search")
    parser.add_argument("--dropouts", type=dropout_list,
                        help="edlae: comma-separated grid of dropout rates p searched on the "
                             "validation users (default: " + fmt(DEFAULT_DROPOUTS) + ")")
    parser.add_argument("--exhaustive", action="store_true",
                        help="solve every lambda of the grid; by default a golden-section "
                             "search over the sorted grid solves about half of them "
                             "(it assumes validation NDCG@100 rises, then falls with lambda)")
    runs.add_top_n_arguments(parser, metrics.DEFAULT_KS)
    runs.add_run_arguments(parser, resume=False)
    parser.add_argument("--threads", type=runs.positive_int,
                        help="CPU threads of PyTorch (default: PyTorch's own, all cores or "
                             "OMP_NUM_THREADS); 1 is faster on a machine busy with other "
                             "jobs, where threads waiting on each other made each inverse "
                             "10 to 20 times slower")
    args = runs.parse_with_resume(parser, argv)  # also the data set's defaults
    if args.model == "ease" and (args.dropout is not None or args.dropouts is not None):
        parser.error("--dropout and --dropouts apply to --model edlae only")
    return args


def fmt(values):
    return ",".join(f"{v:g}" for v in values)


def pick_device(choice):
    if choice == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda was given but no CUDA device is available")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def grids(args):
    """(lambdas, dropouts) searched: one value each where fixed; dropouts (0.0,) for EASE."""
    lambdas = ([args.lam] if args.lam is not None else
               args.lambdas if args.lambdas is not None else DEFAULT_LAMBDAS[args.model])
    if args.model == "ease":
        return sorted(set(lambdas)), [0.0]
    dropouts = ([args.dropout] if args.dropout is not None else
                args.dropouts if args.dropouts is not None else DEFAULT_DROPOUTS)
    return sorted(set(lambdas)), sorted(set(dropouts))


# ---------------------------------------------------------------- training


def evaluate(weights, held_out, ks, per_user_csv=None):
    """Metrics of the held-out users scored with B = weights (see evaluate_by)."""
    return evaluate_by(lambda rows: model.scores(weights, rows), held_out, ks, per_user_csv)


def evaluate_by(score, held_out, ks, per_user_csv=None):
    """Metrics of the held-out users scored by score(fold-in rows), EVAL_BATCH users at a
    time (a dense users x items block each); with per_user_csv, each user's metrics are
    also written there."""
    batches = []
    for start in range(0, held_out.fold_in.shape[0], EVAL_BATCH):
        rows = slice(start, start + EVAL_BATCH)
        fold_in, target = held_out.fold_in[rows], held_out.target[rows]
        batches.append(metrics.per_user_metrics(score(fold_in), fold_in, target, ks))
    if per_user_csv is not None:
        metrics.write_per_user(per_user_csv, held_out.user_ids, held_out.fold_in,
                               held_out.target, metrics.merge(batches))
    return metrics.average(batches)


def search(gram, validation_users, lambdas, dropouts, ks, exhaustive=False, record=None,
           dtype=SEARCH_DTYPE):
    """The (lambda, dropout) of the grids with the best validation NDCG@100, and its
    validation metrics. Each candidate is solved in dtype for the validation rows only
    (model.validation_scorer); for each dropout rate, lambda is found by model.search_grid
    (or every lambda, exhaustive). record(lam, dropout, validation) is called for each
    candidate solved. Ties go to the smaller lambda, then the smaller dropout rate."""
    solved = {}

    def score(lam, dropout):
        penalty = model.edlae_penalty(gram, lam, dropout)
        validation = evaluate_by(model.validation_scorer(gram, penalty, dtype),
                                 validation_users, ks)
        solved[lam, dropout] = validation
        if record is not None:
            record(lam, dropout, validation)
        return validation[SELECTION_METRIC]

    best = None
    for dropout in sorted(dropouts):
        if exhaustive:
            values = {lam: score(lam, dropout) for lam in sorted(lambdas)}
            lam = max(values, key=lambda v: (values[v], -v))
        else:
            lam, _ = model.search_grid(lambdas, lambda v: score(v, dropout))
        if best is None or solved[lam, dropout][SELECTION_METRIC] > best[2][SELECTION_METRIC]:
            best = (lam, dropout, solved[lam, dropout])
    return best


def final_weights(gram_holder, lam, dropout):
    """The selected B, float64, from the Gram matrix in the one-item list gram_holder,
    which is emptied: the float32 Gram is freed before the float64 solve (at ML-20M's
    26,744 items this keeps the peak at two float64 n x n buffers, about 11.4 GB)."""
    gram = gram_holder.pop()
    matrix = model.regularised(gram, model.edlae_penalty(gram, lam, dropout), torch.float64)
    del gram
    return model.row_major(model.weights_in_place(model.invert_in_place(matrix)))


def save_checkpoint(run_dir, model_name, weights, lam, dropout, item_ids):
    state = {"model": model_name, "lambda": lam, "item_ids": item_ids,
             "weights": weights.to(torch.float32).cpu()}
    if model_name == "EDLAE":
        state["dropout"] = dropout
    runs.write_atomic(run_dir / "model.pt", lambda tmp: torch.save(state, tmp))


def run(args):
    started = time.time()
    runs.comet_mode(args.comet)  # refuse --comet online without a key before writing
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    model_name = MODEL_NAMES[args.model]
    ks = sorted(set(args.ks) | {100})
    ratings_path = data.find_ratings(args.data_dir, args.dataset, args.ratings_file,
                                     not args.no_download, quiet=args.quiet)
    ratings = data.load_ratings(ratings_path, args.format)
    split = data.split_top_n(ratings, seed=args.seed, min_rating=args.min_rating,
                             heldout_users=args.heldout_users, holdout=args.holdout)
    run_dir = runs.make_run_dir(args.out_dir, FOLDER)  # once the data is good
    lambdas, dropouts = grids(args)
    config = {**runs.config_values(args), "model": model_name, "device_used": str(device),
              "lambdas": lambdas, "n_train_users": len(split.train_user_ids),
              "n_items": split.n_items, "data_sha256": ratings.sha256}
    if args.model == "edlae":
        config["dropouts"] = dropouts
    runs.write_json(run_dir / "config.json", config)
    experiment = runs.start_comet(args.comet, run_dir, config, runs.run_labels(
        model_name, FOLDER.name, "B", args.holdout, args.seed,
        runs.dataset_label(args)))

    step = 0

    def record(lam, dropout, validation):
        nonlocal step
        step += 1
        line = {"step": step, "lambda": lam}
        if args.model == "edlae":
            line["dropout"] = dropout
        runs.append_jsonl(run_dir / "metrics.jsonl", {**line, "validation": validation})
        if experiment is not None:
            experiment.log_metric("lambda", lam, step=step)
            if args.model == "edlae":
                experiment.log_metric("dropout", dropout, step=step)
            experiment.log_metrics(validation, prefix="val", step=step)
        label = f"lambda {lam:g}" + (f" dropout {dropout:g}" if args.model == "edlae" else "")
        print(runs.summary_line(f"{label} validation", validation), flush=True)

    gram = [model.gram_matrix(split.train, device)]
    if len(lambdas) * len(dropouts) == 1:  # nothing to choose: one float64 solve
        lam, dropout = lambdas[0], dropouts[0]
        weights = final_weights(gram, lam, dropout)
        validation = evaluate(weights, split.validation, ks)
        record(lam, dropout, validation)
    else:
        lam, dropout, validation = search(gram[0], split.validation, lambdas, dropouts, ks,
                                          args.exhaustive, record)
        weights = final_weights(gram, lam, dropout)
    save_checkpoint(run_dir, model_name, weights, lam, dropout, split.item_ids)
    test = evaluate(weights, split.test, ks, run_dir / "test_per_user.csv")
    selected = {"lambda": lam}
    if args.model == "edlae":
        selected["dropout"] = dropout
    label = f"lambda {lam:g}" + (f", dropout {dropout:g}" if args.model == "edlae" else "")
    print(runs.summary_line(f"test ({label})", test))

    results = {"model": model_name, "folder": FOLDER.name, "protocol": "B",
               "holdout": args.holdout, "test": test, "validation": validation,
               "best_epoch": None, "selected": selected,
               "wall_seconds": round(time.time() - started, 2),
               "peak_memory_mb": round(runs.peak_memory_mb(), 1), "seed": args.seed,
               "data_sha256": ratings.sha256, "device": str(device)}
    runs.finish_run(experiment, run_dir, results, run_dir / "model.pt", args.comet_log_model)
    return results


def main(argv=None):
    args = parse_args(argv)
    try:
        run(args)
    except data.DataError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
