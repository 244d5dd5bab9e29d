"""The run infrastructure of every model folder (runs.py and its use in main.py), end to end.

Per folder, one small run with an offline Comet archive is the base of these checks:
- the archive holds the run's tags, its name, epoch-stamped per-epoch metrics under the
  shared names, config.json, results.json, the test table, (top-N) the NDCG@K and Recall@K
  curves, and with --comet-log-model the checkpoint;
- that run resumes on this CPU machine though its config.json says it ran on CUDA;
- a run folder without a checkpoint (interrupted before its first evaluation) resumes from
  epoch 1 with one message;
and, without a run: --comet online without an API key and --device cuda without a GPU are
refused before anything is written; --lr inf (ESAE: --lam inf) is an argparse error.
"""
import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from conftest import (REPO, RATING_FOLDERS, TOP_N_FOLDERS, planted_rating_rows,
                      planted_top_n_rows, run_main, write_ratings)

ALL_FOLDERS = TOP_N_FOLDERS + RATING_FOLDERS
TRAINING_FOLDERS = tuple(f for f in ALL_FOLDERS if f != "ESAE-PyTorch")  # those with epochs
MODEL_NAMES = {"ESAE-PyTorch": "EASE", "VAE-PyTorch": "Mult-VAE", "CDAE-PyTorch": "CDAE",
               "SVAE-PyTorch": "SVAE", "AutoRec-TensorFlow": "AutoRec",
               "NVIDIA-DeepRec-TensorFlow": "DeepRec"}
SMALL = {
    "ESAE-PyTorch": ("--heldout-users", "200", "--lam", "100"),
    "VAE-PyTorch": ("--heldout-users", "200", "--batch-size", "100", "--lr", "3e-3"),
    "CDAE-PyTorch": ("--heldout-users", "200", "--eval-every", "1", "--fold-in-steps", "5"),
    "SVAE-PyTorch": ("--heldout-users", "200", "--embed-dim", "16", "--rnn-dim", "16",
                     "--hidden-dim", "16", "--latent-dim", "8", "--batch-size", "64",
                     "--loss-steps", "8"),
    "AutoRec-TensorFlow": ("--hidden", "40", "--batch-size", "16", "--lr", "0.01",
                           "--lam", "10"),
    "NVIDIA-DeepRec-TensorFlow": ("--hidden", "64,32", "--dropout", "0.5", "--batch-size",
                                  "16", "--lr", "0.003"),
}
SEED = "3"


def data_dir(folder, root):
    """A planted ratings file of the folder's protocol, in root/data."""
    rows = planted_rating_rows() if folder in RATING_FOLDERS else planted_top_n_rows()
    return write_ratings(root / "data" / "ratings.dat", *rows).parent


def run_isolated(folder, home, *args):
    """run_main with HOME=home and no COMET_* variables: no Comet API key anywhere."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMET_")}
    env.update(HOME=str(home), PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, str(REPO / folder / "main.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=600, env=env, cwd=REPO)


@pytest.fixture(scope="module", params=ALL_FOLDERS)
def base_run(request, tmp_path_factory):
    """(folder, data folder, run folder, process): two epochs (ESAE: one lambda), seed 3,
    an offline Comet archive with the checkpoint logged."""
    folder = request.param
    root = tmp_path_factory.mktemp(folder)
    data = data_dir(folder, root)
    run_dir = root / "run"
    epochs = () if folder == "ESAE-PyTorch" else ("--epochs", "2")
    done = run_main(folder, "--data-dir", data, "--out-dir", run_dir, "--seed", SEED, *epochs,
                    *SMALL[folder], "--comet", "offline", "--comet-log-model", "--quiet")
    assert done.returncode == 0, done.stderr
    return folder, data, run_dir, done


def comet_archive(run_dir):
    """(experiment.json, [payloads of messages.json]) of the run's offline archive."""
    archives = list(run_dir.glob("*.zip"))
    assert len(archives) == 1, archives
    with zipfile.ZipFile(archives[0]) as archive:
        experiment = json.loads(archive.read("experiment.json"))
        messages = [json.loads(line)["payload"]
                    for line in archive.read("messages.json").decode().splitlines()]
    return experiment, messages


# ---------------------------------------------------------------- CometML


def test_comet_archive_holds_tags_name_epochs_table_curves_and_assets(base_run):
    folder, _, run_dir, done = base_run
    model_name = MODEL_NAMES[folder]
    top_n = folder in TOP_N_FOLDERS
    experiment, messages = comet_archive(run_dir)
    assert "comet upload" in done.stdout
    assert experiment["project_name"] == "autoencoders-movielens1m"
    holdout = "random"
    assert set(experiment["tags"]) >= {model_name, folder, "protocol-" + ("B" if top_n else "A"),
                                       f"holdout-{holdout}", "movielens-1m", f"seed-{SEED}"}
    others = {m["key"]: m["value"] for m in messages if "key" in m}
    assert others["Name"] == f"{model_name} {holdout} seed {SEED}"
    assert others["model"] == model_name and others["holdout"] == holdout

    metrics = [m["metric"] for m in messages if "metric" in m]
    names = {m["metricName"] for m in metrics}
    selection = "ndcg@100" if top_n else "rmse"
    assert {f"val_{selection}", f"test_{selection}", "wall_seconds"} <= names
    if folder != "ESAE-PyTorch":
        assert "best_epoch" in names
        per_epoch = [m for m in metrics
                     if m["metricName"] in ("train_loss", f"val_{selection}")]
        assert len(per_epoch) == 4  # two epochs, each with a training loss and a validation
        assert all(m["epoch"] is not None and m["epoch"] == m["step"] for m in per_epoch)
        assert sorted(m["epoch"] for m in per_epoch) == [1, 1, 2, 2]

    uploads = [m for m in messages if "upload_type" in m]
    files = {(m["upload_type"], m["additional_params"]["fileName"]) for m in uploads}
    assert {("asset", "config.json"), ("asset", "results.json"),
            ("asset", "test_metrics.csv")} <= files
    curves = {name for kind, name in files if kind == "curve"}
    assert curves == ({"test_ndcg_at_k", "test_recall_at_k"} if top_n else set())
    assert any(kind == "model-element" for kind, _ in files)  # --comet-log-model


def test_comet_test_table_and_curve_hold_the_test_metrics(base_run):
    folder, _, run_dir, _ = base_run
    test = json.loads((run_dir / "results.json").read_text())["test"]
    with zipfile.ZipFile(next(run_dir.glob("*.zip"))) as archive:
        _, messages = comet_archive(run_dir)
        uploads = {m["additional_params"]["fileName"]: m for m in messages
                   if "upload_type" in m}
        table = archive.read(os.path.basename(uploads["test_metrics.csv"]["file_path"]))
        rows = dict(line.split(",", 1) for line in table.decode().splitlines()[1:])
        assert {name: float(value) for name, value in rows.items()} == \
            pytest.approx({name: float(value) for name, value in test.items()})
        if folder in TOP_N_FOLDERS:
            curve = json.loads(archive.read(os.path.basename(
                uploads["test_ndcg_at_k"]["file_path"])))
            ks = sorted(int(name.split("@")[1]) for name in test if name.startswith("ndcg@"))
            assert curve["x"] == ks and curve["y"] == [test[f"ndcg@{k}"] for k in ks]


# ---------------------------------------------------------------- resume


def resume_copy(base_run, tmp_path, name):
    folder, data, run_dir, _ = base_run
    if folder == "ESAE-PyTorch":
        pytest.skip("EASE is solved in closed form: no epochs, no --resume")
    copy = tmp_path / name
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("*.zip"))
    return folder, data, copy


def epochs_of(run_dir):
    return [json.loads(line)["epoch"]
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_run_made_on_cuda_resumes_on_this_machine(base_run, tmp_path):
    folder, data, run_dir = resume_copy(base_run, tmp_path, "cuda-run")
    config = json.loads((run_dir / "config.json").read_text())
    if "args" in config:  # the TensorFlow folders keep their flags under "args"
        config["args"]["device"] = "cuda"
        config.update(device="cuda", device_used="/GPU:0")
    else:
        config.update(device="cuda", device_used="cuda")
    (run_dir / "config.json").write_text(json.dumps(config))
    done = run_main(folder, "--resume", run_dir, "--epochs", "3", "--comet", "off", "--quiet")
    assert done.returncode == 0, done.stderr
    assert f"resuming {run_dir} after epoch 2" in done.stdout
    assert epochs_of(run_dir) == [1, 2, 3]
    assert (run_dir / "results.json").is_file()
    config = json.loads((run_dir / "config.json").read_text())
    flags = config.get("args", config)
    assert flags["device"] == "auto" and flags["epochs"] == 3  # this call's, now recorded
    assert "cpu" in config["device_used"].lower()


def test_a_run_folder_without_checkpoint_starts_at_epoch_one(base_run, tmp_path):
    folder, data, run_dir = resume_copy(base_run, tmp_path, "no-checkpoint")
    for name in ("last.pt", "best.pt", "train_state.json", "checkpoints", "results.json"):
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    done = run_main(folder, "--resume", run_dir, "--comet", "off", "--quiet")
    assert done.returncode == 0, done.stderr
    said = [line for line in done.stdout.splitlines() if "starting at epoch 1" in line]
    assert said == [f"{run_dir} has no checkpoint yet (no evaluation had finished): "
                    f"starting at epoch 1"]
    assert "resuming" not in done.stdout
    assert epochs_of(run_dir) == [1, 2]
    assert (run_dir / "results.json").is_file()


# ---------------------------------------------------------------- refused before writing


@pytest.mark.parametrize("folder", ALL_FOLDERS)
def test_comet_online_without_a_key_leaves_no_run_folder(folder, tmp_path):
    data = data_dir(folder, tmp_path)
    done = run_isolated(folder, tmp_path, "--data-dir", data, "--out-dir", tmp_path / "run",
                        *SMALL[folder], "--comet", "online", "--quiet")
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--comet online" in errors[0], done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()


def gpu_present():
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


@pytest.mark.skipif(gpu_present(), reason="this machine has a GPU")
@pytest.mark.parametrize("folder", ALL_FOLDERS)
def test_device_cuda_without_a_gpu_leaves_no_run_folder(folder, tmp_path):
    data = data_dir(folder, tmp_path)
    done = run_main(folder, "--data-dir", data, "--out-dir", tmp_path / "run", *SMALL[folder],
                    "--device", "cuda", "--comet", "off", "--quiet")
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--device cuda" in errors[0], done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("folder", ALL_FOLDERS)
@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_infinite_learning_rate_is_an_argparse_error(folder, value, tmp_path):
    flag = "--lam" if folder == "ESAE-PyTorch" else "--lr"  # EASE has no learning rate
    done = run_main(folder, f"{flag}={value}", "--out-dir", tmp_path / "run", "--comet", "off")
    assert done.returncode == 2
    assert f"error: argument {flag}: must be a positive finite number, not {value}" in \
        done.stderr
    assert not (tmp_path / "run").exists()
