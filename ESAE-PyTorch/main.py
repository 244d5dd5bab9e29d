"""ESAE-PyTorch: train and evaluate EASE (Steck 2019) on MovieLens-1M, Protocol B.

Owns the command line, the lambda search on the validation users, the single test
evaluation, the run folder (config.json, metrics.jsonl, results.json, checkpoint) and
CometML logging. Usage: python ESAE-PyTorch/main.py --help
"""
import argparse
import json
import os
import resource
import sys
import time
from datetime import datetime
from pathlib import Path

import torch
from tqdm import tqdm

import data
import metrics
import model

FOLDER = Path(__file__).resolve().parent
MODEL_NAME = "EASE"
DEFAULT_LAMBDAS = (250.0, 500.0, 1000.0, 2000.0)
SELECTION_METRIC = "ndcg@100"
COMET_PROJECT = "autoencoders-movielens1m"


# ---------------------------------------------------------------- command line


def positive_float(text):
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, not {text}")
    return value


def positive_float_list(text):
    return [positive_float(part) for part in text.split(",")]


def positive_int_list(text):
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated integers, not {text}")
    if any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"every value must be positive, not {text}")
    return values


def positive_int(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text}")
    return value


def non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be zero or more, not {text}")
    return value


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="EASE (Steck 2019) on MovieLens-1M: top-N ranking under strong "
                    "generalisation (DESIGN.md Protocol B).")
    parser.add_argument("--data-dir", type=Path, default=data.default_data_dir(),
                        help="folder holding ratings.dat (default: ml-1m/ of the repository)")
    parser.add_argument("--out-dir", type=Path,
                        help="run folder (default: runs/ESAE-PyTorch/<timestamp>/)")
    parser.add_argument("--seed", type=non_negative_int, default=98765,
                        help="seed of the user permutation and the random hold-out")
    parser.add_argument("--lam", type=positive_float,
                        help="fixed L2 weight lambda; skips the validation search")
    parser.add_argument("--lambdas", type=positive_float_list, default=list(DEFAULT_LAMBDAS),
                        help="comma-separated lambda grid searched on the validation users "
                             "(default: %(default)s)")
    parser.add_argument("--holdout", choices=("random", "temporal"), default="random",
                        help="targets: a random 20%% of each held-out user's positives, "
                             "or the latest 20%%")
    parser.add_argument("--min-rating", type=non_negative_int, default=4,
                        help="ratings at or above this are positives; 0 keeps every rating")
    parser.add_argument("--heldout-users", type=positive_int, default=600,
                        help="number of validation users, and of test users")
    parser.add_argument("--ks", type=positive_int_list, default=list(metrics.DEFAULT_KS),
                        help="cut-offs K of the reported metrics (default: 10,20,50,100)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--comet", choices=("auto", "online", "offline", "off"),
                        default="auto",
                        help="auto: online when an API key is configured, else offline")
    parser.add_argument("--no-download", action="store_true",
                        help="never download MovieLens-1M; fail if it is missing")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def pick_device(choice):
    if choice == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda was given but no CUDA device is available")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


# ---------------------------------------------------------------- run folder


def make_run_dir(out_dir):
    if out_dir is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        out_dir = FOLDER.parent / "runs" / FOLDER.name / stamp
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


def append_jsonl(path, obj):
    with open(path, "a") as out:
        out.write(json.dumps(obj) + "\n")


def peak_memory_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------- CometML


def start_comet(mode, run_dir, hyperparameters):
    """An Experiment (online), an OfflineExperiment (archive in run_dir) or None (off)."""
    if mode == "off":
        return None
    # Unless told otherwise, comet_ml sends its own error reports to Comet's Sentry from a
    # random half of all processes, offline runs included (and retries noisily offline).
    os.environ.setdefault("COMET_ERROR_TRACKING_ENABLE", "false")
    import comet_ml
    has_key = comet_ml.get_config().get_string(None, "comet.api_key") is not None
    if mode == "online" and not has_key:
        sys.exit("error: --comet online needs an API key: set COMET_API_KEY or write "
                 "~/.comet.config (see README.md)")
    settings = dict(project_name=os.environ.get("COMET_PROJECT_NAME", COMET_PROJECT),
                    log_code=False, parse_args=False, log_git_metadata=False,
                    log_git_patch=False, auto_output_logging=False, display_summary_level=0)
    if has_key and mode in ("online", "auto"):
        experiment = comet_ml.Experiment(**settings)
    else:
        experiment = comet_ml.OfflineExperiment(offline_directory=str(run_dir), **settings)
    experiment.set_name(f"{MODEL_NAME} {run_dir.name}")
    experiment.log_parameters(hyperparameters)
    return experiment


def finish_comet(experiment, run_dir):
    if experiment is None:
        return
    offline = not hasattr(experiment, "url") or experiment.url is None
    experiment.end()
    if offline:
        for archive in sorted(run_dir.glob("*.zip")):
            print(f"Comet offline archive written; upload it with: comet upload {archive}")


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


def summary_line(label, values):
    shown = ", ".join(f"{name} {values[name]:.4f}" for name in
                      ("precision@20", "recall@20", "ndcg@100") if name in values)
    return f"{label}: {shown}"


def search_lambda(gram, split, lambdas, ks, args, run_dir, experiment):
    """Solve once per lambda, keep the weights with the best validation NDCG@100."""
    best = None
    for step, lam in enumerate(tqdm(lambdas, desc="lambda", disable=args.quiet), start=1):
        weights = model.ease_weights(gram, lam)
        validation = evaluate(weights, split.validation, ks)
        append_jsonl(run_dir / "metrics.jsonl", {"step": step, "lambda": lam,
                                                "validation": validation})
        if experiment is not None:
            experiment.log_metric("lambda", lam, step=step)
            experiment.log_metrics(validation, prefix="val", step=step)
        tqdm.write(summary_line(f"lambda {lam:g} validation", validation))
        if best is None or validation[SELECTION_METRIC] > best[2][SELECTION_METRIC]:
            best = (lam, weights, validation)
    return best


def save_checkpoint(run_dir, weights, lam, item_ids):
    state = {"model": MODEL_NAME, "lambda": lam, "item_ids": item_ids,
             "weights": weights.to(torch.float32).cpu()}
    write_atomic(run_dir / "model.pt", lambda tmp: torch.save(state, tmp))


def run(args):
    started = time.time()
    device = pick_device(args.device)
    ks = sorted(set(args.ks) | {100})
    ratings_path = data.ensure_ratings_file(args.data_dir, not args.no_download,
                                            quiet=args.quiet)
    ratings = data.load_ratings(ratings_path)
    split = data.split_top_n(ratings, seed=args.seed, min_rating=args.min_rating,
                             heldout_users=args.heldout_users, holdout=args.holdout)
    run_dir = make_run_dir(args.out_dir)  # only once the data is good: no empty run folders
    lambdas = [args.lam] if args.lam is not None else args.lambdas
    config = {**{k: str(v.resolve()) if isinstance(v, Path) else v
                 for k, v in vars(args).items()},
              "model": MODEL_NAME, "device": str(device), "lambdas": lambdas,
              "n_train_users": len(split.train_user_ids), "n_items": split.n_items,
              "data_sha256": ratings.sha256}
    write_json(run_dir / "config.json", config)
    experiment = start_comet(args.comet, run_dir, config)

    gram = model.gram_matrix(split.train, device)
    lam, weights, validation = search_lambda(gram, split, lambdas, ks, args, run_dir,
                                             experiment)
    save_checkpoint(run_dir, weights, lam, split.item_ids)
    test = evaluate(weights, split.test, ks, run_dir / "test_per_user.csv")
    print(summary_line(f"test (lambda {lam:g})", test))

    results = {"model": MODEL_NAME, "folder": FOLDER.name, "protocol": "B",
               "holdout": args.holdout, "test": test, "validation": validation,
               "best_epoch": None, "selected": {"lambda": lam},
               "wall_seconds": round(time.time() - started, 2),
               "peak_memory_mb": round(peak_memory_mb(), 1), "seed": args.seed,
               "data_sha256": ratings.sha256, "device": str(device)}
    write_json(run_dir / "results.json", results)
    if experiment is not None:
        experiment.log_metrics(test, prefix="test")
        experiment.log_metric("wall_seconds", results["wall_seconds"])
        experiment.log_metric("selected_lambda", lam)
    finish_comet(experiment, run_dir)
    print(f"results written to {run_dir / 'results.json'}")
    return results


def main(argv=None):
    args = parse_args(argv)
    try:
        run(args)
    except data.DataError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
