"""Run infrastructure shared by every model folder: argument validators and the common
flags, --resume, the run folder and its files, and CometML logging.

This file is the same byte for byte in all six model folders (tests/test_consistency.py
fails on any difference); it imports no deep-learning framework, so the PyTorch and the
TensorFlow folders use it alike. What depends on the framework (picking the device,
writing checkpoints) stays in each folder's main.py. The evaluation protocols are
described in PROTOCOLS.md at the repository root.
"""
import argparse
import json
import math
import os
import resource
import sys
from datetime import datetime
from pathlib import Path

COMET_PROJECT = "autoencoders-movielens1m"
DATASET = "movielens-1m"
# The MovieLens sets of --dataset (data.py downloads them) and the number of validation
# users, and of test users, each holds out by default (PROTOCOLS.md, Protocol B): 600 for
# ML-1M and 10,000 for ML-20M as in Liang et al. 2018; ML-100K and ML-10M about a tenth of
# their users as ML-1M (943 and 69,878 users), ML-25M the 10,000 of ML-20M.
HELDOUT_USERS = {"ml-100k": 100, "ml-1m": 600, "ml-10m": 7000, "ml-20m": 10000,
                 "ml-25m": 10000}
DEFAULT_DATASET = "ml-1m"
OWN_FILE_HELDOUT_USERS = 600
# With --resume, config.json supplies every flag but these. Run control comes from this
# call (its default when not given); MAY_CHANGE flags from this call only when given.
RUN_CONTROL = ("resume", "out_dir", "comet", "comet_log_model", "quiet", "device",
               "threads", "no_download", "stop_after")
MAY_CHANGE = ("epochs", "data_dir")


# ---------------------------------------------------------------- validators


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


def positive_float(text):
    value = float(text)
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a positive finite number, not {text}")
    return value


def non_negative_float(text):
    value = float(text)
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, not {text}")
    return value


def dropout_rate(text):
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), not {text}")
    return value


def decay_factor(text):
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], not {text}")
    return value


def positive_int_list(text):
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated integers, not {text}")
    if any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"every value must be positive, not {text}")
    return values


def positive_float_list(text):
    return [positive_float(part) for part in text.split(",")]


# ---------------------------------------------------------------- command line


def add_data_arguments(parser, folder, default_data_dir):
    """--dataset or --ratings-file (with --format), --data-dir, --out-dir, --no-download;
    default_data_dir is ml-1m/ of the repository, whose parent holds every set's folder."""
    parser.data_root = Path(default_data_dir).parent  # read by resolve_data_arguments
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--dataset", choices=tuple(HELDOUT_USERS),
                        help="MovieLens set, downloaded from GroupLens (MD5-checked) into "
                             "its folder of the repository when missing: ml-100k (u.data), "
                             "ml-1m (ratings.dat), ml-10m (ratings.dat, half stars), ml-20m "
                             "and ml-25m (ratings.csv, half stars) (default: ml-1m)")
    source.add_argument("--ratings-file", type=Path, metavar="FILE",
                        help="your own ratings instead: one rating a line, the fields user, "
                             "item, rating[, timestamp] in that order (columns 1-4; names "
                             "are not read), a first line without any number in it is a "
                             "header and skipped; ids any text (integers when every id of "
                             "the column is one), ratings 0.5..5, timestamps integers")
    parser.add_argument("--format", choices=("csv", "tsv", "dat"),
                        help="--ratings-file's field separator: csv ',', tsv a tab, dat '::' "
                             "(MovieLens, positive integer ids, no header) (default: from "
                             "the file name: .csv, .tsv/.tab/.data, .dat)")
    parser.add_argument("--data-dir", type=Path,
                        help="folder holding the set's files (default: the repository's "
                             "folder named after --dataset, e.g. ml-1m/)")
    parser.add_argument("--out-dir", type=Path,
                        help=f"run folder (default: runs/{folder}/<timestamp>/)")
    parser.add_argument("--no-download", action="store_true",
                        help="never download a MovieLens set; fail if it is missing")


def add_top_n_arguments(parser, default_ks):
    """The split and cut-off flags of Protocol B (PROTOCOLS.md)."""
    parser.add_argument("--holdout", choices=("random", "temporal"), default="random",
                        help="targets: a random 20%% of each held-out user's positives, "
                             "or the latest 20%%")
    parser.add_argument("--min-rating", type=non_negative_float, default=4,
                        help="ratings at or above this are positives; 0 keeps every rating "
                             "(4 keeps 4, 4.5 and 5: on half-star sets the same positives "
                             "as Liang et al.'s > 3.5) (default: 4)")
    parser.add_argument("--heldout-users", type=positive_int,
                        help="number of validation users, and of test users (default: " +
                             ", ".join(f"{n:,} for {name}" for name, n in
                                       HELDOUT_USERS.items()) +
                             f", {OWN_FILE_HELDOUT_USERS} for --ratings-file)")
    parser.add_argument("--ks", type=positive_int_list, default=list(default_ks),
                        help="cut-offs K of the reported metrics (default: 10,20,50,100)")


def add_run_arguments(parser, resume=True):
    """--device, --comet, --comet-log-model, --quiet and (resume=True) --resume."""
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: a GPU when there is one; config.json keeps this as "
                             "'device' and what ran as 'device_used'")
    if resume:
        parser.add_argument("--resume", type=Path, metavar="RUN_DIR",
                            help="continue the run in RUN_DIR from its last checkpoint with "
                                 "its config.json; only --epochs, --data-dir and the "
                                 "run-control flags (--device, --comet, --quiet, ...) may "
                                 "be given, and the device may differ from the first one")
    parser.add_argument("--comet", choices=("auto", "online", "offline", "off"),
                        default="auto",
                        help="auto: online when an API key is configured, else an offline "
                             "archive in the run folder")
    parser.add_argument("--comet-log-model", action="store_true",
                        help="also upload the best checkpoint to CometML (log_model)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def parse_with_resume(parser, argv=None):
    """parser.parse_args(argv); with --resume, the run's config.json supplies the flags
    (see RUN_CONTROL and MAY_CHANGE); any other flag given with --resume is an error."""
    args = parser.parse_args(argv)
    if getattr(args, "resume", None) is None:
        return resolve_data_arguments(parser, args)
    config_path = args.resume / "config.json"
    if not config_path.is_file():
        parser.error(f"--resume {args.resume}: no config.json there")
    config = saved_config(args.resume)
    saved = config.get("args", config)
    defaults = {action.dest: action.default for action in parser._actions}
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    try:
        explicit = vars(parser.parse_args(argv))
    finally:
        for action in parser._actions:
            action.default = defaults[action.dest]
    fixed = sorted(name for name in explicit if name not in RUN_CONTROL + MAY_CHANGE)
    if fixed:
        flags = ", ".join("--" + name.replace("_", "-") for name in fixed)
        parser.error(f"--resume takes the run's settings from its config.json; {flags} "
                     f"cannot change (only --epochs, --data-dir, --device, --comet, "
                     f"--comet-log-model, --quiet, --threads, --no-download, --stop-after)")
    for name in vars(args):
        if name in RUN_CONTROL or name not in saved or (name in MAY_CHANGE and
                                                        name in explicit):
            continue
        setattr(args, name, saved[name])
    args.out_dir = args.resume
    if args.data_dir is not None:
        args.data_dir = Path(args.data_dir)
    if args.ratings_file is not None:
        args.ratings_file = Path(args.ratings_file)
    return resolve_data_arguments(parser, args)


def resolve_data_arguments(parser, args):
    """Fill the data set's defaults: --dataset ml-1m unless a --ratings-file is given, the
    set's folder as --data-dir, its --heldout-users; --format only with --ratings-file."""
    if args.ratings_file is None:
        if args.format is not None:
            parser.error("--format applies to --ratings-file only")
        args.dataset = args.dataset or DEFAULT_DATASET
        if args.data_dir is None:
            args.data_dir = parser.data_root / args.dataset
    elif args.data_dir is None:
        args.data_dir = args.ratings_file.parent
    if getattr(args, "heldout_users", 0) is None:
        args.heldout_users = HELDOUT_USERS.get(args.dataset, OWN_FILE_HELDOUT_USERS)
    return args


def dataset_label(args):
    """The data set as runs are labelled: movielens-1m, ..., or file-<name> for one's own."""
    if args.ratings_file is not None:
        return f"file-{Path(args.ratings_file).name}"
    return "movielens-" + args.dataset[len("ml-"):]


def config_values(args):
    """vars(args) as JSON values: paths absolute (resumable from any working directory)."""
    return {name: str(value.resolve()) if isinstance(value, Path) else value
            for name, value in vars(args).items()}


def saved_config(run_dir):
    """The config.json of the run in run_dir (its flags, for the TF folders, under "args")."""
    return json.loads((Path(run_dir) / "config.json").read_text())


def check_same_data(run_dir, sha256, ratings_path):
    """With --resume: the ratings file must be the one the run was trained on."""
    saved = saved_config(run_dir).get("data_sha256")
    if saved is not None and saved != sha256:
        sys.exit(f"error: --resume: {ratings_path} differs from the file the run in "
                 f"{run_dir} was trained on (sha256 {saved})")


def starting_message(run_dir, epoch):
    """The one line a resumed run prints: where it goes on from."""
    if epoch == 0:
        return (f"{run_dir} has no checkpoint yet (no evaluation had finished): "
                f"starting at epoch 1")
    return f"resuming {run_dir} after epoch {epoch}"


# ---------------------------------------------------------------- run folder


def make_run_dir(out_dir, folder):
    """out_dir, or runs/<folder name>/<timestamp>/ next to the model folders; created."""
    if out_dir is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        out_dir = Path(folder).parent / "runs" / Path(folder).name / stamp
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


def rewrite_jsonl(path, objs):
    """path holding exactly objs, one JSON line each (a resumed run's history)."""
    write_atomic(path, lambda tmp: tmp.write_text("".join(json.dumps(o) + "\n" for o in objs)))


def peak_memory_mb():
    """Peak resident memory of this process (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def summary_line(label, values):
    shown = ", ".join(f"{name} {values[name]:.4f}" for name in
                      ("precision@20", "recall@20", "ndcg@100", "rmse") if name in values)
    return f"{label}: {shown}"


# ---------------------------------------------------------------- CometML


def comet_mode(mode):
    """'online', 'offline' or 'off' for --comet mode; exits with one error line when
    online is asked for without an API key (call it before anything is written)."""
    if mode == "off":
        return "off"
    # Unless told otherwise, comet_ml sends its own error reports to Comet's Sentry from a
    # random half of all processes, offline runs included (and retries noisily offline).
    os.environ.setdefault("COMET_ERROR_TRACKING_ENABLE", "false")
    import comet_ml
    has_key = comet_ml.get_config().get_string(None, "comet.api_key") is not None
    if mode == "online" and not has_key:
        sys.exit("error: --comet online needs an API key: set COMET_API_KEY or write "
                 "~/.comet.config (see README.md)")
    return "online" if has_key and mode in ("online", "auto") else "offline"


def run_labels(model, folder, protocol, holdout, seed, dataset=DATASET):
    """(name, tags, others) of a run: how a Comet project view groups and filters runs;
    dataset: dataset_label(args)."""
    name = f"{model} {holdout} seed {seed}"
    tags = [model, folder, f"protocol-{protocol}", f"holdout-{holdout}", dataset,
            f"seed-{seed}"]
    others = {"model": model, "folder": folder, "protocol": protocol, "holdout": holdout,
              "dataset": dataset, "seed": seed}
    return name, tags, others


def start_comet(mode, run_dir, hyperparameters, labels):
    """An Experiment (online), an OfflineExperiment (archive in run_dir) or None (off);
    labels = run_labels(...). config.json is logged as an asset when it exists."""
    mode = comet_mode(mode)
    if mode == "off":
        return None
    import comet_ml
    settings = dict(project_name=os.environ.get("COMET_PROJECT_NAME", COMET_PROJECT),
                    log_code=False, parse_args=False, log_git_metadata=False,
                    log_git_patch=False, auto_output_logging=False, display_summary_level=0)
    if mode == "online":
        experiment = comet_ml.Experiment(**settings)
    else:
        experiment = comet_ml.OfflineExperiment(offline_directory=str(run_dir), **settings)
    name, tags, others = labels
    experiment.set_name(name)
    experiment.add_tags(tags)
    experiment.log_others(others)
    experiment.log_parameters(hyperparameters)
    if (run_dir / "config.json").is_file():
        experiment.log_asset(str(run_dir / "config.json"), file_name="config.json")
    return experiment


def log_epoch(experiment, epoch, values, validation=None):
    """One epoch's metrics, stamped with step and epoch: values under their own names
    (train_loss, beta, ...), validation metrics as val_<metric>."""
    if experiment is None:
        return
    experiment.log_metrics(values, step=epoch, epoch=epoch)
    if validation is not None:
        experiment.log_metrics(validation, prefix="val", step=epoch, epoch=epoch)


def finish_run(experiment, run_dir, results, model_path=None, log_model=False):
    """Write results.json; log the test metrics (metrics test_<name>, the table
    test_metrics.csv, for top-N the curves NDCG@K and Recall@K over K), the results and
    with log_model the best checkpoint; end the experiment."""
    write_json(run_dir / "results.json", results)
    if experiment is not None:
        test = results["test"]
        experiment.log_metrics(test, prefix="test")
        experiment.log_metric("wall_seconds", results["wall_seconds"])
        if results.get("best_epoch") is not None:
            experiment.log_metric("best_epoch", results["best_epoch"])
        for name, value in results.get("selected", {}).items():
            if isinstance(value, (int, float)):
                experiment.log_metric(f"selected_{name}", value)
        experiment.log_table("test_metrics.csv", [[k, v] for k, v in sorted(test.items())],
                             headers=["metric", "value"])
        for metric in ("ndcg", "recall"):
            ks = sorted(int(name.split("@")[1]) for name in test
                        if name.startswith(metric + "@"))
            if ks:
                experiment.log_curve(f"test_{metric}_at_k", x=ks,
                                     y=[test[f"{metric}@{k}"] for k in ks])
        experiment.log_asset(str(run_dir / "results.json"), file_name="results.json")
        if log_model and model_path is not None:
            experiment.log_model(results["model"], str(model_path))
    finish_comet(experiment, run_dir)
    print(f"results written to {run_dir / 'results.json'}")


def finish_comet(experiment, run_dir):
    """End the experiment; offline, print how to upload its archive."""
    if experiment is None:
        return
    offline = not hasattr(experiment, "url") or experiment.url is None
    experiment.end()
    if offline:
        for archive in sorted(run_dir.glob("*.zip")):
            print(f"Comet offline archive written; upload it with: comet upload {archive}")
