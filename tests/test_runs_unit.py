"""runs.py in-process, one function at a time: fast enough for mutation testing
(mutation/runs.toml), where tests/test_runs.py starts a main.py subprocess per check.

One copy is loaded (ESAE-PyTorch/runs.py; tests/test_consistency.py keeps the others
byte-identical). Expected values are worked by hand. CometML is replaced by a fake
`comet_ml` module that records every call, except in the two tests of comet_mode against
the real package (HOME, the working directory and COMET_API_KEY set by the test, so that no
~/.comet.config of the machine's user is read).
"""
import argparse
import json
import re
import resource
import sys
import types
from pathlib import Path

import pytest

from conftest import load_module

runs = None  # loaded afresh by the fixture below


@pytest.fixture(autouse=True, scope="module")
def load_runs():
    """Load runs.py once per pytest run, not once per process: mutation/exec_in_process.py
    runs pytest many times in one process, and pytest keeps this test module imported, so
    a copy loaded at import time would be the first mutant's for every later one."""
    global runs
    runs = load_module("ESAE-PyTorch", "runs")


# ---------------------------------------------------------------- validators


def refused(validator, text):
    with pytest.raises(argparse.ArgumentTypeError) as error:
        validator(text)
    return str(error.value)


def test_positive_int():
    assert runs.positive_int("1") == 1
    assert runs.positive_int("600") == 600
    for text in ("0", "-1"):
        assert refused(runs.positive_int, text) == f"must be a positive integer, not {text}"
    with pytest.raises(ValueError):
        runs.positive_int("1.5")


def test_non_negative_int():
    assert runs.non_negative_int("0") == 0
    assert runs.non_negative_int("4") == 4
    assert refused(runs.non_negative_int, "-1") == "must be zero or more, not -1"


def test_positive_float():
    assert runs.positive_float("0.5") == 0.5
    assert runs.positive_float("1e-300") == 1e-300
    assert runs.positive_float("1e308") == 1e308
    for text in ("0", "-0.5", "-1", "inf", "nan", "-inf"):
        assert refused(runs.positive_float, text) == \
            f"must be a positive finite number, not {text}"


def test_non_negative_float():
    assert runs.non_negative_float("0") == 0.0
    assert runs.non_negative_float("0.5") == 0.5
    assert runs.non_negative_float("1e308") == 1e308
    for text in ("-1e-300", "-0.5", "-1", "inf", "nan"):
        assert refused(runs.non_negative_float, text) == \
            f"must be a finite number >= 0, not {text}"


def test_dropout_rate():
    for text, value in (("0", 0.0), ("0.5", 0.5), ("0.999", 0.999)):
        assert runs.dropout_rate(text) == value
    for text in ("1", "1.5", "-0.5", "-1", "nan", "inf"):
        assert refused(runs.dropout_rate, text) == f"must be in [0, 1), not {text}"


def test_decay_factor():
    for text, value in (("1", 1.0), ("0.5", 0.5), ("1e-9", 1e-9)):
        assert runs.decay_factor(text) == value
    for text in ("0", "-0.5", "-1", "1.0000001", "1.5", "2", "nan", "inf"):
        assert refused(runs.decay_factor, text) == f"must be in (0, 1], not {text}"


def test_positive_int_list():
    assert runs.positive_int_list("10,20,50,100") == [10, 20, 50, 100]
    assert runs.positive_int_list("1") == [1]
    assert refused(runs.positive_int_list, "10,x") == \
        "must be comma-separated integers, not 10,x"
    assert refused(runs.positive_int_list, "1.5") == \
        "must be comma-separated integers, not 1.5"
    for text in ("5,0", "0", "3,-1"):
        assert refused(runs.positive_int_list, text) == \
            f"every value must be positive, not {text}"


def test_positive_float_list():
    assert runs.positive_float_list("0.5,2") == [0.5, 2.0]
    assert runs.positive_float_list("3") == [3.0]
    assert refused(runs.positive_float_list, "1,0") == \
        "must be a positive finite number, not 0"
    assert refused(runs.positive_float_list, "1,nan") == \
        "must be a positive finite number, not nan"


# ---------------------------------------------------------------- command line


def make_parser(resume=True, default_data_dir=Path("ml-1m")):
    """The flags of a training main.py: data, Protocol B, run control and a few settings."""
    parser = argparse.ArgumentParser(prog="main.py")
    runs.add_data_arguments(parser, "ESAE-PyTorch", default_data_dir)
    runs.add_top_n_arguments(parser, (10, 20, 50, 100))
    runs.add_run_arguments(parser, resume=resume)
    parser.add_argument("--epochs", type=runs.positive_int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--lr", type=runs.positive_float, default=0.001)
    parser.add_argument("--threads", type=runs.positive_int)
    parser.add_argument("--stop-after", type=runs.positive_int)
    return parser


def test_argument_defaults():
    parser = make_parser()
    args = runs.resolve_data_arguments(parser, parser.parse_args([]))
    assert vars(args) == {
        "dataset": "ml-1m", "ratings_file": None, "format": None,
        "data_dir": Path("ml-1m"), "out_dir": None, "no_download": False,
        "holdout": "random", "min_rating": 4, "heldout_users": 600, "ks": [10, 20, 50, 100],
        "device": "auto", "resume": None, "comet": "auto", "comet_log_model": False,
        "quiet": False, "epochs": 100, "seed": 1, "lr": 0.001, "threads": None,
        "stop_after": None}
    assert type(args.ks) is list


def test_argument_values():
    args = make_parser().parse_args([
        "--data-dir", "d", "--out-dir", "o", "--no-download", "--holdout", "temporal",
        "--min-rating", "0", "--heldout-users", "5", "--ks", "3,7", "--device", "cpu",
        "--resume", "r", "--comet", "off", "--comet-log-model", "--quiet"])
    assert (args.data_dir, args.out_dir, args.no_download) == (Path("d"), Path("o"), True)
    assert (args.holdout, args.min_rating, args.heldout_users, args.ks) == \
        ("temporal", 0, 5, [3, 7])
    assert (args.device, args.resume, args.comet, args.comet_log_model, args.quiet) == \
        ("cpu", Path("r"), "off", True, True)


def test_run_arguments_without_resume():
    parser = argparse.ArgumentParser()
    runs.add_run_arguments(parser)  # resume=True is the default
    assert parser.parse_args([]).resume is None
    parser = argparse.ArgumentParser()
    runs.add_run_arguments(parser, resume=False)
    assert not hasattr(parser.parse_args([]), "resume")
    assert "--resume" not in parser.format_help()


@pytest.mark.parametrize("argv", [
    ["--holdout", "latest"], ["--min-rating", "-1"], ["--heldout-users", "0"],
    ["--ks", "10,0"], ["--device", "tpu"], ["--comet", "on"], ["--lr", "inf"],
    ["--lr", "nan"]])
def test_argument_errors(argv, capsys):
    with pytest.raises(SystemExit) as stop:
        make_parser().parse_args(argv)
    assert stop.value.code == 2
    assert argv[1] in capsys.readouterr().err


def test_data_arguments_help_names_the_folder():
    assert "runs/ESAE-PyTorch/<timestamp>/" in " ".join(make_parser().format_help().split())


# ---------------------------------------------------------------- --resume

SAVED = {"data_dir": "/saved/data", "out_dir": "/saved/out", "no_download": True,
         "holdout": "temporal", "min_rating": 3, "heldout_users": 100, "ks": [5, 10],
         "device": "cuda", "resume": "/elsewhere", "comet": "online",
         "comet_log_model": True, "quiet": True, "epochs": 50, "seed": 7, "lr": 0.01,
         "threads": 4, "stop_after": 3}


def saved_run(tmp_path, config):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(config))
    return run


def test_without_resume_the_arguments_are_parsed_as_given(tmp_path):
    args = runs.parse_with_resume(make_parser(), ["--seed", "3"])
    parser = make_parser()
    assert vars(args) == vars(runs.resolve_data_arguments(parser,
                                                          parser.parse_args(["--seed", "3"])))
    args = runs.parse_with_resume(make_parser(resume=False), ["--seed", "3"])
    assert args.seed == 3 and not hasattr(args, "resume")


@pytest.mark.parametrize("nested", [False, True], ids=["flat", "args"])
def test_resume_restores_the_saved_flags(tmp_path, nested):
    run = saved_run(tmp_path, {"args": SAVED, "device_used": "cuda"} if nested else SAVED)
    args = runs.parse_with_resume(make_parser(), ["--resume", str(run)])
    assert vars(args) == {
        # from config.json
        "holdout": "temporal", "min_rating": 3, "heldout_users": 100, "ks": [5, 10],
        "seed": 7, "lr": 0.01, "epochs": 50, "data_dir": Path("/saved/data"),
        # a run saved before --dataset: ML-1M, as it was then
        "dataset": "ml-1m", "ratings_file": None, "format": None,
        # run control: this call's value, here its default
        "resume": run, "out_dir": run, "device": "auto", "comet": "auto",
        "comet_log_model": False, "quiet": False, "threads": None, "no_download": False,
        "stop_after": None}


def test_resume_takes_the_flags_that_may_change(tmp_path):
    run = saved_run(tmp_path, SAVED)
    args = runs.parse_with_resume(make_parser(), [
        "--resume", str(run), "--epochs", "80", "--data-dir", "new", "--device", "cpu",
        "--comet", "off", "--comet-log-model", "--quiet", "--threads", "2", "--no-download",
        "--stop-after", "1"])
    assert (args.epochs, args.data_dir, args.out_dir, args.device, args.comet) == \
        (80, Path("new"), run, "cpu", "off")
    assert (args.comet_log_model, args.quiet, args.threads, args.no_download,
            args.stop_after) == (True, True, 2, True, 1)
    assert (args.seed, args.lr, args.holdout) == (7, 0.01, "temporal")


def test_resume_keeps_the_default_of_a_flag_the_config_lacks(tmp_path):
    run = saved_run(tmp_path, {k: v for k, v in SAVED.items() if k not in ("lr", "epochs")})
    args = runs.parse_with_resume(make_parser(), ["--resume", str(run)])
    assert (args.lr, args.epochs, args.seed) == (0.001, 100, 7)


def test_resume_makes_the_saved_data_dir_a_path(tmp_path):
    run = saved_run(tmp_path, SAVED)
    args = runs.parse_with_resume(make_parser(), ["--resume", str(run)])
    assert isinstance(args.data_dir, Path) and args.data_dir == Path("/saved/data")


@pytest.mark.parametrize("argv, flags", [
    (["--seed", "3"], "--seed"),
    (["--lr", "1", "--heldout-users", "5"], "--heldout-users, --lr"),
    (["--holdout", "random"], "--holdout"),  # given, even with the default value
])
def test_resume_refuses_a_flag_that_may_not_change(tmp_path, capsys, argv, flags):
    run = saved_run(tmp_path, SAVED)
    parser = make_parser()
    with pytest.raises(SystemExit) as stop:
        runs.parse_with_resume(parser, ["--resume", str(run), *argv])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().endswith(
        f"error: --resume takes the run's settings from its config.json; {flags} cannot "
        f"change (only --epochs, --data-dir, --device, --comet, --comet-log-model, "
        f"--quiet, --threads, --no-download, --stop-after)")
    # the defaults the parser had are back
    assert vars(parser.parse_args([])) == vars(make_parser().parse_args([]))


def test_resume_puts_the_defaults_back(tmp_path):
    run = saved_run(tmp_path, SAVED)
    parser = make_parser()
    runs.parse_with_resume(parser, ["--resume", str(run)])
    assert vars(parser.parse_args([])) == vars(make_parser().parse_args([]))


def test_resume_without_config_json_is_an_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        runs.parse_with_resume(make_parser(), ["--resume", str(tmp_path)])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().endswith(
        f"error: --resume {tmp_path}: no config.json there")


def test_config_values_makes_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = argparse.Namespace(data_dir=Path("d"), out_dir=None, ks=[5], lr=0.5, name="x")
    assert runs.config_values(args) == {"data_dir": str(tmp_path.resolve() / "d"),
                                        "out_dir": None, "ks": [5], "lr": 0.5, "name": "x"}


def test_saved_config(tmp_path):
    run = saved_run(tmp_path, {"args": {"seed": 1}, "data_sha256": "ab"})
    assert runs.saved_config(run) == {"args": {"seed": 1}, "data_sha256": "ab"}
    assert runs.saved_config(str(run)) == {"args": {"seed": 1}, "data_sha256": "ab"}


def test_check_same_data(tmp_path):
    run = saved_run(tmp_path, {"seed": 1, "data_sha256": "abc"})
    assert runs.check_same_data(run, "abc", "ratings.dat") is None
    with pytest.raises(SystemExit) as stop:
        runs.check_same_data(run, "def", "ml-1m/ratings.dat")
    assert stop.value.code == (f"error: --resume: ml-1m/ratings.dat differs from the file "
                               f"the run in {run} was trained on (sha256 abc)")
    (run / "config.json").write_text(json.dumps({"seed": 1}))  # an older run: no checksum
    assert runs.check_same_data(run, "def", "ratings.dat") is None


def test_starting_message():
    assert runs.starting_message("runs/x", 0) == \
        "runs/x has no checkpoint yet (no evaluation had finished): starting at epoch 1"
    assert runs.starting_message("runs/x", 1) == "resuming runs/x after epoch 1"
    assert runs.starting_message("runs/x", 12) == "resuming runs/x after epoch 12"


# ---------------------------------------------------------------- run folder


def test_make_run_dir_default_location(tmp_path):
    folder = tmp_path / "repo" / "ESAE-PyTorch"
    first = runs.make_run_dir(None, folder)
    second = runs.make_run_dir(None, str(folder))
    for run in (first, second):
        assert run.is_dir() and run.parent == tmp_path / "repo" / "runs" / "ESAE-PyTorch"
        assert re.fullmatch(r"\d{8}-\d{6}-\d{6}", run.name)
    assert first != second


def test_make_run_dir_explicit_folder(tmp_path):
    run = runs.make_run_dir(str(tmp_path / "a" / "b"), "ignored/ESAE-PyTorch")
    assert run == tmp_path / "a" / "b" and isinstance(run, Path) and run.is_dir()
    assert runs.make_run_dir(run, "ignored") == run  # it may exist already
    assert not Path("ignored").exists()


def test_write_atomic_replaces_through_a_hidden_temporary(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("old")
    seen = []

    def write(tmp):
        seen.append((tmp, path.read_text()))
        tmp.write_text("new")

    runs.write_atomic(path, write)
    assert seen == [(tmp_path / ".results.json.tmp", "old")]
    assert path.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_write_json(tmp_path):
    path = tmp_path / "config.json"
    runs.write_json(path, {"a": 1, "b": [1, 2]})
    assert path.read_text() == '{\n  "a": 1,\n  "b": [\n    1,\n    2\n  ]\n}\n'
    runs.write_json(path, {"c": None})
    assert path.read_text() == '{\n  "c": null\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_append_and_rewrite_jsonl(tmp_path):
    path = tmp_path / "history.jsonl"
    runs.append_jsonl(path, {"epoch": 1, "loss": 0.5})
    runs.append_jsonl(path, {"epoch": 2})
    runs.append_jsonl(path, {"epoch": 3})
    assert path.read_text() == '{"epoch": 1, "loss": 0.5}\n{"epoch": 2}\n{"epoch": 3}\n'
    runs.rewrite_jsonl(path, [{"epoch": 1, "loss": 0.5}, {"epoch": 2}])
    assert path.read_text() == '{"epoch": 1, "loss": 0.5}\n{"epoch": 2}\n'
    runs.rewrite_jsonl(path, [])
    assert path.read_text() == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.jsonl"]


def test_peak_memory_mb():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    value = runs.peak_memory_mb()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert before / 1024 <= value <= after / 1024
    assert 1 < value < 1e6


def test_summary_line():
    values = {"ndcg@100": 0.25, "precision@10": 0.9, "recall@20": 0.5,
              "precision@20": 0.123456, "ndcg@10": 0.1}
    assert runs.summary_line("test", values) == \
        "test: precision@20 0.1235, recall@20 0.5000, ndcg@100 0.2500"
    assert runs.summary_line("validation", {"rmse": 0.87654321, "mae": 0.7}) == \
        "validation: rmse 0.8765"
    assert runs.summary_line("x", {}) == "x: "


# ---------------------------------------------------------------- CometML


class FakeExperiment:
    """Records every method call as (name, args, kwargs); `url` only when given."""

    def __init__(self, *args, **kwargs):
        self.calls = [("__init__", args, kwargs)]

    def __getattr__(self, name):
        if name.startswith("__") or name == "url":
            raise AttributeError(name)
        return lambda *args, **kwargs: self.calls.append((name, args, kwargs))


class FakeOnline(FakeExperiment):
    url = "https://www.comet.com/x/y/z"


def fake_comet(monkeypatch, key):
    """A comet_ml module whose configuration holds `key` (None: no API key)."""
    module = types.ModuleType("comet_ml")
    asked = []

    class Config:
        def get_string(self, value, name):
            asked.append((value, name))
            return key

    module.get_config = Config
    module.Experiment = FakeOnline
    module.OfflineExperiment = FakeExperiment
    module.asked = asked
    monkeypatch.setitem(sys.modules, "comet_ml", module)
    monkeypatch.delenv("COMET_ERROR_TRACKING_ENABLE", raising=False)
    monkeypatch.delenv("COMET_PROJECT_NAME", raising=False)
    return module


def test_comet_mode_off_needs_no_comet_ml(monkeypatch):
    monkeypatch.setitem(sys.modules, "comet_ml", None)  # importing it would fail
    monkeypatch.delenv("COMET_ERROR_TRACKING_ENABLE", raising=False)
    assert runs.comet_mode("off") == "off"
    assert "COMET_ERROR_TRACKING_ENABLE" not in runs.os.environ


@pytest.mark.parametrize("key, mode, expected", [
    ("k", "auto", "online"), ("k", "online", "online"), ("k", "offline", "offline"),
    (None, "auto", "offline"), (None, "offline", "offline")])
def test_comet_mode(monkeypatch, key, mode, expected):
    comet = fake_comet(monkeypatch, key)
    assert runs.comet_mode(mode) == expected
    assert comet.asked == [(None, "comet.api_key")]
    assert runs.os.environ["COMET_ERROR_TRACKING_ENABLE"] == "false"


def test_comet_mode_keeps_an_error_tracking_setting(monkeypatch):
    fake_comet(monkeypatch, None)
    monkeypatch.setenv("COMET_ERROR_TRACKING_ENABLE", "true")
    assert runs.comet_mode("auto") == "offline"
    assert runs.os.environ["COMET_ERROR_TRACKING_ENABLE"] == "true"


def test_comet_online_without_a_key_is_refused(monkeypatch):
    fake_comet(monkeypatch, None)
    with pytest.raises(SystemExit) as stop:
        runs.comet_mode("online")
    assert stop.value.code == ("error: --comet online needs an API key: set COMET_API_KEY "
                               "or write ~/.comet.config (see README.md)")


@pytest.fixture
def no_comet_config(tmp_path, monkeypatch):
    """The real comet_ml, reading no configuration file of this machine's user."""
    pytest.importorskip("comet_ml")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    for name in ("COMET_API_KEY", "COMET_CONFIG", "COMET_ERROR_TRACKING_ENABLE"):
        monkeypatch.delenv(name, raising=False)


def test_real_comet_mode_without_a_key(no_comet_config):
    assert runs.comet_mode("auto") == "offline"
    with pytest.raises(SystemExit) as stop:
        runs.comet_mode("online")
    assert "--comet online needs an API key" in stop.value.code


def test_real_comet_mode_with_a_key(no_comet_config, monkeypatch):
    monkeypatch.setenv("COMET_API_KEY", "not-a-real-key")
    assert runs.comet_mode("auto") == "online"
    assert runs.comet_mode("online") == "online"
    assert runs.comet_mode("offline") == "offline"


def test_run_labels():
    name, tags, others = runs.run_labels("EASE", "ESAE-PyTorch", "B", "temporal", 98765)
    assert name == "EASE temporal seed 98765"
    assert tags == ["EASE", "ESAE-PyTorch", "protocol-B", "holdout-temporal",
                    "movielens-1m", "seed-98765"]
    assert others == {"model": "EASE", "folder": "ESAE-PyTorch", "protocol": "B",
                      "holdout": "temporal", "dataset": "movielens-1m", "seed": 98765}
    assert runs.COMET_PROJECT == "autoencoders-movielens1m"


SETTINGS = dict(project_name="autoencoders-movielens1m", log_code=False, parse_args=False,
                log_git_metadata=False, log_git_patch=False, auto_output_logging=False,
                display_summary_level=0)
LABELS = ("EASE random seed 1",  # run_labels("EASE", "ESAE-PyTorch", "B", "random", 1)
          ["EASE", "ESAE-PyTorch", "protocol-B", "holdout-random", "movielens-1m", "seed-1"],
          {"model": "EASE", "folder": "ESAE-PyTorch", "protocol": "B", "holdout": "random",
           "dataset": "movielens-1m", "seed": 1})


def test_start_comet_off(monkeypatch, tmp_path):
    fake_comet(monkeypatch, "k")
    assert runs.start_comet("off", tmp_path, {"lr": 1}, LABELS) is None


def test_start_comet_offline(monkeypatch, tmp_path):
    fake_comet(monkeypatch, None)
    (tmp_path / "config.json").write_text("{}")
    experiment = runs.start_comet("auto", tmp_path, {"lr": 0.5}, LABELS)
    assert type(experiment) is FakeExperiment
    assert experiment.calls == [
        ("__init__", (), dict(offline_directory=str(tmp_path), **SETTINGS)),
        ("set_name", ("EASE random seed 1",), {}),
        ("add_tags", (LABELS[1],), {}),
        ("log_others", (LABELS[2],), {}),
        ("log_parameters", ({"lr": 0.5},), {}),
        ("log_asset", (str(tmp_path / "config.json"),), {"file_name": "config.json"})]


def test_start_comet_online_without_config_json(monkeypatch, tmp_path):
    fake_comet(monkeypatch, "k")
    monkeypatch.setenv("COMET_PROJECT_NAME", "elsewhere")
    experiment = runs.start_comet("online", tmp_path, {}, LABELS)
    assert type(experiment) is FakeOnline
    assert experiment.calls == [
        ("__init__", (), {**SETTINGS, "project_name": "elsewhere"}),
        ("set_name", ("EASE random seed 1",), {}),
        ("add_tags", (LABELS[1],), {}),
        ("log_others", (LABELS[2],), {}),
        ("log_parameters", ({},), {})]


def test_log_epoch():
    runs.log_epoch(None, 1, {"train_loss": 0.5})  # Comet off: nothing to do
    experiment = FakeExperiment()
    runs.log_epoch(experiment, 3, {"train_loss": 0.5, "beta": 0.2})
    runs.log_epoch(experiment, 4, {"train_loss": 0.4}, {"ndcg@100": 0.3})
    assert experiment.calls[1:] == [
        ("log_metrics", ({"train_loss": 0.5, "beta": 0.2},), {"step": 3, "epoch": 3}),
        ("log_metrics", ({"train_loss": 0.4},), {"step": 4, "epoch": 4}),
        ("log_metrics", ({"ndcg@100": 0.3},), {"prefix": "val", "step": 4, "epoch": 4})]


TOP_N_RESULTS = {
    "model": "EASE", "wall_seconds": 12.5, "best_epoch": 3,
    "selected": {"lam": 500.0, "holdout": "random", "epochs": 4},
    "test": {"ndcg@100": 0.5, "ndcg@5": 0.1, "ndcg@20": 0.3, "recall@50": 0.4,
             "recall@10": 0.2, "precision@20": 0.05}}


def test_finish_run_top_n(tmp_path, capsys):
    experiment = FakeExperiment()
    (tmp_path / "b.zip").write_text("")
    (tmp_path / "a.zip").write_text("")
    runs.finish_run(experiment, tmp_path, TOP_N_RESULTS, tmp_path / "model.pt",
                    log_model=True)
    assert json.loads((tmp_path / "results.json").read_text()) == TOP_N_RESULTS
    test = TOP_N_RESULTS["test"]
    assert experiment.calls[1:] == [
        ("log_metrics", (test,), {"prefix": "test"}),
        ("log_metric", ("wall_seconds", 12.5), {}),
        ("log_metric", ("best_epoch", 3), {}),
        ("log_metric", ("selected_lam", 500.0), {}),
        ("log_metric", ("selected_epochs", 4), {}),
        ("log_table", ("test_metrics.csv", [["ndcg@100", 0.5], ["ndcg@20", 0.3],
                                            ["ndcg@5", 0.1], ["precision@20", 0.05],
                                            ["recall@10", 0.2], ["recall@50", 0.4]]),
         {"headers": ["metric", "value"]}),
        ("log_curve", ("test_ndcg_at_k",), {"x": [5, 20, 100], "y": [0.1, 0.3, 0.5]}),
        ("log_curve", ("test_recall_at_k",), {"x": [10, 50], "y": [0.2, 0.4]}),
        ("log_asset", (str(tmp_path / "results.json"),), {"file_name": "results.json"}),
        ("log_model", ("EASE", str(tmp_path / "model.pt")), {}),
        ("end", (), {})]
    assert capsys.readouterr().out == (
        f"Comet offline archive written; upload it with: comet upload {tmp_path / 'a.zip'}\n"
        f"Comet offline archive written; upload it with: comet upload {tmp_path / 'b.zip'}\n"
        f"results written to {tmp_path / 'results.json'}\n")


def test_finish_run_rating_without_best_epoch_or_model(tmp_path, capsys):
    results = {"model": "AutoRec", "wall_seconds": 2, "best_epoch": None,
               "test": {"rmse": 0.9}}
    for model_path, log_model in ((tmp_path / "m", False), (None, True)):
        experiment = FakeOnline()
        runs.finish_run(experiment, tmp_path, results, model_path, log_model=log_model)
        assert experiment.calls[1:] == [
            ("log_metrics", ({"rmse": 0.9},), {"prefix": "test"}),
            ("log_metric", ("wall_seconds", 2), {}),
            ("log_table", ("test_metrics.csv", [["rmse", 0.9]]),
             {"headers": ["metric", "value"]}),
            ("log_asset", (str(tmp_path / "results.json"),), {"file_name": "results.json"}),
            ("end", (), {})]
    assert capsys.readouterr().out == f"results written to {tmp_path / 'results.json'}\n" * 2


def test_finish_run_without_comet(tmp_path, capsys):
    runs.finish_run(None, tmp_path, {"test": {"rmse": 1.0}})
    assert json.loads((tmp_path / "results.json").read_text()) == {"test": {"rmse": 1.0}}
    assert capsys.readouterr().out == f"results written to {tmp_path / 'results.json'}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_finish_comet(tmp_path, capsys):
    runs.finish_comet(None, tmp_path)
    (tmp_path / "run.zip").write_text("")
    online = FakeOnline()
    runs.finish_comet(online, tmp_path)
    assert online.calls[1:] == [("end", (), {})]
    assert capsys.readouterr().out == ""
    no_url = FakeOnline()
    no_url.url = None  # an Experiment that never connected
    runs.finish_comet(no_url, tmp_path)
    assert no_url.calls[1:] == [("end", (), {})]
    assert capsys.readouterr().out == ("Comet offline archive written; upload it with: "
                                       f"comet upload {tmp_path / 'run.zip'}\n")


def test_run_control_and_may_change():
    assert runs.RUN_CONTROL == ("resume", "out_dir", "comet", "comet_log_model", "quiet",
                                "device", "threads", "no_download", "stop_after")
    assert runs.MAY_CHANGE == ("epochs", "data_dir")
    assert runs.DATASET == "movielens-1m"


# ---------------------------------------------------------------- mutation survivors


def fresh(text):
    """text as a new string object, as argparse hands over a command-line value (not the
    interned literal): `mode == "off"` must not become `mode is "off"`."""
    return "".join(list(text))


def test_comet_mode_compares_values_not_objects(monkeypatch):
    literal = "off"
    assert fresh("off") == literal and fresh("off") is not literal
    monkeypatch.setitem(sys.modules, "comet_ml", None)
    assert runs.comet_mode(fresh("off")) == "off"
    fake_comet(monkeypatch, None)
    with pytest.raises(SystemExit):
        runs.comet_mode(fresh("online"))


def test_check_same_data_refuses_a_checksum_sorting_before_the_saved_one(tmp_path):
    run = saved_run(tmp_path, {"data_sha256": "abc"})
    with pytest.raises(SystemExit):
        runs.check_same_data(run, "000", "ratings.dat")


def test_finish_run_logs_no_model_unless_asked(tmp_path, capsys):
    experiment = FakeExperiment()
    runs.finish_run(experiment, tmp_path, TOP_N_RESULTS, tmp_path / "model.pt")
    assert "log_model" not in [call[0] for call in experiment.calls]
    assert experiment.calls[-1] == ("end", (), {})
