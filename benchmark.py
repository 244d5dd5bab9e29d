"""benchmark.py: run the six model folders and write one comparison table and one chart.

Owns the benchmark only; it imports no model code. Each `<Folder>/main.py` runs as a
subprocess with `--out-dir <out>/runs/<Folder>/seed<seed>` and the shared flags that folder
accepts. This script measures each run's wall time and peak memory itself (os.wait4),
reads the run's results.json, and writes `<out>/results.md`, `<out>/results.png` and
`<out>/results.json`. A run that exits non-zero or writes no results.json shows as failed
and does not stop the others. Usage: python benchmark.py --help
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
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent
DEFAULT_SEEDS = {"A": 1994, "B": 98765}
PROTOCOL_NAMES = {"A": "A (rating)", "B": "B (top-N)"}
KS = (20, 50, 100)
RANKING_KEYS = tuple(f"{metric}@{k}" for k in KS for metric in ("precision", "recall", "ndcg"))
STDERR_TAIL_LINES = 15


@dataclass(frozen=True)
class Model:
    folder: str
    name: str
    protocol: str               # "A": rating prediction (RMSE), "B": top-N ranking
    accepts_epochs: bool = True  # EASE has a closed form and no --epochs flag

    @property
    def aliases(self):
        return {self.folder.lower(), self.name.lower(), self.folder.split("-")[0].lower()}


MODELS = (
    Model("AutoRec-TensorFlow", "AutoRec", "A"),
    Model("NVIDIA-DeepRec-TensorFlow", "DeepRec", "A"),
    Model("CDAE-PyTorch", "CDAE", "B"),
    Model("VAE-PyTorch", "Mult-VAE", "B"),
    Model("SVAE-PyTorch", "SVAE", "B"),
    Model("ESAE-PyTorch", "EASE", "B", accepts_epochs=False),
)

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


# ---------------------------------------------------------------- command line


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
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value


def model_choice(text):
    for model in MODELS:
        if text.lower() in model.aliases:
            return model
    names = ", ".join(model.folder for model in MODELS)
    raise argparse.ArgumentTypeError(f"unknown model {text!r}; choose from {names}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Run the autoencoder model folders on MovieLens-1M and write "
                    "benchmark/results.md and benchmark/results.png. Exits 1 when a run failed.")
    parser.add_argument("--models", nargs="+", type=model_choice, default=list(MODELS),
                        metavar="MODEL", help="subset to run, by folder or model name "
                        "(default: all six)")
    parser.add_argument("--seeds", type=positive_int, default=1,
                        help="runs per model; N > 1 uses seed, seed+1, ... and reports "
                             "mean ± std")
    parser.add_argument("--seed", type=non_negative_int,
                        help="first seed (default: each model's own, 1994 for rating and "
                             "98765 for top-N models)")
    parser.add_argument("--data-dir", type=Path, help="passed to every model")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="passed to every model")
    parser.add_argument("--comet", choices=("auto", "online", "offline", "off"),
                        help="passed to every model")
    parser.add_argument("--epochs", type=positive_int,
                        help="passed to the models that train for epochs (a quick pass)")
    parser.add_argument("--heldout-users", type=positive_int,
                        help="passed to the top-N models (validation and test users each)")
    parser.add_argument("--no-download", action="store_true", help="passed to every model")
    parser.add_argument("--timeout", type=positive_float,
                        help="seconds after which a run is killed and counted as failed")
    parser.add_argument("--repo-root", type=Path, default=REPO,
                        help="folder holding the model folders (default: this script's)")
    parser.add_argument("--out-dir", type=Path,
                        help="output folder (default: <repo-root>/benchmark)")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing; rebuild the report from the runs already in "
                             "<out-dir>/runs (give the same --models, --seed(s) and flags)")
    args = parser.parse_args(argv)
    args.models = [model for model in MODELS if model in args.models]  # table order
    args.repo_root = args.repo_root.resolve()
    args.out_dir = (args.out_dir or args.repo_root / "benchmark").resolve()
    if args.data_dir is not None:
        args.data_dir = args.data_dir.resolve()
    return args


def seeds_for(model, args):
    """Seeds to run, and whether to pass --seed (not for one run at the model's default)."""
    if args.seeds == 1 and args.seed is None:
        return [(DEFAULT_SEEDS[model.protocol], False)]
    first = DEFAULT_SEEDS[model.protocol] if args.seed is None else args.seed
    return [(first + i, True) for i in range(args.seeds)]


def seeds_used(args, protocol):
    models = [model for model in args.models if model.protocol == protocol]
    return [seed for seed, _ in seeds_for(models[0], args)] if models else []


def child_command(model, seed, pass_seed, args, run_dir):
    """The main.py command line of one run, with only the flags this folder accepts."""
    command = [sys.executable, str(args.repo_root / model.folder / "main.py"),
               "--out-dir", str(run_dir), "--quiet"]
    if pass_seed:
        command += ["--seed", str(seed)]
    if args.data_dir is not None:
        command += ["--data-dir", str(args.data_dir)]
    if args.device is not None:
        command += ["--device", args.device]
    if args.comet is not None:
        command += ["--comet", args.comet]
    if args.epochs is not None and model.accepts_epochs:
        command += ["--epochs", str(args.epochs)]
    if args.heldout_users is not None and model.protocol == "B":
        command += ["--heldout-users", str(args.heldout_users)]
    if args.no_download:
        command.append("--no-download")
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


def child_env():
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def run_one(model, seed, pass_seed, args):
    """Run one model once; returns its record (also written to the run folder)."""
    run_dir = args.out_dir / "runs" / model.folder / f"seed{seed}"
    if run_dir.exists():
        shutil.rmtree(run_dir)  # stale results must never pass for this run's
    run_dir.mkdir(parents=True)
    command = child_command(model, seed, pass_seed, args, run_dir)
    shown = ["python"] + [shown_path(part, args.repo_root) for part in command[1:]]
    record = {"folder": model.folder, "seed": seed, "run_dir": str(run_dir),
              "command": shlex.join(shown), "benchmark_command": args.command}
    if not (args.repo_root / model.folder / "main.py").is_file():
        record.update(returncode=None, wall_seconds=None, peak_memory_mb=None,
                      error=f"{model.folder}/main.py not found")
        (run_dir / "stderr.log").write_text(record["error"] + "\n")
    else:
        started = time.monotonic()
        with open(run_dir / "stdout.log", "w") as out, open(run_dir / "stderr.log", "w") as err:
            process = subprocess.Popen(command, stdout=out, stderr=err, cwd=args.repo_root,
                                       env=child_env())
            code, peak_mb, timed_out = wait_with_usage(process, args.timeout)
        record.update(returncode=code, wall_seconds=round(time.monotonic() - started, 2),
                      peak_memory_mb=None if peak_mb is None else round(peak_mb, 1),
                      error=f"timed out after {args.timeout:g} s" if timed_out else None)
    record["finished_utc"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")
    (run_dir / "benchmark.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def load_record(model, seed, args):
    """The record of one finished run, with its results.json, or a failed record."""
    run_dir = args.out_dir / "runs" / model.folder / f"seed{seed}"
    record_path = run_dir / "benchmark.json"
    if not record_path.is_file():
        return {"folder": model.folder, "seed": seed, "run_dir": str(run_dir),
                "status": "failed", "error": "not run", "results": None, "stderr_tail": []}
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


def progress_line(index, total, model, seed, record):
    head = f"[{index}/{total}] {model.folder} seed {seed}:"
    if record["status"] != "ok":
        lines = [f"{head} FAILED ({record['error']}); log: {record['run_dir']}/stderr.log"]
        return "\n".join(lines + [f"    {line}" for line in record["stderr_tail"]])
    test = record["results"]["test"]
    shown = (f"rmse {test['rmse']:.4f}" if "rmse" in test
             else f"ndcg@100 {test.get('ndcg@100', float('nan')):.4f}")
    memory = record["peak_memory_mb"]
    return (f"{head} ok, {shown}, {record['wall_seconds']:.1f} s, "
            f"peak {memory if memory is not None else '?'} MB")


def run_all(args):
    jobs = [(model, seed, pass_seed) for model in args.models
            for seed, pass_seed in seeds_for(model, args)]
    records = []
    for index, (model, seed, pass_seed) in enumerate(jobs, start=1):
        if not args.report_only:
            print(f"[{index}/{len(jobs)}] {model.folder} seed {seed}: running", flush=True)
            run_one(model, seed, pass_seed, args)
        record = load_record(model, seed, args)
        print(progress_line(index, len(jobs), model, seed, record), flush=True)
        records.append(record)
    return records


# ---------------------------------------------------------------- summary


def summarise(model, records):
    """One table row's numbers for a model: metric -> list of values over its ok runs."""
    ok = [r for r in records if r["status"] == "ok"]
    values = {}
    for record in ok:
        results = record["results"]
        for key, value in results["test"].items():
            if isinstance(value, (int, float)) and key != "n_users":
                values.setdefault(key, []).append(float(value))
        memory = record["peak_memory_mb"]
        if memory is None:
            memory = results.get("peak_memory_mb")
        for key, value in (("wall_seconds", record["wall_seconds"]),
                           ("peak_memory_mb", memory)):
            if value is not None:
                values.setdefault(key, []).append(float(value))
    protocol = ok[0]["results"].get("protocol", model.protocol) if ok else model.protocol
    holdout = ok[0]["results"].get("holdout") if ok else None
    return {"folder": model.folder, "model": model.name, "protocol": protocol,
            "holdout": holdout, "values": values, "n_ok": len(ok), "n_runs": len(records),
            "best_epochs": [r["results"].get("best_epoch") for r in ok],
            "selected": [r["results"].get("selected") for r in ok],
            "seeds": [r["results"].get("seed", r["seed"]) for r in ok],
            "devices": sorted({str(r["results"].get("device")) for r in ok}),
            "data_sha256": sorted({str(r["results"].get("data_sha256")) for r in ok}),
            "failures": [r for r in records if r["status"] != "ok"]}


def mean_std(values):
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def fmt(values, digits=4):
    mean, std = mean_std(values or [])
    if mean is None:
        return "–"
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def fmt_best_epoch(epochs):
    shown = ["–" if e is None else str(e) for e in epochs]
    return "–" if not shown or all(s == "–" for s in shown) else ", ".join(shown)


def fmt_choice(choice):
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in (choice or {}).items()) or "–"


def selected_section(rows):
    """Settings each run chose on validation data (lambda, beta, ...), one line per run."""
    lines = [f"- {row['model']}, seed {seed}: {fmt_choice(choice)}" for row in rows
             for seed, choice in zip(row["seeds"], row["selected"]) if choice]
    return ["", "Settings selected on the validation data:", "", *lines] if lines else []


def fmt_status(row):
    if row["n_ok"] == row["n_runs"]:
        return "ok" if row["n_runs"] == 1 else f"{row['n_ok']}/{row['n_runs']} ok"
    errors = list(dict.fromkeys(r["error"] for r in row["failures"]))
    reasons = "; ".join(errors)
    prefix = "**failed**" if row["n_ok"] == 0 else f"{row['n_ok']}/{row['n_runs']} ok"
    return f"{prefix} ({reasons})"


# ---------------------------------------------------------------- report


def results_table(rows):
    metric_heads = [f"{m[0].upper()}@{k}" if m != "ndcg" else f"NDCG@{k}"
                    for k in KS for m in ("precision", "recall", "ndcg")]
    head = (["Model", "Folder", "Protocol", "RMSE"] + metric_heads +
            ["Best epoch", "Wall time (s)", "Peak memory (MB)", "Status"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        protocol = PROTOCOL_NAMES.get(row["protocol"], row["protocol"])
        if row["holdout"]:
            protocol = protocol[:-1] + f", {row['holdout']})"
        values = row["values"]
        cells = ([row["model"], f"`{row['folder']}`", protocol, fmt(values.get("rmse"))] +
                 [fmt(values.get(key)) for key in RANKING_KEYS] +
                 [fmt_best_epoch(row["best_epochs"]), fmt(values.get("wall_seconds"), 1),
                  fmt(values.get("peak_memory_mb"), 0), fmt_status(row)])
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def old_reference_table(rows):
    lines = ["| Model | RMSE | P@100 | R@100 | NDCG@100 |", "|---|---|---|---|---|"]
    for row in rows:
        if row["folder"] in OLD_REFERENCE:
            cells = [row["model"], *OLD_REFERENCE[row["folder"]]]
            lines.append("| " + " | ".join(cells) + " |")
    return lines if len(lines) > 2 else []


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


def failure_section(rows, root):
    lines = []
    for row in rows:
        for record in row["failures"]:
            lines += ["", f"### {row['folder']}, seed {record['seed']}: {record['error']}", "",
                      f"Log: `{shown_path(record['run_dir'], root)}/stderr.log`. "
                      f"Last lines of its stderr:", "",
                      "```"] + (record["stderr_tail"] or ["(empty)"]) + ["```"]
    return ["", "## Failed runs"] + lines if lines else []


def report_origin(records, args):
    """(command, date) of the runs: the benchmark command(s) that ran them, and when."""
    dates = sorted(r["finished_utc"] for r in records if r.get("finished_utc"))
    date = dates[-1] if dates else datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")
    if not args.report_only:
        return args.command, date
    ran = sorted({r["benchmark_command"] for r in records if r.get("benchmark_command")})
    return " ; ".join(ran) or "?", date


def write_markdown(path, rows, records, args):
    command, date = report_origin(records, args)
    devices = sorted({d for row in rows for d in row["devices"]})
    checksums = sorted({c for row in rows for c in row["data_sha256"]})
    seeds = "; ".join(f"{', '.join(map(str, used))} ({kind})" for kind, used in (
        ("rating models", seeds_used(args, "A")), ("top-N models", seeds_used(args, "B")))
        if used)
    if args.seed is None and args.seeds == 1:
        seeds += ", each model's default (no --seed passed)"
    lines = [
        "# Benchmark results", "",
        f"- Command: `{command}`" + (f" (report rebuilt by `{args.command}`)"
                                     if args.report_only else ""),
        f"- Date: {date} UTC",
        f"- Machine: {machine_description()}; device: {', '.join(devices) or '–'}",
        f"- Data: ratings.dat sha256 {', '.join(c[:16] + '…' for c in checksums) or '–'}",
        f"- Seeds: {seeds}",
    ]
    if args.epochs is not None:
        lines.append(f"- Quick pass: `--epochs {args.epochs}` (not converged; not the "
                     f"models' results)")
    if args.heldout_users is not None:
        lines.append(f"- Top-N models ran with `--heldout-users {args.heldout_users}`")
    lines += ["", *results_table(rows), "",
              "Protocol A: test RMSE of rating prediction, a seeded 81/9/10 random split of "
              "all ratings. Protocol B: top-N ranking under strong generalisation, "
              "Precision/Recall/NDCG at K over the held-out test users (both described in "
              "README.md, Evaluation protocols). Best epoch and selected settings come from validation data "
              "only; the test set is evaluated once. Wall time and peak memory (maximum "
              "resident set size) are measured by benchmark.py for the whole process: "
              "start-up, data loading, training and evaluation."]
    if args.seeds > 1:
        lines.append("With several seeds: mean ± sample standard deviation over the "
                     "successful runs; best epochs listed per seed.")
    lines += selected_section(rows)
    reference = old_reference_table(rows)
    if reference:
        lines += ["", "## Old reference implementation's figures (different protocol)", "",
                  "As published by the old reference implementation, on its own splits and "
                  "metric definitions. They are **not** measurements of this benchmark and "
                  "are not comparable with the table above.", "", *reference]
    lines += failure_section(rows, args.repo_root)
    path.write_text("\n".join(lines) + "\n")


def write_plot(path, rows):
    """Three panels: ranking metrics per top-N model, RMSE per rating model, wall time."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top_n = [r for r in rows if r["protocol"] == "B" and r["n_ok"]]
    rating = [r for r in rows if r["protocol"] == "A" and r["n_ok"]]
    figure, axes = plt.subplots(1, 3, figsize=(17, 5), gridspec_kw={"width_ratios": [3, 1, 1.4]})
    plot_ranking(axes[0], top_n)
    plot_rmse(axes[1], rating)
    plot_wall_time(axes[2], rows)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_ranking(axis, rows):
    axis.set_title("Top-N ranking (test users; higher is better)")
    if not rows:
        axis.text(0.5, 0.5, "no top-N model finished", ha="center", va="center")
        axis.set_axis_off()
        return
    width = 0.8 / len(rows)
    labels = [key.replace("precision", "P").replace("recall", "R").replace("ndcg", "NDCG")
              for key in RANKING_KEYS]
    for i, row in enumerate(rows):
        stats = [mean_std(row["values"].get(key, [])) for key in RANKING_KEYS]
        means = [m if m is not None else 0.0 for m, _ in stats]
        errors = [s or 0.0 for _, s in stats] if row["n_ok"] > 1 else None
        positions = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(RANKING_KEYS))]
        axis.bar(positions, means, width, yerr=errors, capsize=2, label=row["model"])
    axis.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    axis.set_ylabel("metric value")
    axis.legend()
    axis.grid(axis="y", alpha=0.3)


def plot_rmse(axis, rows):
    axis.set_title("Rating prediction (lower is better)")
    if not rows:
        axis.text(0.5, 0.5, "no rating model finished", ha="center", va="center")
        axis.set_axis_off()
        return
    stats = [mean_std(row["values"]["rmse"]) for row in rows]
    means = [m for m, _ in stats]
    errors = [s or 0.0 for _, s in stats]
    bars = axis.bar([row["model"] for row in rows], means, yerr=errors if any(errors) else None,
                    capsize=3, color="tab:purple", width=0.6)
    axis.bar_label(bars, labels=[f"{m:.4f}" for m in means], padding=3)
    axis.set_ylim(max(0.0, min(means) - 0.1), max(means) + 0.05)
    axis.set_ylabel("test RMSE (axis does not start at 0)")
    axis.grid(axis="y", alpha=0.3)


def plot_wall_time(axis, rows):
    axis.set_title("Wall time per run (s; blue top-N, purple rating)")
    stats = [mean_std(row["values"].get("wall_seconds", [])) for row in rows]
    means = [m or 0.0 for m, _ in stats]
    errors = [s or 0.0 for _, s in stats]
    colors = ["tab:blue" if row["protocol"] == "B" else "tab:purple" for row in rows]
    positions = range(len(rows))
    axis.barh(positions, means, xerr=errors if any(errors) else None, capsize=3,
              color=colors, height=0.6)
    right = max([m + e for m, e in zip(means, errors)] + [1.0])
    for y, mean, error, row in zip(positions, means, errors, rows):
        label = f"{mean:.0f}" if row["n_ok"] else "failed"
        axis.text(mean + error + 0.02 * right, y, label, va="center")
    axis.set_yticks(positions, [row["model"] for row in rows])
    axis.invert_yaxis()
    axis.set_xlim(0, right * 1.2)
    axis.grid(axis="x", alpha=0.3)


def write_json_summary(path, rows, records, args):
    root = args.repo_root
    command, date = report_origin(records, args)
    summary = {"command": command, "date": date,
               "machine": machine_description(),
               "models": [{**{k: v for k, v in row.items() if k != "failures"},
                           "failures": [{"seed": r["seed"], "error": r["error"]}
                                        for r in row["failures"]]} for row in rows],
               "runs": [{**{k: v for k, v in r.items() if k != "stderr_tail"},
                         "run_dir": shown_path(r["run_dir"], root)} for r in records]}
    path.write_text(json.dumps(summary, indent=2) + "\n")


def main(argv=None):
    args = parse_args(argv)
    args.command = shlex.join(["python", "benchmark.py",
                               *(sys.argv[1:] if argv is None else argv)])
    records = run_all(args)
    rows = [summarise(model, [r for r in records if r["folder"] == model.folder])
            for model in args.models]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_markdown(args.out_dir / "results.md", rows, records, args)
    write_plot(args.out_dir / "results.png", rows)
    write_json_summary(args.out_dir / "results.json", rows, records, args)
    print(f"wrote {args.out_dir / 'results.md'}, results.png and results.json")
    failed = [r for r in records if r["status"] != "ok"]
    if failed:
        print(f"{len(failed)} of {len(records)} runs failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
