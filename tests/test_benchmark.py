"""Tests of benchmark.py: seeds and hold-outs, the tables, the paired bootstrap, the chart,
failure handling, and the flags it passes to the real scripts.

benchmark.py runs in a subprocess against a temporary repository tree (--repo-root) that
holds fake model folders (and a fake baselines.py) whose per-unit test files are written
from a seeded "split" shared by every fake on the same seed, so paired comparisons work;
one test uses a copy of the real ESAE-PyTorch and baselines.py on planted data.
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

from conftest import REPO, TOP_N_FOLDERS, RATING_FOLDERS

SCRIPT = REPO / "benchmark.py"

# A fake main.py (or baselines.py): QUALITY (per baseline name for baselines.py) sets how
# good its per-unit results are; the units themselves depend on the seed only. PROTOCOL
# "auto" (baselines.py): top-N when given a hold-out, rating otherwise.
FAKE = """
    import argparse, json, os, pathlib, sys
    import numpy as np
    QUALITY = {quality!r}
    PROTOCOL = {protocol!r}
    parser = argparse.ArgumentParser()
    parser.add_argument("baseline", nargs="?")
    for flag in ("--data-dir", "--device", "--comet", "--holdout"):
        parser.add_argument(flag)
    parser.add_argument("--out-dir", type=pathlib.Path, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--heldout-users", type=int, default=600)
    parser.add_argument("--no-download", action="store_true")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--refit", action="store_true")
    parser.add_argument("--model")
    args = parser.parse_args()
    quality = (QUALITY[args.baseline or args.model] if isinstance(QUALITY, dict)
               else QUALITY)
    protocol = PROTOCOL if PROTOCOL != "auto" else ("B" if args.holdout else "A")
    rng = np.random.RandomState(args.seed + (7 if args.holdout == "temporal" else 0))
    units, refit = 40, None
    if protocol == "B":
        ndcg = np.clip(0.5 * rng.rand(units) + quality, 0, 1)
        lines = ["user_id,n_fold_in,n_target,ndcg@100"] + [
            f"{{3 * u + 1}},{{u % 5 + 4}},{{u % 3 + 1}},{{float(v)!r}}" for u, v in enumerate(ndcg)]
        (args.out_dir / "test_per_user.csv").write_text("\\n".join(lines) + "\\n")
        test = {{"ndcg@100": quality + 0.01 * (args.seed - 101), "recall@20": 0.5,
                 "n_users": units}}
    else:
        ratings = rng.randint(1, 6, units)
        predictions = ratings + quality * (2 * rng.rand(units) - 1)
        lines = ["user_id,movie_id,rating,prediction"] + [
            f"{{u + 1}},{{2 * u + 5}},{{r}},{{float(p)!r}}"
            for u, (r, p) in enumerate(zip(ratings, predictions))]
        (args.out_dir / "test_predictions.csv").write_text("\\n".join(lines) + "\\n")
        test = {{"rmse": quality + 0.01 * (args.seed - 101), "n_ratings": units}}
        if args.refit:  # the refit model: half the error on the same test ratings
            lines = ["user_id,movie_id,rating,prediction"] + [
                f"{{u + 1}},{{2 * u + 5}},{{r}},{{float(r + (p - r) / 2)!r}}"
                for u, (r, p) in enumerate(zip(ratings, predictions))]
            (args.out_dir / "refit_test_predictions.csv").write_text("\\n".join(lines) + "\\n")
            refit = {{"epochs": 7, "test": {{"rmse": test["rmse"] / 2, "n_ratings": units}}}}
    results = {{"model": "fake", "protocol": protocol, "holdout": args.holdout, "test": test,
               **({{"refit": refit}} if refit else {{}}),
               "best_epoch": args.epochs, "selected": {{}}, "seed": args.seed,
               "data_sha256": "f" * 64, "device": "cpu", "argv": sys.argv[1:],
               "threads": os.environ.get("OMP_NUM_THREADS")}}
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
    import pathlib, sys, time
    time.sleep(20)
    out = pathlib.Path(sys.argv[sys.argv.index("--out-dir") + 1])
    (out / "results.json").write_text('{"test": {"ndcg@100": 0.9}}')
"""
BASELINE_QUALITY_B = {"popularity": 0.1, "itemknn": 0.3}
BASELINE_QUALITY_A = {"global-mean": 1.1, "bias": 0.9}


# ---------------------------------------------------------------- helpers


def load_benchmark():
    spec = importlib.util.spec_from_file_location("benchmark_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake(quality, protocol):
    return FAKE.format(quality=quality, protocol=protocol)


def fake_tree(root, fakes, baselines=None):
    """A repository tree: {folder: main.py source}, and baselines.py when given."""
    root.mkdir(parents=True)
    for folder, source in fakes.items():
        (root / folder).mkdir()
        (root / folder / "main.py").write_text(textwrap.dedent(source))
    if baselines is not None:
        (root / "baselines.py").write_text(textwrap.dedent(baselines))
    return root


def run_benchmark(repo_root, *args, timeout=300):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("COMET_API_KEY", None)
    return subprocess.run([sys.executable, str(SCRIPT), "--repo-root", str(repo_root),
                           "--out-dir", str(repo_root / "benchmark"), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=repo_root)


def tables(markdown):
    """Every table of results.md under its section title: {title: [{column: cell}]}."""
    found, title, lines = {}, None, []
    for line in markdown.splitlines() + [""]:
        if line.startswith("## "):
            title = line[3:]
        if line.startswith("|"):
            lines.append(line)
        elif lines:
            head = [cell.strip() for cell in lines[0].strip("|").split("|")]
            found[title] = [dict(zip(head, [c.strip() for c in row.strip("|").split("|")]))
                            for row in lines[2:]]
            lines = []
    return found


def by_model(table):
    return {row["Model"]: row for row in table}


def summary(repo_root):
    return json.loads((repo_root / "benchmark" / "results.json").read_text())


# ---------------------------------------------------------------- statistics by hand


def test_mean_and_sample_sd_by_hand():
    benchmark = load_benchmark()
    mean, sd = benchmark.mean_sd([0.90, 0.91, 0.92])
    assert mean == pytest.approx(0.91) and sd == pytest.approx(0.01)
    mean, sd = benchmark.mean_sd([1.0, 2.0, 3.0, 4.0])  # deviations 1.5, .5: 5 / 3
    assert mean == 2.5 and sd == pytest.approx((5 / 3) ** 0.5)
    assert benchmark.mean_sd([0.4]) == (0.4, None)


def test_paired_bootstrap_constant_difference_has_a_zero_width_interval():
    benchmark = load_benchmark()
    a = np.array([0.3, 0.5, 0.9, 0.1])
    groups = [(a, a - 0.05), (a[:3], a[:3] - 0.05)]
    estimate, low, high = benchmark.paired_bootstrap(groups, lambda x: x, 500, seed=3)
    assert estimate == pytest.approx(0.05)
    assert low == pytest.approx(0.05) and high == pytest.approx(0.05)


def test_paired_bootstrap_equals_a_resample_by_resample_computation():
    """The interval is the 2.5/97.5 percentiles of resamples drawn within each seed, each
    seed g from default_rng([seed, g]): recomputed here one resample at a time."""
    benchmark = load_benchmark()
    groups = [(np.array([1.0, 0.0, 0.5]), np.array([0.0, 0.0, 0.25])),
              (np.array([0.2, 0.4]), np.array([0.3, 0.1]))]
    estimate, low, high = benchmark.paired_bootstrap(groups, lambda x: x, 200, seed=11)
    # on the data: a pools to 2.1 / 5, b to 0.65 / 5
    assert estimate == pytest.approx((2.1 - 0.65) / 5)
    generators = [np.random.default_rng([11, g]) for g in range(2)]
    resampled = []
    for _ in range(200):
        total = 0.0
        for (a, b), generator in zip(groups, generators):
            picks = generator.integers(0, len(a), size=len(a))
            total += (a[picks] - b[picks]).sum()
        resampled.append(total / 5)
    assert (low, high) == pytest.approx(tuple(np.percentile(resampled, [2.5, 97.5])))
    assert low < estimate < high


def test_paired_bootstrap_of_rmse_differences_by_hand():
    """transform = sqrt on mean squared errors: RMSE(a) - RMSE(b)."""
    benchmark = load_benchmark()
    squared_a, squared_b = np.array([1.0, 4.0]), np.array([1.0, 1.0])
    estimate, low, high = benchmark.paired_bootstrap([(squared_a, squared_b)], np.sqrt, 400)
    assert estimate == pytest.approx(2.5 ** 0.5 - 1.0)
    # each resample holds two of the errors: RMSE(a) in {1, sqrt(2.5), 2}, RMSE(b) = 1
    assert low == pytest.approx(0.0) and high == pytest.approx(1.0)


# ---------------------------------------------------------------- end to end with fakes


def test_default_seeds_hold_outs_baselines_and_paired_comparisons(tmp_path):
    root = fake_tree(tmp_path / "repo", {"AutoRec-TensorFlow": fake(0.6, "A"),
                                         "NVIDIA-DeepRec-TensorFlow": fake(0.6, "A"),
                                         "CDAE-PyTorch": fake(0.35, "B"),
                                         "ESAE-PyTorch": fake(0.4, "B")},
                     baselines=fake({**BASELINE_QUALITY_A, **BASELINE_QUALITY_B}, "auto"))
    done = run_benchmark(root, "--models", "AutoRec", "DeepRec", "CDAE", "EASE",
                         "--bootstrap", 300)
    assert done.returncode == 0, done.stderr
    result = summary(root)
    assert result["seeds"] == [101, 102, 103]  # unseen seeds, never 1994 or 98765
    runs = {(r["name"], r["holdout"], r["seed"]) for r in result["runs"]}
    assert len(runs) == 2 * 3 + 2 * 3 + 2 * 2 * 3 + 2 * 2 * 3  # rating; baselines; top-N
    assert ("CDAE", "temporal", 103) in runs and ("Item-kNN", "random", 101) in runs
    assert ("AutoRec", None, 102) in runs and ("Bias (damped)", None, 101) in runs
    for run in result["runs"]:  # every run got its seed and, for top-N, its hold-out
        argv = json.loads((root / run["run_dir"] / "results.json").read_text())["argv"]
        assert argv[argv.index("--seed") + 1] == str(run["seed"])
        assert (argv[argv.index("--holdout") + 1] if "--holdout" in argv else None) == \
            run["holdout"]

    markdown = (root / "benchmark/results.md").read_text()
    found = tables(markdown)
    rating = by_model(found["Rating prediction: test RMSE (lower is better)"])
    assert rating["AutoRec"]["RMSE (mean ± sd)"] == "0.6100 ± 0.0100"  # .60, .61, .62
    assert rating["AutoRec"]["RMSE per seed"] == "0.6000, 0.6100, 0.6200"
    assert rating["Bias (damped)"]["Kind"] == "baseline"
    random = by_model(found["Top-N ranking, random hold-out: test users (higher is better)"])
    assert list(random) == ["CDAE", "EASE", "Popularity", "Item-kNN"]
    assert random["EASE"]["NDCG@100 (mean ± sd)"] == "0.4100 ± 0.0100"
    assert "Top-N ranking, temporal hold-out: test users (higher is better)" in found
    # per-seed figures kept in results.json
    ease_row = [row for row in result["rows"] if row["model"] == "EASE"
                and row["holdout"] == "random"][0]
    assert ease_row["per_seed"]["102"]["ndcg@100"] == pytest.approx(0.41)

    comparisons = {(c["a"], c["b"], c["holdout"]): c for c in result["comparisons"]}
    assert set(comparisons) >= {("CDAE", "EASE", "random"), ("CDAE", "Popularity", "temporal"),
                                ("EASE", "Popularity", "random"),
                                ("Item-kNN", "EASE", "temporal"), ("AutoRec", "DeepRec", None),
                                ("AutoRec", "Bias (damped)", None)}
    assert ("Popularity", "EASE", "random") not in comparisons
    cdae = comparisons[("CDAE", "EASE", "random")]
    # the same units shifted by the quality gap: 0.35 - 0.4 exactly, on every resample
    assert cdae["difference"] == pytest.approx(-0.05) and cdae["n_units"] == 3 * 40
    assert cdae["high"] == pytest.approx(-0.05) and cdae["verdict"] == "EASE better"
    same = comparisons[("AutoRec", "DeepRec", None)]  # identical predictions
    assert same["difference"] == 0 and same["verdict"] == "within noise"
    assert comparisons[("AutoRec", "Bias (damped)", None)]["verdict"] == "AutoRec better"
    paired = by_model([{**row, "Model": row["Difference"]} for row in found["Paired differences"]])
    assert paired["CDAE − EASE"]["Verdict"] == "EASE better"

    image = pytest.importorskip("matplotlib.image").imread(root / "benchmark/results.png")
    assert image.shape[1] > 4 * image.shape[0] / 2  # four panels side by side
    assert np.asarray(image)[..., :3].std() > 0.05  # not a blank canvas


def test_refit_runs_give_a_second_labelled_row_paired_on_the_refit_predictions(tmp_path):
    root = fake_tree(tmp_path / "repo", {"AutoRec-TensorFlow": fake(0.6, "A")})
    done = run_benchmark(root, "--models", "AutoRec", "--no-baselines", "--bootstrap", 300)
    assert done.returncode == 0, done.stderr
    result = summary(root)
    assert all("--refit" in json.loads((root / r["run_dir"] / "results.json").read_text())
               ["argv"] for r in result["runs"])
    assert len(result["runs"]) == 3  # one run per seed serves both rows
    rating = by_model(tables((root / "benchmark/results.md").read_text())
                      ["Rating prediction: test RMSE (lower is better)"])
    assert list(rating) == ["AutoRec", "AutoRec (refit)"]
    assert rating["AutoRec"]["RMSE per seed"] == "0.6000, 0.6100, 0.6200"
    assert rating["AutoRec (refit)"]["RMSE per seed"] == "0.3000, 0.3050, 0.3100"
    assert rating["AutoRec (refit)"]["Best epoch"] == "7, 7, 7"
    (comparison,) = [c for c in result["comparisons"] if c["a"] == "AutoRec (refit)"]
    assert comparison["b"] == "AutoRec" and comparison["error"] is None
    # read from refit_test_predictions.csv: half of every error, so RMSE halves exactly
    units = [np.loadtxt(root / r["run_dir"] / "test_predictions.csv", delimiter=",",
                        skiprows=1) for r in result["runs"]]
    errors = np.concatenate([(u[:, 3] - u[:, 2]) ** 2 for u in units])
    assert comparison["difference"] == pytest.approx(-np.sqrt(errors.mean()) / 2)
    assert comparison["verdict"] == "AutoRec (refit) better"


def test_a_run_without_refit_figures_fails_its_refit_row_only(tmp_path):
    silent_refit = fake(0.6, "A").replace("if args.refit:", "if False:")
    root = fake_tree(tmp_path / "repo", {"AutoRec-TensorFlow": silent_refit})
    done = run_benchmark(root, "--models", "AutoRec", "--no-baselines", "--seeds", 1)
    assert done.returncode == 1  # a row failed
    rows = {row["model"]: row for row in summary(root)["rows"]}
    assert rows["AutoRec"]["n_ok"] == 1 and rows["AutoRec (refit)"]["n_ok"] == 0
    assert "no refit figures" in (root / "benchmark/results.md").read_text()


def test_edlae_is_its_own_row_from_the_ease_folder(tmp_path):
    root = fake_tree(tmp_path / "repo", {"ESAE-PyTorch": fake({None: 0.4, "edlae": 0.45}, "B")})
    done = run_benchmark(root, "--models", "EASE", "EDLAE", "--no-baselines", "--seeds", 1,
                         "--holdouts", "random", "--bootstrap", 300)
    assert done.returncode == 0, done.stderr
    runs = {r["name"]: r for r in summary(root)["runs"]}
    edlae_argv = json.loads((root / runs["EDLAE"]["run_dir"] / "results.json").read_text())["argv"]
    assert edlae_argv[:2] == ["--model", "edlae"]
    assert runs["EDLAE"]["run_dir"] != runs["EASE"]["run_dir"]
    top_n = by_model(tables((root / "benchmark/results.md").read_text())
                     ["Top-N ranking, random hold-out: test users (higher is better)"])
    assert top_n["EDLAE"]["NDCG@100 (mean ± sd)"] == "0.4500"
    assert top_n["EASE"]["NDCG@100 (mean ± sd)"] == "0.4000"
    (comparison,) = summary(root)["comparisons"]
    assert (comparison["a"], comparison["b"]) == ("EDLAE", "EASE")
    assert comparison["difference"] == pytest.approx(0.05)


def test_runs_of_different_splits_are_not_compared(tmp_path):
    shifted = fake(0.3, "B").replace('f"{{3 * u + 1}}', 'f"{{3 * u + 2}}').replace(
        "{3 * u + 1}", "{3 * u + 2}")
    root = fake_tree(tmp_path / "repo", {"CDAE-PyTorch": shifted,
                                         "ESAE-PyTorch": fake(0.4, "B")})
    done = run_benchmark(root, "--models", "CDAE", "EASE", "--no-baselines", "--seeds", 1,
                         "--holdouts", "random")
    assert done.returncode == 0, done.stderr
    (comparison,) = summary(root)["comparisons"]
    assert "not the same split" in comparison["error"]
    assert "not compared" in (root / "benchmark/results.md").read_text()


def test_seed_flags_and_jobs(tmp_path):
    root = fake_tree(tmp_path / "repo", {"AutoRec-TensorFlow": fake(0.9, "A"),
                                         "NVIDIA-DeepRec-TensorFlow": fake(0.9, "A")})
    done = run_benchmark(root, "--models", "AutoRec", "DeepRec", "--no-baselines",
                         "--seeds", 2, "--seed", 2000, "--jobs", 1)
    assert done.returncode == 0, done.stderr
    runs = summary(root)["runs"]
    assert sorted({run["seed"] for run in runs}) == [2000, 2001]
    assert not any(run["beside_other_jobs"] for run in runs)
    threads = {json.loads((root / r["run_dir"] / "results.json").read_text())["threads"]
               for r in runs}
    assert threads == {os.environ.get("OMP_NUM_THREADS")}  # left as it was
    markdown = (root / "benchmark/results.md").read_text()
    assert "†" not in markdown and "includes the tuning seed" not in markdown


def test_two_jobs_run_single_threaded_and_say_so(tmp_path):
    slow = fake(0.9, "A").replace("import numpy as np", "import numpy as np, time\n"
                                  "    time.sleep(1.5)")
    root = fake_tree(tmp_path / "repo", {"AutoRec-TensorFlow": slow,
                                         "NVIDIA-DeepRec-TensorFlow": slow})
    done = run_benchmark(root, "--models", "AutoRec", "DeepRec", "--no-baselines",
                         "--seeds", 1, "--jobs", 2, "--seed", 1994)
    assert done.returncode == 0, done.stderr
    runs = summary(root)["runs"]
    assert all(run["beside_other_jobs"] for run in runs)
    assert {json.loads((root / r["run_dir"] / "results.json").read_text())["threads"]
            for r in runs} == {"1"}
    markdown = (root / "benchmark/results.md").read_text()
    assert "measured beside another job" in markdown
    rating = by_model(tables(markdown)["Rating prediction: test RMSE (lower is better)"])
    assert rating["AutoRec"]["Wall time (s)"].endswith("†")
    assert "includes the tuning seed 1994" in markdown


# ---------------------------------------------------------------- failures


def test_every_kind_of_failure_is_reported(tmp_path):
    root = fake_tree(tmp_path / "repo", {"CDAE-PyTorch": FAKE_SILENT, "VAE-PyTorch": FAKE_SLOW,
                                         "SVAE-PyTorch": FAKE_FAILING})
    done = run_benchmark(root, "--models", "CDAE", "VAE", "SVAE", "DeepRec", "--timeout", 2,
                         "--seeds", 1, "--holdouts", "random", "--no-baselines")
    assert done.returncode == 1  # every run failed
    found = tables((root / "benchmark/results.md").read_text())
    top_n = by_model(found["Top-N ranking, random hold-out: test users (higher is better)"])
    assert top_n["CDAE"]["Status"] == "**failed** (no readable results.json)"
    assert top_n["Mult-VAE"]["Status"] == "**failed** (timed out after 2 s)"
    assert top_n["SVAE"]["Status"] == "**failed** (exit code 1)"
    assert top_n["SVAE"]["NDCG@100 (mean ± sd)"] == "–"
    rating = by_model(found["Rating prediction: test RMSE (lower is better)"])
    assert rating["DeepRec"]["Status"] == \
        "**failed** (NVIDIA-DeepRec-TensorFlow/main.py not found)"
    markdown = (root / "benchmark/results.md").read_text()
    assert "planted failure in a fake model" in markdown  # stderr tail in the report
    # the slow run was killed, not waited for: it never wrote its results
    slow_dir = root / "benchmark/runs/VAE-PyTorch/random/seed101"
    assert not (slow_dir / "results.json").exists()


def test_stale_results_of_an_earlier_run_never_count(tmp_path):
    root = fake_tree(tmp_path / "repo", {"CDAE-PyTorch": FAKE_SILENT})
    stale = root / "benchmark/runs/CDAE-PyTorch/random/seed101"
    stale.mkdir(parents=True)
    (stale / "results.json").write_text(json.dumps({"test": {"ndcg@100": 0.9}}))
    done = run_benchmark(root, "--models", "CDAE", "--seeds", 1, "--holdouts", "random",
                         "--no-baselines")
    assert done.returncode == 1
    top_n = by_model(tables((root / "benchmark/results.md").read_text())[
        "Top-N ranking, random hold-out: test users (higher is better)"])
    assert top_n["CDAE"]["Status"] == "**failed** (no readable results.json)"


def test_report_only_rebuilds_the_report_without_running(tmp_path):
    root = fake_tree(tmp_path / "repo", {"AutoRec-TensorFlow": fake(0.9, "A")})
    assert run_benchmark(root, "--models", "AutoRec", "--no-baselines").returncode == 0
    (root / "benchmark/results.md").unlink()
    done = run_benchmark(root, "--models", "AutoRec", "--no-baselines", "--report-only")
    assert done.returncode == 0, done.stderr
    assert len(summary(root)["runs"]) == 3
    markdown = (root / "benchmark/results.md").read_text()
    rating = by_model(tables(markdown)["Rating prediction: test RMSE (lower is better)"])
    assert rating["AutoRec"]["RMSE (mean ± sd)"] == "0.9100 ± 0.0100"
    assert "Command: `python benchmark.py --repo-root" in markdown  # the command that ran
    assert "(report rebuilt by `python benchmark.py" in markdown


# ---------------------------------------------------------------- the real scripts


@pytest.mark.parametrize("name", [m.name for m in load_benchmark().MODELS])
def test_every_flag_the_benchmark_passes_is_accepted_by_the_real_script(name, tmp_path):
    benchmark = load_benchmark()
    args = benchmark.parse_args(["--data-dir", str(tmp_path), "--device", "cpu", "--comet",
                                 "off", "--epochs", "1", "--heldout-users", "5",
                                 "--no-download", "--timeout", "5"])
    model = [m for m in benchmark.MODELS if m.name == name][0]
    folder = model.folder
    holdout = "temporal" if model.protocol == "B" else None
    command = benchmark.child_command(model, holdout, 101, args, tmp_path / "run")
    probe = ("import sys; sys.path.insert(0, '.'); import main; "
             "args = main.parse_args(sys.argv[1:]); print(args.seed)")
    done = subprocess.run([sys.executable, "-c", probe, *command[2:]], capture_output=True,
                          text=True, cwd=REPO / folder, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "101"


@pytest.mark.parametrize("baseline", ["popularity", "itemknn", "global-mean", "bias"])
def test_every_flag_the_benchmark_passes_is_accepted_by_baselines(baseline, tmp_path):
    benchmark = load_benchmark()
    args = benchmark.parse_args(["--data-dir", str(tmp_path), "--heldout-users", "5",
                                 "--no-download"])
    model = [m for m in benchmark.BASELINES if m.baseline == baseline][0]
    holdout = "random" if model.protocol == "B" else None
    command = benchmark.child_command(model, holdout, 101, args, tmp_path / "run")
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    # no ratings.dat and --no-download: the data error, not an argument error
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("error:") and "ratings.dat" in done.stderr
    assert not (tmp_path / "run").exists()


def test_real_ease_and_baselines_on_planted_data(tmp_path, top_n_file):
    root = tmp_path / "repo"
    root.mkdir()
    for folder in ("ESAE-PyTorch", "AutoRec-TensorFlow"):  # baselines.py reads their files
        shutil.copytree(REPO / folder, root / folder,
                        ignore=shutil.ignore_patterns("__pycache__", "README.md"))
    shutil.copy(REPO / "baselines.py", root / "baselines.py")
    done = run_benchmark(root, "--models", "EASE", "--data-dir", top_n_file.parent,
                         "--heldout-users", 200, "--comet", "off", "--seeds", 2,
                         "--holdouts", "random", "--bootstrap", 300)
    assert done.returncode == 0, done.stderr
    found = tables((root / "benchmark/results.md").read_text())
    top_n = by_model(found["Top-N ranking, random hold-out: test users (higher is better)"])
    assert list(top_n) == ["EASE", "Popularity", "Item-kNN"]
    ease_results = json.loads(
        (root / "benchmark/runs/ESAE-PyTorch/random/seed101/results.json").read_text())
    assert ease_results["seed"] == 101
    comparisons = {(c["a"], c["b"]): c for c in summary(root)["comparisons"]}
    # the same split (no error), and the planted clusters make EASE beat popularity
    assert comparisons[("EASE", "Popularity")]["error"] is None
    assert comparisons[("EASE", "Popularity")]["verdict"] == "EASE better"
    assert comparisons[("Item-kNN", "Popularity")]["verdict"] == "Item-kNN better"


# ---------------------------------------------------------------- command line


def test_unknown_model_and_bad_jobs_are_argparse_errors_naming_the_flag(capsys):
    benchmark = load_benchmark()
    with pytest.raises(SystemExit) as stop:
        benchmark.parse_args(["--models", "NoSuchModel"])
    assert stop.value.code == 2
    assert "unknown model 'NoSuchModel'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        benchmark.parse_args(["--jobs", "0"])
    assert stop.value.code == 2 and "--jobs" in capsys.readouterr().err


def test_models_accept_folder_and_model_names_in_table_order():
    benchmark = load_benchmark()
    args = benchmark.parse_args(["--models", "ease", "VAE-PyTorch", "autorec", "deeprec"])
    assert [m.folder for m in args.models] == ["AutoRec-TensorFlow", "NVIDIA-DeepRec-TensorFlow",
                                               "VAE-PyTorch", "ESAE-PyTorch"]
    assert [m.folder for m in benchmark.parse_args([]).models] == [
        m.folder for m in benchmark.MODELS]


# ---------------------------------------------------------------- synthetic data


def test_synthetic_ratings_have_the_asked_shape_and_a_popularity_skew(tmp_path):
    """--make-synthetic: exactly the asked users, movies and ratings, no repeated pair, at
    least 20 ratings per user, half stars, rows by user then time, a few movies holding
    many ratings (popularity skew), the same file for the same seed; a shape that cannot
    hold the ratings is one error line."""
    import pandas as pd
    path = tmp_path / "synthetic.csv"
    done = subprocess.run([sys.executable, str(SCRIPT), "--make-synthetic", str(path),
                           "--synthetic-shape", "3000,900,120000"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert path.read_text().startswith("userId,movieId,rating,timestamp\n")
    frame = pd.read_csv(path)
    assert len(frame) == 120_000
    assert frame.userId.nunique() == 3000 and frame.movieId.nunique() == 900
    assert not frame.duplicated(["userId", "movieId"]).any()
    assert frame.groupby("userId").size().min() >= 20
    assert set(frame.rating.unique()) <= {x / 2 for x in range(1, 11)}
    assert (frame.rating >= 4).mean() == pytest.approx(0.50, abs=0.02)  # ML-20M: about half
    keys = list(zip(frame.userId, frame.timestamp))
    assert keys == sorted(keys)
    per_movie = np.sort(frame.groupby("movieId").size().to_numpy())[::-1]
    assert per_movie[:9].sum() > 0.06 * len(frame)  # top 1% of movies: over 6% of ratings
    again = tmp_path / "again.csv"
    subprocess.run([sys.executable, str(SCRIPT), "--make-synthetic", str(again),
                    "--synthetic-shape", "3000,900,120000"], check=True, capture_output=True,
                   timeout=120)
    assert again.read_bytes() == path.read_bytes()
    bad = subprocess.run([sys.executable, str(SCRIPT), "--make-synthetic", str(path),
                          "--synthetic-shape", "3000,30,120000"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "--synthetic-shape" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
