"""Tests of benchmark.py: the runner, the table, the chart and failure handling.

benchmark.py runs in a subprocess against a temporary repository tree (--repo-root) that
holds a copy of ESAE-PyTorch (a real, cheap model) and small fake model folders: one that
writes a rating results.json and records its arguments, and others that fail in different
ways. Nothing here depends on the other model folders being finished.
"""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmark.py"

FAKE_RATING = """
    import argparse, json, pathlib, sys
    parser = argparse.ArgumentParser()
    for flag in ("--data-dir", "--device", "--comet"):
        parser.add_argument(flag)
    parser.add_argument("--out-dir", type=pathlib.Path, required=True)
    parser.add_argument("--seed", type=int, default=1994)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--no-download", action="store_true")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    calls = pathlib.Path(__file__).resolve().parent / "calls.txt"
    with open(calls, "a") as out:
        out.write(" ".join(sys.argv[1:]) + "\\n")
    rmse = 0.9 + 0.01 * (args.seed - 1994)
    results = {"model": "FakeAutoRec", "protocol": "A", "test": {"rmse": rmse},
               "best_epoch": args.epochs, "selected": {}, "seed": args.seed,
               "data_sha256": "f" * 64, "device": "cpu", "argv": sys.argv[1:]}
    (args.out_dir / "results.json").write_text(json.dumps(results))
"""
FAKE_FAILING = """
    import sys
    print("loading data ...")
    sys.exit("planted failure in a fake model")
"""
FAKE_SILENT = """
    print("exits 0 but writes no results.json")
"""
FAKE_SLOW = """
    import time
    time.sleep(60)
"""


# ---------------------------------------------------------------- helpers


def load_benchmark():
    spec = importlib.util.spec_from_file_location("benchmark_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_tree(root, fakes, with_ease=False):
    """A repository tree under root: {folder: main.py source}, plus a copy of ESAE-PyTorch."""
    for folder, source in fakes.items():
        (root / folder).mkdir(parents=True)
        (root / folder / "main.py").write_text(textwrap.dedent(source))
    if with_ease:
        shutil.copytree(REPO / "ESAE-PyTorch", root / "ESAE-PyTorch",
                        ignore=shutil.ignore_patterns("__pycache__"))
    return root


def run_benchmark(repo_root, *args, timeout=300):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("COMET_API_KEY", None)
    return subprocess.run([sys.executable, str(SCRIPT), "--repo-root", str(repo_root),
                           "--out-dir", str(repo_root / "benchmark"), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=repo_root)


def table_rows(markdown):
    """The results table of results.md as {model name: {column: cell}}."""
    lines = [line for line in markdown.split("## ")[0].splitlines() if line.startswith("|")]
    head = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(head, cells))
    return rows


def summary_runs(repo_root):
    return json.loads((repo_root / "benchmark" / "results.json").read_text())["runs"]


# ---------------------------------------------------------------- end to end


def test_table_and_chart_with_a_real_model_a_fake_rating_model_and_a_failing_one(
        tmp_path, top_n_file):
    root = fake_tree(tmp_path / "repo", {"AutoRec-TensorFlow": FAKE_RATING,
                                         "CDAE-PyTorch": FAKE_FAILING}, with_ease=True)
    done = run_benchmark(root, "--models", "ESAE-PyTorch", "CDAE-PyTorch", "AutoRec-TensorFlow",
                         "--data-dir", top_n_file.parent, "--heldout-users", 200,
                         "--comet", "off", "--epochs", 2, "--device", "cpu")
    assert done.returncode == 1, done.stderr  # a run failed; the others still ran
    out = root / "benchmark"
    markdown = (out / "results.md").read_text()
    rows = table_rows(markdown)
    assert list(rows) == ["AutoRec", "CDAE", "EASE"]

    ease_results = json.loads((out / "runs/ESAE-PyTorch/seed98765/results.json").read_text())
    ease = rows["EASE"]
    assert ease["Status"] == "ok"
    assert ease["NDCG@100"] == f"{ease_results['test']['ndcg@100']:.4f}"
    assert ease["P@20"] == f"{ease_results['test']['precision@20']:.4f}"
    assert float(ease["R@50"]) > 0.3  # EASE learns the planted clusters
    assert float(ease["Wall time (s)"]) > 0 and float(ease["Peak memory (MB)"]) > 10

    assert rows["AutoRec"]["RMSE"] == "0.9000" and rows["AutoRec"]["Best epoch"] == "2"
    assert rows["CDAE"]["Status"] == "**failed** (exit code 1)"
    assert rows["CDAE"]["NDCG@100"] == "–"
    assert "planted failure in a fake model" in markdown  # stderr tail in the report
    assert "planted failure" in (out / "runs/CDAE-PyTorch/seed98765/stderr.log").read_text()
    assert "0.2561" in markdown.split("## Old reference")[1]  # old figures kept apart

    # each folder gets only the flags it accepts: no --epochs for EASE, no
    # --heldout-users for rating models, no --seed unless one was given
    rating_argv = json.loads((out / "runs/AutoRec-TensorFlow/seed1994/results.json")
                             .read_text())["argv"]
    assert rating_argv[rating_argv.index("--epochs") + 1] == "2"
    assert rating_argv[rating_argv.index("--data-dir") + 1] == str(top_n_file.parent)
    assert rating_argv[rating_argv.index("--device") + 1] == "cpu"
    assert "--heldout-users" not in rating_argv and "--seed" not in rating_argv
    ease_config = json.loads((out / "runs/ESAE-PyTorch/seed98765/config.json").read_text())
    assert ease_config["heldout_users"] == 200 and ease_config["seed"] == 98765
    assert ease_config["comet"] == "off" and "epochs" not in ease_config

    statuses = {run["folder"]: run["status"] for run in summary_runs(root)}
    assert statuses == {"AutoRec-TensorFlow": "ok", "CDAE-PyTorch": "failed",
                        "ESAE-PyTorch": "ok"}

    image = pytest.importorskip("matplotlib.image").imread(out / "results.png")
    assert image.shape[0] > 200 and image.shape[1] > 400
    assert np.asarray(image)[..., :3].std() > 0.05  # not a blank canvas


# ---------------------------------------------------------------- seeds


def test_seeds_repeat_each_model_and_report_mean_and_std(tmp_path):
    root = fake_tree(tmp_path / "repo", {"AutoRec-TensorFlow": FAKE_RATING})
    done = run_benchmark(root, "--models", "AutoRec-TensorFlow", "--seeds", 3)
    assert done.returncode == 0, done.stderr
    seeds = [run["seed"] for run in summary_runs(root)]
    assert seeds == [1994, 1995, 1996]  # the protocol's default seed, then +1, +2
    calls = (root / "AutoRec-TensorFlow/calls.txt").read_text().splitlines()
    assert [call.split("--seed ")[1].split()[0] for call in calls] == ["1994", "1995", "1996"]
    row = table_rows((root / "benchmark/results.md").read_text())["AutoRec"]
    assert row["RMSE"] == "0.9100 ± 0.0100"  # 0.90, 0.91, 0.92: sample std 0.01
    assert row["Status"] == "3/3 ok"


def test_seed_flag_sets_the_first_seed(tmp_path):
    root = fake_tree(tmp_path / "repo", {"AutoRec-TensorFlow": FAKE_RATING})
    done = run_benchmark(root, "--models", "AutoRec-TensorFlow", "--seeds", 2, "--seed", 2000)
    assert done.returncode == 0, done.stderr
    assert [run["seed"] for run in summary_runs(root)] == [2000, 2001]


# ---------------------------------------------------------------- failures


def test_every_kind_of_failure_is_reported_and_stale_results_never_count(tmp_path):
    root = fake_tree(tmp_path / "repo", {"CDAE-PyTorch": FAKE_SILENT, "VAE-PyTorch": FAKE_SLOW,
                                         "SVAE-PyTorch": FAKE_FAILING})
    stale = root / "benchmark/runs/SVAE-PyTorch/seed98765"
    stale.mkdir(parents=True)
    (stale / "results.json").write_text(json.dumps({"test": {"ndcg@100": 0.9}}))
    done = run_benchmark(root, "--models", "CDAE", "VAE", "SVAE", "DeepRec", "--timeout", 3)
    assert done.returncode == 1
    rows = table_rows((root / "benchmark/results.md").read_text())
    assert rows["CDAE"]["Status"] == "**failed** (no readable results.json)"
    assert rows["Mult-VAE"]["Status"] == "**failed** (timed out after 3 s)"
    assert rows["SVAE"]["Status"] == "**failed** (exit code 1)"
    assert rows["SVAE"]["NDCG@100"] == "–"
    assert rows["DeepRec"]["Status"] == "**failed** (NVIDIA-DeepRec-TensorFlow/main.py not found)"
    image = pytest.importorskip("matplotlib.image").imread(root / "benchmark/results.png")
    assert image.size > 0


def test_report_only_rebuilds_the_report_without_running(tmp_path):
    root = fake_tree(tmp_path / "repo", {"AutoRec-TensorFlow": FAKE_RATING})
    assert run_benchmark(root, "--models", "AutoRec").returncode == 0
    (root / "benchmark/results.md").unlink()
    done = run_benchmark(root, "--models", "AutoRec", "--report-only")
    assert done.returncode == 0, done.stderr
    assert len((root / "AutoRec-TensorFlow/calls.txt").read_text().splitlines()) == 1
    markdown = (root / "benchmark/results.md").read_text()
    assert table_rows(markdown)["AutoRec"]["RMSE"] == "0.9000"
    assert "Command: `python benchmark.py --repo-root" in markdown  # the command that ran
    assert "(report rebuilt by `python benchmark.py" in markdown


# ---------------------------------------------------------------- command line


def test_unknown_model_is_an_argparse_error(capsys):
    benchmark = load_benchmark()
    with pytest.raises(SystemExit) as stop:
        benchmark.parse_args(["--models", "NoSuchModel"])
    assert stop.value.code == 2
    assert "unknown model 'NoSuchModel'" in capsys.readouterr().err


def test_models_accept_folder_and_model_names_in_table_order():
    benchmark = load_benchmark()
    args = benchmark.parse_args(["--models", "ease", "VAE-PyTorch", "autorec", "deeprec"])
    assert [m.folder for m in args.models] == ["AutoRec-TensorFlow", "NVIDIA-DeepRec-TensorFlow",
                                               "VAE-PyTorch", "ESAE-PyTorch"]
    assert [m.folder for m in benchmark.parse_args([]).models] == [
        m.folder for m in benchmark.MODELS]
