"""ESAE-PyTorch: train and evaluate EASE (Steck 2019) on MovieLens-1M, Protocol B of
PROTOCOLS.md (top-N ranking under strong generalisation).

The experiment: command line, data, the lambda search on the validation users, the single
test evaluation and the results. The run folder (config.json, metrics.jsonl, results.json,
model.pt) and CometML logging use runs.py. Usage: python ESAE-PyTorch/main.py --help
"""
import argparse
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

import data
import metrics
import model
import runs
from runs import non_negative_int, positive_float

FOLDER = Path(__file__).resolve().parent
MODEL_NAME = "EASE"
DEFAULT_LAMBDAS = (250.0, 500.0, 1000.0, 2000.0)
SELECTION_METRIC = "ndcg@100"


# ---------------------------------------------------------------- command line


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="EASE (Steck 2019) on MovieLens-1M: top-N ranking under strong "
                    "generalisation (PROTOCOLS.md, Protocol B).")
    runs.add_data_arguments(parser, FOLDER.name, data.default_data_dir())
    parser.add_argument("--seed", type=non_negative_int, default=98765,
                        help="seed of the user permutation and the random hold-out")
    parser.add_argument("--lam", type=positive_float,
                        help="fixed L2 weight lambda; skips the validation search")
    parser.add_argument("--lambdas", type=runs.positive_float_list, default=list(DEFAULT_LAMBDAS),
                        help="comma-separated lambda grid searched on the validation users "
                             "(default: %(default)s)")
    runs.add_top_n_arguments(parser, metrics.DEFAULT_KS)
    runs.add_run_arguments(parser, resume=False)
    return parser.parse_args(argv)


def pick_device(choice):
    if choice == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda was given but no CUDA device is available")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


# ---------------------------------------------------------------- training


def evaluate(weights, held_out, ks, per_user_csv=None):
    """Metrics of the held-out users scored from their fold-in items; with per_user_csv,
    each user's metrics are also written there."""
    item_scores = model.scores(weights, held_out.fold_in)
    per_user = metrics.per_user_metrics(item_scores, held_out.fold_in, held_out.target, ks)
    if per_user_csv is not None:
        metrics.write_per_user(per_user_csv, held_out.user_ids, held_out.fold_in,
                               held_out.target, per_user)
    return metrics.average([per_user])


def search_lambda(gram, split, lambdas, ks, args, run_dir, experiment):
    """Solve once per lambda, keep the weights with the best validation NDCG@100."""
    best = None
    for step, lam in enumerate(tqdm(lambdas, desc="lambda", disable=args.quiet), start=1):
        weights = model.ease_weights(gram, lam)
        validation = evaluate(weights, split.validation, ks)
        runs.append_jsonl(run_dir / "metrics.jsonl", {"step": step, "lambda": lam,
                                                     "validation": validation})
        if experiment is not None:
            experiment.log_metric("lambda", lam, step=step)
            experiment.log_metrics(validation, prefix="val", step=step)
        tqdm.write(runs.summary_line(f"lambda {lam:g} validation", validation))
        if best is None or validation[SELECTION_METRIC] > best[2][SELECTION_METRIC]:
            best = (lam, weights, validation)
    return best


def save_checkpoint(run_dir, weights, lam, item_ids):
    state = {"model": MODEL_NAME, "lambda": lam, "item_ids": item_ids,
             "weights": weights.to(torch.float32).cpu()}
    runs.write_atomic(run_dir / "model.pt", lambda tmp: torch.save(state, tmp))


def run(args):
    started = time.time()
    runs.comet_mode(args.comet)  # refuse --comet online without a key before writing
    device = pick_device(args.device)
    ks = sorted(set(args.ks) | {100})
    ratings_path = data.ensure_ratings_file(args.data_dir, not args.no_download,
                                            quiet=args.quiet)
    ratings = data.load_ratings(ratings_path)
    split = data.split_top_n(ratings, seed=args.seed, min_rating=args.min_rating,
                             heldout_users=args.heldout_users, holdout=args.holdout)
    run_dir = runs.make_run_dir(args.out_dir, FOLDER)  # once the data is good
    lambdas = [args.lam] if args.lam is not None else args.lambdas
    config = {**runs.config_values(args), "model": MODEL_NAME, "device_used": str(device),
              "lambdas": lambdas, "n_train_users": len(split.train_user_ids),
              "n_items": split.n_items, "data_sha256": ratings.sha256}
    runs.write_json(run_dir / "config.json", config)
    experiment = runs.start_comet(args.comet, run_dir, config, runs.run_labels(
        MODEL_NAME, FOLDER.name, "B", args.holdout, args.seed))

    gram = model.gram_matrix(split.train, device)
    lam, weights, validation = search_lambda(gram, split, lambdas, ks, args, run_dir,
                                             experiment)
    save_checkpoint(run_dir, weights, lam, split.item_ids)
    test = evaluate(weights, split.test, ks, run_dir / "test_per_user.csv")
    print(runs.summary_line(f"test (lambda {lam:g})", test))

    results = {"model": MODEL_NAME, "folder": FOLDER.name, "protocol": "B",
               "holdout": args.holdout, "test": test, "validation": validation,
               "best_epoch": None, "selected": {"lambda": lam},
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
