"""CDAE-PyTorch: train and evaluate the Collaborative Denoising Auto-Encoder (Wu et al.,
WSDM 2016) on MovieLens-1M, Protocol B (strong generalisation, top-N ranking).

Owns the command line, the training loop with early stopping on validation NDCG@100, the
fold-in of held-out users' vectors, the single test evaluation, the run folder (config.json,
metrics.jsonl, results.json, checkpoints) and CometML logging.
Usage: python CDAE-PyTorch/main.py --help
"""
import argparse
import json
import math
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
SELECTION_METRIC = "ndcg@100"
COMET_PROJECT = "autoencoders-movielens1m"
# Flags that --resume takes from the command line; every other one comes from config.json.
RESUME_OVERRIDES = ("epochs", "device", "threads", "comet", "quiet", "no_download",
                    "data_dir")


class Diverged(Exception):
    """The training loss became NaN or infinite."""


# ---------------------------------------------------------------- command line


def positive_float(text):
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value


def non_negative_float(text):
    value = float(text)
    if not value >= 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, not {text}")
    return value


def probability(text):
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), not {text}")
    return value


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


def make_parser():
    parser = argparse.ArgumentParser(
        description="CDAE (Wu et al. 2016) on MovieLens-1M: top-N ranking under strong "
                    "generalisation (DESIGN.md Protocol B).")
    parser.add_argument("--data-dir", type=Path, default=data.default_data_dir(),
                        help="folder holding ratings.dat (default: ml-1m/ of the repository)")
    parser.add_argument("--out-dir", type=Path,
                        help="run folder (default: runs/CDAE-PyTorch/<timestamp>/)")
    parser.add_argument("--seed", type=non_negative_int, default=98765,
                        help="seed of the split, the initial weights and the training noise")
    parser.add_argument("--epochs", type=positive_int, default=80,
                        help="maximum number of training epochs")
    parser.add_argument("--batch-size", type=positive_int, default=128,
                        help="training users per batch")
    parser.add_argument("--lr", type=positive_float, default=1e-2, help="learning rate")
    parser.add_argument("--optimizer", choices=("adam", "adagrad"), default="adam")
    parser.add_argument("--hidden", type=positive_int, default=50, help="hidden units")
    parser.add_argument("--dropout", type=probability, default=0.5,
                        help="corruption level q: share of input entries zeroed")
    parser.add_argument("--loss", choices=("sampled", "full"), default="sampled",
                        help="BCE on observed items plus sampled negatives, or on all items")
    parser.add_argument("--negatives", type=positive_float, default=5.0,
                        help="sampled unobserved items per observed item (--loss sampled)")
    parser.add_argument("--l2", type=non_negative_float, default=3e-3,
                        help="L2 weight lambda on W, W' and the user vectors")
    parser.add_argument("--no-user-node", action="store_true",
                        help="no per-user input vector: the plain denoising autoencoder")
    parser.add_argument("--fold-in-steps", type=non_negative_int, default=20,
                        help="Adam steps that fit a held-out user's vector, network frozen")
    parser.add_argument("--fold-in-lr", type=positive_float, default=0.1,
                        help="learning rate of the fold-in steps")
    parser.add_argument("--patience", type=positive_int, default=5,
                        help="stop after this many evaluations without a better "
                             "validation NDCG@100")
    parser.add_argument("--eval-every", type=positive_int, default=2,
                        help="evaluate on the validation users every this many epochs")
    parser.add_argument("--resume", type=Path, metavar="RUN_DIR",
                        help="continue the interrupted run in RUN_DIR (its config.json)")
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
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="CPU threads of torch (default 1: the network is small, and "
                             "two threads on a busy 2-core machine ran ten times slower)")
    parser.add_argument("--comet", choices=("auto", "online", "offline", "off"),
                        default="auto",
                        help="auto: online when an API key is configured, else offline")
    parser.add_argument("--no-download", action="store_true",
                        help="never download MovieLens-1M; fail if it is missing")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def parse_args(argv=None):
    """Parsed flags; with --resume, config.json of the run supplies all but RESUME_OVERRIDES
    (which it supplies too unless given on the command line)."""
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.resume is None:
        return args
    config_path = args.resume / "config.json"
    if not config_path.is_file():
        parser.error(f"--resume {args.resume}: no config.json there")
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    explicit = vars(parser.parse_args(argv))
    config = json.loads(config_path.read_text())
    for name in vars(args):
        if name in ("resume", "out_dir") or name not in config:
            continue
        if not (name in RESUME_OVERRIDES and name in explicit):
            value = config[name]
            setattr(args, name, Path(value) if name == "data_dir" else value)
    args.out_dir = args.resume
    return args


def pick_device(choice):
    if choice == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda was given but no CUDA device is available")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def model_name(args):
    return "DAE" if args.no_user_node else "CDAE"


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


def start_comet(mode, run_dir, hyperparameters, name):
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
    experiment.set_name(f"{name} {run_dir.name}")
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


def epoch_seed(seed, epoch):
    """Each epoch's shuffling and noise come from (seed, epoch) alone, so a resumed run
    draws exactly what an uninterrupted one would."""
    return seed * 1_000_003 + epoch


def build(args, n_items, n_users, device):
    torch.manual_seed(args.seed)
    net = model.CDAE(n_items, n_users, args.hidden, not args.no_user_node).to(device)
    optimiser_class = torch.optim.Adam if args.optimizer == "adam" else torch.optim.Adagrad
    return net, optimiser_class(net.parameters(), lr=args.lr)


def train_epoch(net, optimiser, train, args, epoch, device):
    """One pass over the training users in a seeded order; returns the mean batch loss."""
    order = torch.randperm(train.shape[0],
                           generator=torch.Generator().manual_seed(epoch_seed(args.seed, epoch)))
    noise = torch.Generator(device=device).manual_seed(epoch_seed(args.seed, epoch))
    negatives = args.negatives if args.loss == "sampled" else None
    net.train()
    total, n_batches = 0.0, 0
    batches = tqdm(range(0, len(order), args.batch_size), desc=f"epoch {epoch}",
                   disable=args.quiet, leave=False)
    for start in batches:
        users = order[start:start + args.batch_size]
        x = torch.from_numpy(train[users.numpy()].toarray()).to(device)
        mask = model.loss_mask(x, negatives, noise)
        user_vectors = None if net.user_vectors is None else net.user_vectors(users.to(device))
        logits = net(model.corrupt(x, args.dropout, noise), user_vectors)
        loss = (model.reconstruction_loss(logits, x, mask).mean()
                + 0.5 * args.l2 * net.network_l2())
        if user_vectors is not None:
            loss = loss + 0.5 * args.l2 * user_vectors.square().sum(dim=1).mean()
        if not torch.isfinite(loss):
            raise Diverged(f"training loss became {loss.item()} at epoch {epoch}")
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        total, n_batches = total + loss.item(), n_batches + 1
        batches.set_postfix(loss=f"{total / n_batches:.3f}")
    return total / n_batches


def evaluate(net, fold_in_x, held_out, args, ks, per_user_csv=None):
    """Fit the held-out users' vectors on their fold-in items, then rank all items;
    with per_user_csv, each user's metrics are also written there."""
    net.eval()
    negatives = args.negatives if args.loss == "sampled" else None
    vectors = model.fold_in(net, fold_in_x, args.fold_in_steps, args.fold_in_lr, args.l2,
                            negatives)
    item_scores = model.scores(net, fold_in_x, vectors).cpu().numpy()
    per_user = metrics.per_user_metrics(item_scores, held_out.fold_in, held_out.target, ks)
    if per_user_csv is not None:
        metrics.write_per_user(per_user_csv, held_out.user_ids, held_out.fold_in,
                               held_out.target, per_user)
    return metrics.average([per_user])


def summary_line(label, values):
    shown = ", ".join(f"{name} {values[name]:.4f}" for name in
                      ("precision@20", "recall@20", "ndcg@100") if name in values)
    return f"{label}: {shown}"


def fresh_state():
    return {"epoch": 0, "best_epoch": None, "best_validation": None, "bad_evaluations": 0,
            "history": []}


def save_checkpoint(path, net, optimiser, state):
    checkpoint = {**state, "model": net.state_dict(), "optimizer": optimiser.state_dict()}
    write_atomic(path, lambda tmp: torch.save(checkpoint, tmp))


def load_checkpoint(run_dir, net, optimiser, device, lr):
    """Training state of run_dir/last.pt (weights and optimiser loaded), or a fresh one
    when the interrupted run had not reached its first evaluation."""
    path = run_dir / "last.pt"
    if not path.is_file():
        return fresh_state()
    checkpoint = torch.load(path, map_location=device, weights_only=False)
    net.load_state_dict(checkpoint.pop("model"))
    optimiser.load_state_dict(checkpoint.pop("optimizer"))
    for group in optimiser.param_groups:  # config.json's learning rate is the one in force
        group["lr"] = lr
    return checkpoint


def train(net, optimiser, state, split, args, ks, run_dir, experiment, device):
    """Epochs with early stopping; checkpoints last.pt each evaluation and best.pt on a new
    best validation NDCG@100. Returns the final state."""
    fold_in_x = torch.from_numpy(split.validation.fold_in.toarray()).to(device)
    while state["epoch"] < args.epochs and state["bad_evaluations"] < args.patience:
        epoch = state["epoch"] + 1
        train_loss = train_epoch(net, optimiser, split.train, args, epoch, device)
        if experiment is not None:
            experiment.log_metric("train_loss", train_loss, step=epoch)
        state["epoch"] = epoch
        if epoch % args.eval_every and epoch != args.epochs:
            continue
        validation = evaluate(net, fold_in_x, split.validation, args, ks)
        record = {"epoch": epoch, "train_loss": train_loss, "validation": validation}
        state["history"].append(record)
        append_jsonl(run_dir / "metrics.jsonl", record)
        if experiment is not None:
            experiment.log_metrics(validation, prefix="val", step=epoch)
        best = state["best_validation"]
        if best is None or validation[SELECTION_METRIC] > best[SELECTION_METRIC]:
            state.update(best_epoch=epoch, best_validation=validation, bad_evaluations=0)
            save_checkpoint(run_dir / "best.pt", net, optimiser, state)
        else:
            state["bad_evaluations"] += 1
        save_checkpoint(run_dir / "last.pt", net, optimiser, state)
        tqdm.write(summary_line(f"epoch {epoch} loss {train_loss:.4f} validation", validation))
    return state


def run(args):
    started = time.time()
    device = pick_device(args.device)
    torch.set_num_threads(args.threads)
    ks = sorted(set(args.ks) | {100})
    ratings_path = data.ensure_ratings_file(args.data_dir, not args.no_download,
                                            quiet=args.quiet)
    ratings = data.load_ratings(ratings_path)
    split = data.split_top_n(ratings, seed=args.seed, min_rating=args.min_rating,
                             heldout_users=args.heldout_users, holdout=args.holdout)
    run_dir = make_run_dir(args.out_dir)  # only once the data is good: no empty run folders
    config = {**{k: str(v.resolve()) if isinstance(v, Path) else v
                 for k, v in vars(args).items()},
              "model": model_name(args), "device_used": str(device),
              "n_train_users": len(split.train_user_ids), "n_items": split.n_items,
              "data_sha256": ratings.sha256}
    if args.resume is not None:
        previous = json.loads((run_dir / "config.json").read_text())
        if previous["data_sha256"] != ratings.sha256:
            raise data.DataError(f"{ratings_path} differs from the file the run in {run_dir} "
                                 f"was trained on (sha256 {previous['data_sha256']})")
    write_json(run_dir / "config.json", {**config, "resume": None})
    experiment = start_comet(args.comet, run_dir, config, model_name(args))

    net, optimiser = build(args, split.n_items, len(split.train_user_ids), device)
    state = (load_checkpoint(run_dir, net, optimiser, device, args.lr)
             if args.resume is not None else fresh_state())
    # a resumed run repeats the epochs after its last checkpoint: drop their old lines
    write_atomic(run_dir / "metrics.jsonl", lambda tmp: tmp.write_text(
        "".join(json.dumps(record) + "\n" for record in state["history"])))
    try:
        state = train(net, optimiser, state, split, args, ks, run_dir, experiment, device)
    except Diverged as error:
        kept = (f"best checkpoint (epoch {state['best_epoch']}) kept at {run_dir / 'best.pt'}"
                if state["best_epoch"] is not None else "no checkpoint had been written yet")
        if experiment is not None:
            experiment.end()
        sys.exit(f"error: {error}; {kept}")

    best = torch.load(run_dir / "best.pt", map_location=device, weights_only=False)
    net.load_state_dict(best["model"])
    test_x = torch.from_numpy(split.test.fold_in.toarray()).to(device)
    test = evaluate(net, test_x, split.test, args, ks, run_dir / "test_per_user.csv")
    print(summary_line(f"test (epoch {state['best_epoch']})", test))

    results = {"model": model_name(args), "folder": FOLDER.name, "protocol": "B",
               "holdout": args.holdout, "test": test, "validation": state["best_validation"],
               "best_epoch": state["best_epoch"], "selected": {},
               "epochs_run": state["epoch"],
               "wall_seconds": round(time.time() - started, 2),
               "peak_memory_mb": round(peak_memory_mb(), 1), "seed": args.seed,
               "data_sha256": ratings.sha256, "device": str(device)}
    write_json(run_dir / "results.json", results)
    if experiment is not None:
        experiment.log_metrics(test, prefix="test")
        experiment.log_metric("wall_seconds", results["wall_seconds"])
        experiment.log_metric("best_epoch", state["best_epoch"])
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
