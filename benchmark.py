"""benchmark.py: run the six model folders and the baselines over unseen seeds and both
hold-outs, and write one comparison table, one chart and paired bootstrap intervals.

Owns the benchmark only; it imports no model code. Each `<Folder>/main.py` (and each
baseline of baselines.py) runs as a subprocess with `--out-dir <out>/runs/<name>/<hold-out>/
seed<seed>` and the flags that script accepts. This script measures each run's wall time
and peak memory itself (os.wait4), reads the run's results.json and its per-unit test file
(test_per_user.csv for top-N, test_predictions.csv for rating prediction), and writes
`<out>/results.md`, `<out>/results.png` and `<out>/results.json`.

Seeds: by default 101, 102 and 103, never used to choose any default (the tuning seeds are
1994 for rating and 98765 for top-N models). Each seed changes the split and the
initialisation. A row shows the mean ± sample standard deviation over its seeds; each
claimed difference carries a paired bootstrap 95% interval over test users (test ratings
for RMSE), pooled across seeds. A run that fails does not stop the others; the exit status
is 1 when any run failed. Usage: python benchmark.py --help
"""
import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent
TUNING_SEEDS = {"A": 1994, "B": 98765}
FIRST_UNSEEN_SEED = 101
HOLDOUTS = ("random", "temporal")
PROTOCOL_NAMES = {"A": "rating prediction", "B": "top-N ranking"}
TOP_N_COLUMNS = (("ndcg@100", "NDCG@100"), ("recall@20", "Recall@20"),
                 ("recall@50", "Recall@50"), ("precision@20", "P@20"))
STDERR_TAIL_LINES = 15
# Child processes run single-threaded when several run at once, so that two jobs share the
# two cores instead of four threads fighting over them.
ONE_THREAD = {name: "1" for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                     "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
                                     "TF_NUM_INTEROP_THREADS")}


@dataclass(frozen=True)
class Model:
    folder: str                 # model folder, or "baselines" for baselines.py
    name: str
    protocol: str               # "A": rating prediction (RMSE), "B": top-N ranking
    seconds: float              # rough single-run cost on 2 CPU cores: longest run first
    accepts_epochs: bool = True
    baseline: str = None        # the baselines.py positional argument
    extra_args: tuple = ()      # flags that select this model within its folder
    refit: bool = False         # run with --refit: a second row from the refit model

    @property
    def slug(self):
        if self.baseline:
            return f"baselines-{self.baseline}"
        return f"{self.folder}-{self.name.lower()}" if self.extra_args else self.folder

    @property
    def script(self):
        return "baselines.py" if self.baseline else f"{self.folder}/main.py"

    @property
    def aliases(self):
        return {self.folder.lower(), self.name.lower(), self.folder.split("-")[0].lower()}


MODELS = (
    Model("AutoRec-TensorFlow", "AutoRec", "A", 300, refit=True),
    Model("NVIDIA-DeepRec-TensorFlow", "DeepRec", "A", 500, refit=True),
    Model("CDAE-PyTorch", "CDAE", "B", 70),
    Model("VAE-PyTorch", "Mult-VAE", "B", 150),
    Model("SVAE-PyTorch", "SVAE", "B", 560),
    Model("ESAE-PyTorch", "EASE", "B", 20, accepts_epochs=False),
    Model("ESAE-PyTorch", "EDLAE", "B", 40, accepts_epochs=False,
          extra_args=("--model", "edlae")),
)
BASELINES = (
    Model("baselines", "Global mean", "A", 5, False, "global-mean"),
    Model("baselines", "Bias (damped)", "A", 8, False, "bias"),
    Model("baselines", "Popularity", "B", 5, False, "popularity"),
    Model("baselines", "Item-kNN", "B", 20, False, "itemknn"),
)
# Paired rating comparisons by name (top-N rows are compared with EASE and popularity).
RATING_COMPARISONS = (("AutoRec", "DeepRec"), ("AutoRec", "Bias (damped)"),
                      ("DeepRec", "Bias (damped)"), ("Bias (damped)", "Global mean"),
                      ("AutoRec (refit)", "AutoRec"), ("DeepRec (refit)", "DeepRec"),
                      ("AutoRec (refit)", "DeepRec (refit)"))
REFIT_SUFFIX = " (refit)"

# Figures published by the old reference implementation, on its own protocols
# (P/R/NDCG at 100 for top-N). They are not comparable to ours; shown apart for orientation.
OLD_REFERENCE = {  # folder -> (RMSE, P@100, R@100, NDCG@100), as published
    "AutoRec-TensorFlow": ("0.910", "–", "–", "–"),
    "NVIDIA-DeepRec-TensorFlow": ("0.9310", "–", "–", "–"),
    "CDAE-PyTorch": ("–", "0.0894", "0.4137", "0.2528"),
    "VAE-PyTorch": ("–", "0.0886", "0.4115", "0.2508"),
    "SVAE-PyTorch": ("–", "0.0818", "0.5850", "0.3807"),
    "ESAE-PyTorch": ("–", "0.0757", "0.4181", "0.2561"),
}


# ---------------------------------------------------------------- synthetic data


ML_20M_SHAPE = (138_493, 26_744, 20_000_263)  # users, movies, ratings


def user_counts(n_users, n_items, n_ratings, min_count, rng):
    """Ratings per user: log-normal activity, at least min_count, summing to n_ratings."""
    raw = rng.lognormal(mean=0.0, sigma=1.1, size=n_users)
    counts = np.maximum(min_count, np.round(raw / raw.sum() * n_ratings)).astype(np.int64)
    cap = n_items // 3
    counts = np.minimum(counts, cap)
    while counts.sum() != n_ratings:
        gap = n_ratings - int(counts.sum())
        room = np.flatnonzero(counts < cap) if gap > 0 else np.flatnonzero(counts > min_count)
        pick = rng.choice(room, size=min(abs(gap), len(room)), replace=False)
        counts[pick] += np.sign(gap)
    return counts


def item_popularity(n_items, rng):
    """Zipf-like popularity (exponent ~1) over a random order of the items."""
    ranks = rng.permutation(n_items) + 1
    weights = 1.0 / (ranks + 10.0) ** 1.0
    return weights / weights.sum()


def draw_items(counts, popularity, rng):
    """Distinct items per user, drawn by popularity; returns (user_index, item_index)."""
    cumulative = np.cumsum(popularity)
    n_items = len(popularity)
    users, items = [], []
    for start in range(0, len(counts), 4096):
        block = counts[start:start + 4096]
        draws = (block * 1.6 + 20).astype(np.int64)
        owner = np.repeat(np.arange(len(block)), draws)
        picked = np.minimum(np.searchsorted(cumulative, rng.random(len(owner))), n_items - 1)
        keys = np.unique(owner * n_items + picked)
        keys = keys[rng.permutation(len(keys))]
        keys = keys[np.argsort(keys // n_items, kind="stable")]
        owner, picked = keys // n_items, keys % n_items
        first = np.searchsorted(owner, np.arange(len(block)))
        rank = np.arange(len(owner)) - first[owner]
        keep = rank < block[owner]
        owner, picked = owner[keep], picked[keep]
        have = np.bincount(owner, minlength=len(block))
        for row in np.flatnonzero(have < block):  # heavy users: top up without replacement
            mine = picked[owner == row]
            rest = np.setdiff1d(np.arange(n_items), mine)
            p = popularity[rest] / popularity[rest].sum()
            extra = rng.choice(rest, size=block[row] - have[row], replace=False, p=p)
            owner = np.concatenate([owner, np.full(len(extra), row)])
            picked = np.concatenate([picked, extra])
        users.append(owner + start)
        items.append(picked)
    return np.concatenate(users), np.concatenate(items)


def draw_ratings(users, items, n_users, n_items, rng):
    """Half stars from biases and 8 latent tastes, rank-matched to ML-20M's distribution."""
    tastes_u = rng.normal(size=(n_users, 8)).astype(np.float32)
    tastes_i = rng.normal(size=(n_items, 8)).astype(np.float32)
    score = (rng.normal(0, 0.4, n_users)[users] + rng.normal(0, 0.5, n_items)[items]
             + rng.normal(0, 0.6, len(users)))
    for start in range(0, len(users), 1 << 22):
        part = slice(start, start + (1 << 22))
        score[part] += 0.25 * np.einsum("ij,ij->i", tastes_u[users[part]], tastes_i[items[part]])
    stars = np.arange(1, 11) / 2
    shares = np.array([1.1, 3.3, 1.4, 7.2, 4.4, 21.4, 11.0, 27.8, 7.7, 14.7])
    edges = np.quantile(score, np.cumsum(shares)[:-1] / shares.sum())
    return stars[np.searchsorted(edges, score)]


def synthetic_ratings(n_users, n_items, n_ratings, seed=2015, min_per_user=20):
    """A MovieLens-20M-shaped frame (userId, movieId, rating, timestamp), rows by user and
    time: every user with at least min_per_user ratings, item popularity with a Zipf-like
    skew, heavy-tailed user activity, half-star ratings with ML-20M's overall shares,
    driven by user and item biases plus 8 latent tastes (something to learn)."""
    import pandas as pd
    if n_users * min_per_user > n_ratings or n_ratings > n_users * (n_items // 3):
        raise ValueError(f"{n_ratings} ratings do not fit {n_users} users with "
                         f"{min_per_user} to {n_items // 3} ratings each")
    rng = np.random.default_rng(seed)
    counts = user_counts(n_users, n_items, n_ratings, min_per_user, rng)
    users, items = draw_items(counts, item_popularity(n_items, rng), rng)
    ratings = draw_ratings(users, items, n_users, n_items, rng)
    movie_ids = np.sort(rng.choice(max(131_262, 2 * n_items), size=n_items, replace=False) + 1)
    times = 789_652_009 + rng.integers(0, 638_000_000, len(users))
    order = np.lexsort((times, users))
    return pd.DataFrame({"userId": users[order] + 1, "movieId": movie_ids[items[order]],
                         "rating": ratings[order], "timestamp": times[order]})


def write_synthetic(path, shape, seed=2015):
    """Write synthetic_ratings(*shape) as ML-20M's ratings.csv format (with its header)."""
    frame = synthetic_ratings(*shape, seed=seed)
    frame.to_csv(path, index=False, float_format="%.1f")
    print(f"{path}: {len(frame):,} ratings, {shape[0]:,} users, {shape[1]:,} movies "
          f"(ML-20M's ratings.csv format)")


# ---------------------------------------------------------------- command line


DATASETS = ("ml-100k", "ml-1m", "ml-10m", "ml-20m", "ml-25m")  # the models' --dataset


def dataset_or_file(text):
    """A MovieLens set name, or the path of a ratings file (absolute, it must exist)."""
    if text in DATASETS:
        return text
    path = Path(text).resolve()
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text!r} is neither a data set "
                                         f"({', '.join(DATASETS)}) nor a file")
    return path


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
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value


def model_choice(text):
    for model in MODELS:
        if text.lower() in model.aliases:
            return model
    names = ", ".join(model.folder for model in MODELS)
    raise argparse.ArgumentTypeError(f"unknown model {text!r}; choose from {names}")


def shape_triple(text):
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"must be three positive integers "
                                         f"USERS,MOVIES,RATINGS, not {text}")
    return values


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Run the autoencoder model folders and the baselines on MovieLens-1M "
                    "over unseen seeds and both top-N hold-outs; write benchmark/results.md, "
                    "results.json and results.png. Exits 1 when a run failed or a row lacks "
                    "a seed.")
    parser.add_argument("--models", nargs="+", type=model_choice, default=list(MODELS),
                        metavar="MODEL", help="subset to run, by folder or model name "
                        "(default: all six)")
    parser.add_argument("--no-baselines", action="store_true",
                        help="run no baselines (popularity, item-kNN, global mean, bias)")
    parser.add_argument("--seeds", type=positive_int, default=3,
                        help="seeds per model and hold-out: --seed, --seed + 1, ... "
                             "(default 3)")
    parser.add_argument("--seed", type=non_negative_int, default=FIRST_UNSEEN_SEED,
                        help=f"first seed (default {FIRST_UNSEEN_SEED}; the tuning seeds "
                             f"1994 and 98765 are not among the defaults)")
    parser.add_argument("--holdouts", nargs="+", choices=HOLDOUTS, default=list(HOLDOUTS),
                        help="hold-outs of the top-N models (default: both)")
    parser.add_argument("--jobs", type=positive_int, default=2,
                        help="runs at a time (default 2); with more than one, each run is "
                             "single-threaded and its wall time is marked as measured "
                             "beside another job")
    parser.add_argument("--bootstrap", type=positive_int, default=2000,
                        help="resamples of the paired bootstrap (default 2000)")
    parser.add_argument("--dataset", type=dataset_or_file, metavar="NAME_OR_FILE",
                        help="a MovieLens set (" + ", ".join(DATASETS) + "), passed as "
                             "--dataset, or a ratings file of your own, passed as "
                             "--ratings-file, to every run (default: the runs' own, ml-1m)")
    parser.add_argument("--format", choices=("csv", "tsv", "dat"),
                        help="with --dataset FILE: passed as --format (default: from the "
                             "file name)")
    parser.add_argument("--data-dir", type=Path, help="passed to every run")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="passed to every model")
    parser.add_argument("--comet", choices=("auto", "online", "offline", "off"),
                        help="passed to every model")
    parser.add_argument("--epochs", type=positive_int,
                        help="passed to the models that train for epochs (a quick pass)")
    parser.add_argument("--heldout-users", type=positive_int,
                        help="passed to the top-N runs (validation and test users each)")
    parser.add_argument("--no-download", action="store_true", help="passed to every run")
    parser.add_argument("--timeout", type=positive_float,
                        help="seconds after which a run is killed and counted as failed")
    parser.add_argument("--repo-root", type=Path, default=REPO,
                        help="folder holding the model folders (default: this script's)")
    parser.add_argument("--out-dir", type=Path,
                        help="output folder (default: <repo-root>/benchmark)")
    parser.add_argument("--make-synthetic", type=Path, metavar="FILE",
                        help="run nothing; write a synthetic ratings file shaped like "
                             "MovieLens-20M (ratings.csv format) to FILE and exit")
    parser.add_argument("--synthetic-shape", type=shape_triple, default=ML_20M_SHAPE,
                        metavar="USERS,MOVIES,RATINGS",
                        help="with --make-synthetic (default: ML-20M's 138493,26744,20000263)")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing; rebuild the report from the runs already in "
                             "<out-dir>/runs (give the same --models, --seed(s) and flags)")
    args = parser.parse_args(argv)
    args.models = [model for model in MODELS if model in args.models]  # table order
    args.holdouts = [holdout for holdout in HOLDOUTS if holdout in args.holdouts]
    args.repo_root = args.repo_root.resolve()
    args.out_dir = (args.out_dir or args.repo_root / "benchmark").resolve()
    if args.data_dir is not None:
        args.data_dir = args.data_dir.resolve()
    if args.format is not None and not isinstance(args.dataset, Path):
        parser.error("--format applies to --dataset FILE only")
    return args


def data_name(args):
    """The data set as the report names it: the set, or an own file's name (no path)."""
    dataset = getattr(args, "dataset", None) or "ml-1m"
    return f"`{dataset.name}`" if isinstance(dataset, Path) else dataset


def data_flags(args):
    """The data set flags of every run: --dataset NAME, or --ratings-file FILE [--format]."""
    if args.dataset is None:
        return []
    if not isinstance(args.dataset, Path):
        return ["--dataset", args.dataset]
    return ["--ratings-file", str(args.dataset)] + (
        ["--format", args.format] if args.format else [])


def entries(args):
    """The rows to run: the chosen models, then the baselines of their protocols."""
    protocols = {model.protocol for model in args.models}
    baselines = [] if args.no_baselines else [b for b in BASELINES if b.protocol in protocols]
    return list(args.models) + baselines


def seed_list(args):
    return [args.seed + i for i in range(args.seeds)]


def planned_runs(args):
    """(model, hold-out or None, seed) of every run, in table order."""
    return [(model, holdout, seed) for model in entries(args)
            for holdout in (args.holdouts if model.protocol == "B" else [None])
            for seed in seed_list(args)]


def run_dir_of(model, holdout, seed, args):
    return args.out_dir / "runs" / model.slug / (holdout or "ratings") / f"seed{seed}"


def child_command(model, holdout, seed, args, run_dir):
    """The command line of one run, with only the flags that script accepts."""
    command = [sys.executable, str(args.repo_root / model.script)]
    if model.baseline:
        command.append(model.baseline)
    command += [*model.extra_args, "--out-dir", str(run_dir), "--quiet", "--seed", str(seed)]
    if model.refit:
        command.append("--refit")
    command += data_flags(args)
    if args.data_dir is not None:
        command += ["--data-dir", str(args.data_dir)]
    if args.no_download:
        command.append("--no-download")
    if holdout is not None:
        command += ["--holdout", holdout]
    if args.heldout_users is not None and model.protocol == "B":
        command += ["--heldout-users", str(args.heldout_users)]
    if not model.baseline:
        if args.device is not None:
            command += ["--device", args.device]
        if args.comet is not None:
            command += ["--comet", args.comet]
        if args.epochs is not None and model.accepts_epochs:
            command += ["--epochs", str(args.epochs)]
    return command


# ---------------------------------------------------------------- running


def wait_with_usage(process, timeout):
    """Wait for process; returns (exit code, peak memory in MB or None, timed out)."""
    if not hasattr(os, "wait4"):  # no per-child rusage on this platform
        try:
            return process.wait(timeout=timeout), None, False
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait(), None, True
    deadline = None if timeout is None else time.monotonic() + timeout
    timed_out = False
    try:
        while True:
            pid, status, usage = os.wait4(process.pid, 0 if deadline is None else os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                process.kill()
                timed_out, deadline = True, None
            else:
                time.sleep(0.2)
    except BaseException:  # Ctrl-C: leave no model running behind us
        process.kill()
        raise
    process.returncode = os.waitstatus_to_exitcode(status)
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return process.returncode, usage.ru_maxrss / scale, timed_out


def child_env(jobs):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if jobs > 1:
        env.update(ONE_THREAD)
    return env


def run_one(model, holdout, seed, args):
    """Run one model once; its record is written to the run folder as benchmark.json."""
    run_dir = run_dir_of(model, holdout, seed, args)
    if run_dir.exists():
        shutil.rmtree(run_dir)  # stale results must never pass for this run's
    run_dir.mkdir(parents=True)
    command = child_command(model, holdout, seed, args, run_dir)
    shown = ["python"] + [shown_path(part, args.repo_root) for part in command[1:]]
    record = {"folder": model.folder, "name": model.name, "holdout": holdout, "seed": seed,
              "run_dir": str(run_dir), "command": shlex.join(shown),
              "benchmark_command": args.command, "jobs": args.jobs,
              "started_at": time.time()}
    if not (args.repo_root / model.script).is_file():
        record.update(returncode=None, wall_seconds=None, peak_memory_mb=None,
                      error=f"{model.script} not found")
        (run_dir / "stderr.log").write_text(record["error"] + "\n")
    else:
        started = time.monotonic()
        with open(run_dir / "stdout.log", "w") as out, open(run_dir / "stderr.log", "w") as err:
            process = subprocess.Popen(command, stdout=out, stderr=err, cwd=args.repo_root,
                                       env=child_env(args.jobs))
            code, peak_mb, timed_out = wait_with_usage(process, args.timeout)
        record.update(returncode=code, wall_seconds=round(time.monotonic() - started, 2),
                      peak_memory_mb=None if peak_mb is None else round(peak_mb, 1),
                      error=f"timed out after {args.timeout:g} s" if timed_out else None)
    record["ended_at"] = time.time()
    record["finished_utc"] = utc(record["ended_at"])
    (run_dir / "benchmark.json").write_text(json.dumps(record, indent=2) + "\n")


def load_record(model, holdout, seed, args):
    """The record of one finished run, with its results.json, or a failed record."""
    run_dir = run_dir_of(model, holdout, seed, args)
    record_path = run_dir / "benchmark.json"
    if not record_path.is_file():
        return {"folder": model.folder, "name": model.name, "holdout": holdout, "seed": seed,
                "run_dir": str(run_dir), "status": "failed", "error": "not run",
                "results": None, "stderr_tail": []}
    record = json.loads(record_path.read_text())
    record["results"] = read_results(run_dir / "results.json")
    record["stderr_tail"] = tail(run_dir / "stderr.log", STDERR_TAIL_LINES)
    if record.get("error") is None:
        if record["returncode"] != 0:
            record["error"] = f"exit code {record['returncode']}"
        elif record["results"] is None:
            record["error"] = "no readable results.json"
    record["status"] = "failed" if record["error"] else "ok"
    return record


def read_results(path):
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return results if isinstance(results.get("test"), dict) else None


def tail(path, n_lines):
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    return [line for line in lines if line.strip()][-n_lines:]


def shown_path(path, root):
    """path relative to root when it lies inside, so a committed report has no home paths."""
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def utc(seconds):
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d %H:%M")


def run_label(model, holdout, seed):
    return f"{model.name}" + (f" {holdout}" if holdout else "") + f" seed {seed}"


def progress_line(label, record):
    if record["status"] != "ok":
        lines = [f"{label}: FAILED ({record['error']}); log: {record['run_dir']}/stderr.log"]
        return "\n".join(lines + [f"    {line}" for line in record["stderr_tail"]])
    test = record["results"]["test"]
    shown = (f"rmse {test['rmse']:.4f}" if "rmse" in test
             else f"ndcg@100 {test.get('ndcg@100', float('nan')):.4f}")
    memory = record["peak_memory_mb"]
    return (f"{label}: ok, {shown}, {record['wall_seconds']:.1f} s, "
            f"peak {memory if memory is not None else '?'} MB")


def run_all(args):
    """Run every planned run (longest first, --jobs at a time); returns records in order."""
    runs = planned_runs(args)
    if not args.report_only:
        lock, done = threading.Lock(), []

        def job(run):
            run_one(*run, args)
            record = load_record(*run, args)
            with lock:
                done.append(run)
                print(f"[{len(done)}/{len(runs)}] "
                      f"{progress_line(run_label(*run), record)}", flush=True)

        by_cost = sorted(runs, key=lambda run: -run[0].seconds)
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            list(pool.map(job, by_cost))
    records = [load_record(*run, args) for run in runs]
    mark_overlaps(records)
    return records


def mark_overlaps(records):
    """record['beside_other_jobs']: whether another run was running during this one."""
    spans = [(r.get("started_at"), r.get("ended_at")) for r in records]
    for index, record in enumerate(records):
        start, end = spans[index]
        record["beside_other_jobs"] = start is not None and any(
            other != index and s is not None and s < end and start < e
            for other, (s, e) in enumerate(spans))


# ---------------------------------------------------------------- statistics


def mean_sd(values):
    """(mean, sample standard deviation), None where undefined."""
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def paired_bootstrap(groups, transform, n_resamples, seed=0):
    """Paired bootstrap of transform(mean of a) - transform(mean of b) over pooled units.

    groups: one (a, b) pair of equal-length arrays per seed, a unit (test user or test
    rating) per position. Units are resampled with replacement within each seed, so every
    resample keeps each seed's number of units; group g draws from its own
    numpy.random.default_rng([seed, g]), n units per resample, resample after resample.
    Returns (estimate, low, high): the statistic on the data and the 2.5% and 97.5%
    percentiles of the resampled statistics.
    """
    total = sum(len(a) for a, _ in groups)
    pooled_a = np.concatenate([a for a, _ in groups])
    pooled_b = np.concatenate([b for _, b in groups])
    estimate = float(transform(pooled_a.mean()) - transform(pooled_b.mean()))
    largest = max(len(a) for a, _ in groups)
    chunk = max(1, 4_000_000 // largest)  # resamples per step, to bound memory
    generators = [np.random.default_rng([seed, g]) for g in range(len(groups))]
    resampled = []
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        sum_a, sum_b = np.zeros(size), np.zeros(size)
        for (a, b), generator in zip(groups, generators):
            picks = generator.integers(0, len(a), size=(size, len(a)))
            sum_a += a[picks].sum(axis=1)
            sum_b += b[picks].sum(axis=1)
        resampled.append(transform(sum_a / total) - transform(sum_b / total))
    low, high = np.percentile(np.concatenate(resampled), [2.5, 97.5])
    return estimate, float(low), float(high)


def read_units(path):
    """A per-unit CSV (test_per_user.csv or test_predictions.csv) as name -> column."""
    with open(path) as lines:
        names = lines.readline().strip().split(",")
    table = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    return {name: table[:, i] for i, name in enumerate(names)}


UNIT_FILES = {  # protocol -> (file, key columns that must match, value of one unit)
    "B": ("test_per_user.csv", ("user_id", "n_fold_in", "n_target"),
          lambda units: units["ndcg@100"]),
    "A": ("test_predictions.csv", ("user_id", "movie_id", "rating"),
          lambda units: (units["prediction"] - units["rating"]) ** 2),
}


def unit_file(record, file_name):
    """The per-unit file of a run; a refit row reads the refit model's (refit_<file>)."""
    return Path(record["run_dir"]) / (record.get("unit_prefix", "") + file_name)


def compare(row_a, row_b, args):
    """Paired difference of two rows of the same protocol and hold-out over shared seeds."""
    protocol = row_a["protocol"]
    file_name, keys, unit_value = UNIT_FILES[protocol]
    comparison = {"a": row_a["model"], "b": row_b["model"], "holdout": row_a["holdout"],
                  "metric": "ndcg@100" if protocol == "B" else "rmse",
                  "seeds": [], "n_units": 0}
    runs_a = {r["seed"]: r for r in row_a["ok_records"]}
    runs_b = {r["seed"]: r for r in row_b["ok_records"]}
    groups = []
    for seed in sorted(set(runs_a) & set(runs_b)):
        try:
            units_a = read_units(unit_file(runs_a[seed], file_name))
            units_b = read_units(unit_file(runs_b[seed], file_name))
        except (OSError, ValueError, KeyError) as error:
            return {**comparison, "error": f"seed {seed}: no readable {file_name} ({error})"}
        if any(not np.array_equal(units_a[key], units_b[key]) for key in keys):
            return {**comparison, "error": f"seed {seed}: the two runs' test units differ "
                                           f"(not the same split)"}
        groups.append((unit_value(units_a), unit_value(units_b)))
        comparison["seeds"].append(seed)
    if not groups:
        return {**comparison, "error": "no seed where both runs succeeded"}
    transform = np.sqrt if protocol == "A" else (lambda x: x)
    estimate, low, high = paired_bootstrap(groups, transform, args.bootstrap)
    higher_is_better = protocol == "B"
    if low > 0 or high < 0:
        a_wins = (low > 0) == higher_is_better
        verdict = f"{comparison['a'] if a_wins else comparison['b']} better"
    else:
        verdict = "within noise"
    return {**comparison, "n_units": sum(len(a) for a, _ in groups), "difference": estimate,
            "low": low, "high": high, "verdict": verdict, "error": None}


def comparisons(rows, args):
    """Every claimed difference: top-N rows against EASE and popularity (per hold-out),
    AutoRec against DeepRec and the bias baseline, and the baselines against each other."""
    pairs = []
    for holdout in args.holdouts:
        top_n = {row["model"]: row for row in rows if row["holdout"] == holdout}
        ease, popularity = top_n.get("EASE"), top_n.get("Popularity")
        for name, row in top_n.items():
            if ease and name not in ("EASE", "Popularity"):
                pairs.append((row, ease))
        for name, row in top_n.items():
            if popularity and name != "Popularity":
                pairs.append((row, popularity))
    rating = {row["model"]: row for row in rows if row["protocol"] == "A"}
    pairs += [(rating[a], rating[b]) for a, b in RATING_COMPARISONS
              if a in rating and b in rating]
    return [compare(a, b, args) for a, b in pairs]


# ---------------------------------------------------------------- summary


def summarise(model, holdout, records, name=None):
    """One table row: metric -> list of values over the row's successful runs, and more."""
    ok = [r for r in records if r["status"] == "ok"]
    values = {}
    for record in ok:
        results = record["results"]
        for key, value in results["test"].items():
            if isinstance(value, (int, float)) and not key.startswith("n_"):
                values.setdefault(key, []).append(float(value))
        memory = record["peak_memory_mb"]
        if memory is None:
            memory = results.get("peak_memory_mb")
        for key, value in (("wall_seconds", record["wall_seconds"]),
                           ("peak_memory_mb", memory)):
            if value is not None:
                values.setdefault(key, []).append(float(value))
    return {"folder": model.folder, "model": name or model.name,
            "kind": "baseline" if model.baseline else "model",
            "protocol": model.protocol, "holdout": holdout, "values": values,
            "n_ok": len(ok), "n_runs": len(records), "ok_records": ok,
            "per_seed": {str(r["seed"]): r["results"]["test"] for r in ok},
            "best_epochs": [r["results"].get("best_epoch") for r in ok],
            "selected": [r["results"].get("selected") for r in ok],
            "seeds": [r["seed"] for r in ok],
            "beside_other_jobs": any(r.get("beside_other_jobs") for r in ok),
            "devices": sorted({str(r["results"].get("device")) for r in ok}),
            "data_sha256": sorted({str(r["results"].get("data_sha256")) for r in ok}),
            "failures": [r for r in records if r["status"] != "ok"]}


def build_rows(records, args):
    rows = []
    for model in entries(args):
        for holdout in (args.holdouts if model.protocol == "B" else [None]):
            mine = [r for r in records if r["name"] == model.name and r["holdout"] == holdout]
            rows.append(summarise(model, holdout, mine))
            if model.refit:
                rows.append(summarise(model, holdout, [refit_view(r) for r in mine],
                                      name=model.name + REFIT_SUFFIX))
    return rows


def refit_view(record):
    """A --refit run seen as its refit model: the refit's test figures, epochs and per-unit
    file in place of those of the model chosen on validation. Wall time and memory stay the
    whole run's (the refit figure costs both trainings)."""
    view = {**record, "unit_prefix": "refit_"}
    if record["status"] != "ok":
        return view
    refit = record["results"].get("refit")
    if not isinstance(refit, dict) or not isinstance(refit.get("test"), dict):
        return {**view, "status": "failed", "error": "no refit figures in results.json"}
    view["results"] = {**record["results"], "test": refit["test"],
                       "best_epoch": refit.get("epochs")}
    return view


def fmt(values, digits=4):
    mean, sd = mean_sd(values or [])
    if mean is None:
        return "–"
    return f"{mean:.{digits}f}" if sd is None else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def fmt_per_seed(values, digits=4):
    return ", ".join(f"{v:.{digits}f}" for v in values or []) or "–"


def fmt_best_epoch(epochs):
    shown = ["–" if e is None else str(e) for e in epochs]
    return "–" if not shown or all(s == "–" for s in shown) else ", ".join(shown)


def fmt_choice(choice):
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in (choice or {}).items()) or "–"


def fmt_status(row):
    if row["n_ok"] == row["n_runs"]:
        return "ok" if row["n_runs"] == 1 else f"{row['n_ok']}/{row['n_runs']} ok"
    errors = list(dict.fromkeys(r["error"] for r in row["failures"]))
    prefix = "**failed**" if row["n_ok"] == 0 else f"{row['n_ok']}/{row['n_runs']} ok"
    return f"{prefix} ({'; '.join(errors)})"


def fmt_wall(row):
    shown = fmt(row["values"].get("wall_seconds"), 1)
    return shown + " †" if row["beside_other_jobs"] and shown != "–" else shown


# ---------------------------------------------------------------- report


def markdown_table(head, body):
    return (["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] +
            ["| " + " | ".join(cells) + " |" for cells in body])


def rating_table(rows):
    head = ["Model", "Kind", "RMSE (mean ± sd)", "RMSE per seed", "Best epoch",
            "Wall time (s)", "Peak memory (MB)", "Status"]
    body = [[row["model"], row["kind"], fmt(row["values"].get("rmse")),
             fmt_per_seed(row["values"].get("rmse")), fmt_best_epoch(row["best_epochs"]),
             fmt_wall(row), fmt(row["values"].get("peak_memory_mb"), 0), fmt_status(row)]
            for row in rows]
    return markdown_table(head, body)


def top_n_table(rows):
    head = (["Model", "Kind"] + [f"{label} (mean ± sd)" for _, label in TOP_N_COLUMNS] +
            ["NDCG@100 per seed", "Best epoch", "Wall time (s)", "Peak memory (MB)", "Status"])
    body = [[row["model"], row["kind"]] +
            [fmt(row["values"].get(key)) for key, _ in TOP_N_COLUMNS] +
            [fmt_per_seed(row["values"].get("ndcg@100")), fmt_best_epoch(row["best_epochs"]),
             fmt_wall(row), fmt(row["values"].get("peak_memory_mb"), 0), fmt_status(row)]
            for row in rows]
    return markdown_table(head, body)


def comparison_table(results):
    head = ["Hold-out", "Difference", "Metric", "Mean difference", "95% interval",
            "Seeds", "Units", "Verdict"]
    body = []
    for c in results:
        pair = f"{c['a']} − {c['b']}"
        if c["error"]:
            body.append([c["holdout"] or "–", pair, c["metric"], "–", "–",
                         ", ".join(map(str, c["seeds"])) or "–", "–",
                         f"not compared: {c['error']}"])
            continue
        body.append([c["holdout"] or "–", pair, c["metric"], f"{c['difference']:+.4f}",
                     f"[{c['low']:+.4f}, {c['high']:+.4f}]", ", ".join(map(str, c["seeds"])),
                     str(c["n_units"]), c["verdict"]])
    return markdown_table(head, body)


def old_reference_table(rows):
    lines = [["Model", "RMSE", "P@100", "R@100", "NDCG@100"]]
    seen = []
    for row in rows:
        if row["folder"] in OLD_REFERENCE and row["folder"] not in seen:
            seen.append(row["folder"])
            lines.append([row["model"], *OLD_REFERENCE[row["folder"]]])
    return markdown_table(lines[0], lines[1:]) if len(lines) > 1 else []


def machine_description():
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} CPU cores"


def code_version(root):
    """The commit of root (and whether the tree had uncommitted changes), or None."""
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + (" with uncommitted changes" if dirty else "")


def failure_section(rows, root):
    lines = []
    for row in rows:
        for record in row["failures"]:
            label = row["model"] + (f" {row['holdout']}" if row["holdout"] else "")
            lines += ["", f"### {label}, seed {record['seed']}: {record['error']}", "",
                      f"Log: `{shown_path(record['run_dir'], root)}/stderr.log`. "
                      f"Last lines of its stderr:", "",
                      "```"] + (record["stderr_tail"] or ["(empty)"]) + ["```"]
    return ["", "## Failed runs"] + lines if lines else []


def selected_section(rows):
    """Settings each run chose on validation data (lambda, k, damping, beta, ...)."""
    lines = [f"- {row['model']}" + (f" ({row['holdout']})" if row["holdout"] else "") +
             f", seed {seed}: {fmt_choice(choice)}" for row in rows
             for seed, choice in zip(row["seeds"], row["selected"]) if choice]
    return ["", "## Settings selected on the validation data", "", *lines] if lines else []


def header_lines(rows, args, invocation):
    devices = sorted({d for row in rows for d in row["devices"]})
    checksums = sorted({c for row in rows for c in row["data_sha256"]})
    seeds = seed_list(args)
    tuning = sorted(set(seeds) & set(TUNING_SEEDS.values()))
    lines = [
        "# Benchmark results", "",
        f"- Command: `{invocation['command']}`" +
        (f" (report rebuilt by `{args.command}`)" if args.report_only else ""),
        f"- Date: {invocation['started_utc']} to {invocation['finished_utc']} UTC; total wall "
        f"time {invocation['wall_seconds'] / 60:.1f} min",
        f"- Machine: {machine_description()}; device: {', '.join(devices) or '–'}",
        f"- Code: commit {invocation.get('code') or 'unknown'}",
        f"- Data: {data_name(args)}, ratings file sha256 "
        f"{', '.join(c[:16] + '…' for c in checksums) or '–'}",
        f"- Seeds: {', '.join(map(str, seeds))}" +
        (f" (includes the tuning seed {', '.join(map(str, tuning))})" if tuning else
         " (none of them used to choose any default; the tuning seeds are 1994 and 98765)"),
        f"- Top-N hold-outs: {', '.join(args.holdouts)}",
    ]
    if invocation["jobs"] > 1:
        lines.append(f"- {invocation['jobs']} runs at a time, each single-threaded; a wall "
                     f"time marked † was measured beside another job")
    if args.epochs is not None:
        lines.append(f"- Quick pass: `--epochs {args.epochs}` (not converged; not the "
                     f"models' results)")
    if args.heldout_users is not None:
        lines.append(f"- Top-N runs used `--heldout-users {args.heldout_users}`")
    return lines


def write_markdown(path, rows, found, args, invocation):
    lines = header_lines(rows, args, invocation)
    rating = [row for row in rows if row["protocol"] == "A"]
    if rating:
        lines += ["", "## Rating prediction: test RMSE (lower is better)", "",
                  *rating_table(rating)]
    for holdout in args.holdouts:
        top_n = [row for row in rows if row["holdout"] == holdout]
        if top_n:
            lines += ["", f"## Top-N ranking, {holdout} hold-out: test users (higher is "
                          f"better)", "", *top_n_table(top_n)]
    lines += ["",
              "Rating prediction: RMSE over the test ratings of a seeded 81/9/10 random "
              "split of all ratings. Top-N ranking: strong generalisation, metrics over the "
              "held-out test users (both protocols in PROTOCOLS.md). Every figure is the "
              "mean ± sample standard deviation over the seeds, each seed its own split and "
              "initialisation. Best epochs and selected settings come from validation data "
              "only; the test set is evaluated once per model. A \"(refit)\" row comes from "
              "the same run as the row above it: after the best epoch was chosen on "
              "validation, the model was retrained from scratch on training + validation "
              "ratings for that many epochs (its best epoch column) and evaluated once on "
              "the same test ratings; its wall time is the whole run's. Wall time and peak memory "
              "(maximum resident set size) are measured by benchmark.py for the whole "
              "process: start-up, data loading, training and evaluation."]
    if found:
        lines += ["", "## Paired differences", "",
                  f"Difference of the first minus the second, over test users (top-N: "
                  f"NDCG@100) or test ratings (RMSE), pooled across the seeds both ran; 95% "
                  f"interval from a paired bootstrap ({args.bootstrap} resamples, units "
                  f"resampled within each seed). A difference is called real only when its "
                  f"interval excludes 0.", "", *comparison_table(found)]
    lines += selected_section(rows)
    reference = old_reference_table([row for row in rows if row["kind"] == "model"])
    if reference:
        lines += ["", "## Old reference implementation's figures (different protocol)", "",
                  "As published by the old reference implementation, on its own splits and "
                  "metric definitions. They are **not** measurements of this benchmark and "
                  "are not comparable with the tables above.", "", *reference]
    lines += failure_section(rows, args.repo_root)
    path.write_text("\n".join(lines) + "\n")


def write_plot(path, rows, holdouts):
    """One panel per top-N hold-out, one for RMSE and one for wall time; sd error bars."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rating = [r for r in rows if r["protocol"] == "A" and r["n_ok"]]
    panels = len(holdouts) + 2
    figure, axes = plt.subplots(1, panels, figsize=(6 * panels, 5.5))
    for axis, holdout in zip(axes, holdouts):
        plot_ranking(axis, [r for r in rows if r["holdout"] == holdout and r["n_ok"]], holdout)
    plot_rmse(axes[-2], rating)
    plot_wall_time(axes[-1], rows)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_ranking(axis, rows, holdout):
    axis.set_title(f"Top-N, {holdout} hold-out (mean ± sd over seeds)")
    if not rows:
        axis.text(0.5, 0.5, "no top-N run finished", ha="center", va="center")
        axis.set_axis_off()
        return
    keys = [key for key, _ in TOP_N_COLUMNS]
    width = 0.8 / len(rows)
    for i, row in enumerate(rows):
        stats = [mean_sd(row["values"].get(key, [])) for key in keys]
        means = [m if m is not None else 0.0 for m, _ in stats]
        errors = [s or 0.0 for _, s in stats]
        positions = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(keys))]
        axis.bar(positions, means, width, yerr=errors, capsize=2, label=row["model"],
                 hatch="//" if row["kind"] == "baseline" else None)
    axis.set_xticks(range(len(keys)), [label for _, label in TOP_N_COLUMNS])
    axis.set_ylabel("test metric (higher is better)")
    axis.legend(fontsize=8)
    axis.grid(axis="y", alpha=0.3)


def plot_rmse(axis, rows):
    axis.set_title("Rating prediction (mean ± sd over seeds)")
    if not rows:
        axis.text(0.5, 0.5, "no rating run finished", ha="center", va="center")
        axis.set_axis_off()
        return
    stats = [mean_sd(row["values"]["rmse"]) for row in rows]
    means = [m for m, _ in stats]
    errors = [s or 0.0 for _, s in stats]
    bars = axis.bar([row["model"] for row in rows], means, yerr=errors, capsize=3,
                    color="tab:purple", width=0.6)
    axis.bar_label(bars, labels=[f"{m:.4f}" for m in means], padding=3)
    axis.set_ylim(max(0.0, min(means) - 0.1), max(means) + 0.05)
    axis.set_ylabel("test RMSE (lower is better; axis does not start at 0)")
    axis.tick_params(axis="x", labelrotation=20)
    axis.grid(axis="y", alpha=0.3)


def plot_wall_time(axis, rows):
    axis.set_title("Wall time per run (s; blue top-N, purple rating)")
    labels = [row["model"] + (f" ({row['holdout'][0]})" if row["holdout"] else "")
              for row in rows]
    stats = [mean_sd(row["values"].get("wall_seconds", [])) for row in rows]
    means = [m or 0.0 for m, _ in stats]
    errors = [s or 0.0 for _, s in stats]
    colors = ["tab:blue" if row["protocol"] == "B" else "tab:purple" for row in rows]
    positions = range(len(rows))
    axis.barh(positions, means, xerr=errors, capsize=3, color=colors, height=0.6)
    right = max([m + e for m, e in zip(means, errors)] + [1.0])
    for y, mean, error, row in zip(positions, means, errors, rows):
        label = f"{mean:.0f}" if row["n_ok"] else "failed"
        axis.text(mean + error + 0.02 * right, y, label, va="center")
    axis.set_yticks(positions, labels)
    axis.invert_yaxis()
    axis.set_xlim(0, right * 1.2)
    axis.grid(axis="x", alpha=0.3)


def write_json_summary(path, rows, records, found, args, invocation):
    root = args.repo_root
    hidden = ("failures", "ok_records")
    summary = {**invocation, "machine": machine_description(), "seeds": seed_list(args),
               "holdouts": args.holdouts, "bootstrap_resamples": args.bootstrap,
               "rows": [{**{k: v for k, v in row.items() if k not in hidden},
                         "failures": [{"seed": r["seed"], "error": r["error"]}
                                      for r in row["failures"]]} for row in rows],
               "comparisons": found,
               "runs": [{**{k: v for k, v in r.items() if k != "stderr_tail"},
                         "run_dir": shown_path(r["run_dir"], root)} for r in records]}
    path.write_text(json.dumps(summary, indent=2) + "\n")


def load_invocation(args, started):
    """When, how and from which code the runs were made (kept for --report-only)."""
    path = args.out_dir / "runs" / "invocation.json"
    if args.report_only:
        if path.is_file():
            return json.loads(path.read_text())
        return {"command": "?", "started_utc": "?", "finished_utc": "?", "wall_seconds": 0,
                "jobs": args.jobs, "code": None}
    invocation = {"command": args.command, "started_utc": utc(started),
                  "finished_utc": utc(time.time()), "wall_seconds": time.time() - started,
                  "jobs": args.jobs, "code": args.code}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(invocation, indent=2) + "\n")
    return invocation


def main(argv=None):
    args = parse_args(argv)
    if args.make_synthetic is not None:
        try:
            write_synthetic(args.make_synthetic, args.synthetic_shape)
        except ValueError as error:
            sys.exit(f"error: --synthetic-shape: {error}")
        return 0
    args.command = shlex.join(["python", "benchmark.py",
                               *(sys.argv[1:] if argv is None else argv)])
    args.code = code_version(args.repo_root)
    started = time.time()
    records = run_all(args)
    invocation = load_invocation(args, started)
    rows = build_rows(records, args)
    found = comparisons(rows, args)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_markdown(args.out_dir / "results.md", rows, found, args, invocation)
    write_plot(args.out_dir / "results.png", rows, args.holdouts)
    write_json_summary(args.out_dir / "results.json", rows, records, found, args, invocation)
    print(f"wrote {args.out_dir / 'results.md'}, results.png and results.json")
    failed = [r for r in records if r["status"] != "ok"]
    if failed:
        print(f"{len(failed)} of {len(records)} runs failed", file=sys.stderr)
    incomplete = [row["model"] for row in rows if row["failures"]]  # refit rows included
    if incomplete:
        print(f"rows missing a seed: {', '.join(sorted(set(incomplete)))}", file=sys.stderr)
    return 1 if incomplete else 0


if __name__ == "__main__":
    sys.exit(main())
