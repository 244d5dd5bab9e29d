"""Cross-model consistency: the copies of data.py, metrics.py, runs.py, parallel.py and
tf_runs.py stay identical.

No model folder imports from another, so loading, splitting, metrics and the run
infrastructure (runs.py) exist in several copies. These tests fail on any one-line change to
one copy: the shared parts must match byte for byte, and every copy must give the same split
and the same numbers on the same input.
(The hand-worked values themselves are checked per copy in test_data_topn.py and
test_metrics_topn.py.) Also one behaviour every main.py shares: offline Comet runs send
nothing to Comet's error tracker.
"""
import ast
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp

from conftest import REPO, TOP_N_FOLDERS, RATING_FOLDERS, load_module

ALL_FOLDERS = RATING_FOLDERS + TOP_N_FOLDERS
FILES = ("main.py", "model.py", "data.py", "metrics.py", "runs.py", "README.md")
# The only additions a top-N copy may have after ESAE-PyTorch's file: (folder, name) ->
# the section marker that opens them. Anything else must be the reference verbatim.
TOP_N_EXTRAS = {("SVAE-PyTorch", "data"):
                "# ---------------------------------------------------------------- sequences"}
PROTOCOL_MARKER = "# ---------------------------------------------------------------- Protocol"


def source(folder, name):
    return (REPO / folder / f"{name}.py").read_text()


def without_docstring(text):
    """The file after its module docstring (which names the folder's own protocol)."""
    assert text.startswith('"""')
    return text[text.index('"""', 3) + 3:]


def loading_part(text):
    """Download and parsing code: everything between the docstring and the split section."""
    body = without_docstring(text)
    assert PROTOCOL_MARKER in body, "data.py lost its protocol section marker"
    return body[:body.index(PROTOCOL_MARKER)]


@pytest.mark.parametrize("folder", ALL_FOLDERS)
def test_every_model_folder_is_complete(folder):
    missing = [name for name in FILES if not (REPO / folder / name).is_file()]
    assert not missing, f"{folder} lacks {missing}"


@pytest.mark.parametrize("folder", [f for f in ALL_FOLDERS if f != "ESAE-PyTorch"])
def test_download_and_parsing_code_is_identical_everywhere(folder):
    reference = loading_part(source("ESAE-PyTorch", "data"))
    assert loading_part(source(folder, "data")) == reference


def top_level_names(text):
    """Names a module's top-level statements bind (functions, classes, assignments, imports)."""
    names = []
    for node in ast.parse(text).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names += [(alias.asname or alias.name).split(".")[0] for alias in node.names]
        else:
            names += [target.id for target in ast.walk(node)
                      if isinstance(target, ast.Name) and isinstance(target.ctx, ast.Store)]
    return names


@pytest.mark.parametrize("folder", [f for f in TOP_N_FOLDERS if f != "ESAE-PyTorch"])
@pytest.mark.parametrize("name", ["data", "metrics"])
def test_top_n_copies_are_the_reference_file(folder, name):
    """A top-N copy is ESAE-PyTorch's file verbatim. Only the copies in TOP_N_EXTRAS may
    go on after it, with one marked section of new functions: nothing there may bind a name
    again (an appended redefinition would silently replace the reference's code)."""
    reference, copy = source("ESAE-PyTorch", name), source(folder, name)
    marker = TOP_N_EXTRAS.get((folder, name))
    if marker is None:
        assert copy == reference
        return
    assert copy.startswith(reference)
    extra = copy[len(reference):]
    assert extra.lstrip("\n").startswith(marker), f"{folder}/{name}.py: unmarked additions"
    added = top_level_names(extra)
    assert all(isinstance(node, (ast.FunctionDef, ast.ClassDef))
               for node in ast.parse(extra).body), "only new functions and classes may follow"
    again = set(added) & set(top_level_names(reference))
    assert not again, f"{folder}/{name}.py redefines {sorted(again)}"
    assert len(added) == len(set(added)), f"{folder}/{name}.py defines a name twice"


@pytest.mark.parametrize("folder", [f for f in ALL_FOLDERS if f != "ESAE-PyTorch"])
def test_runs_copies_are_identical(folder):
    """runs.py, the run infrastructure, is one file in six copies: byte for byte the same."""
    assert source(folder, "runs") == source("ESAE-PyTorch", "runs")


@pytest.mark.parametrize("folder", ["CDAE-PyTorch", "SVAE-PyTorch"])
def test_parallel_copies_are_identical(folder):
    """parallel.py, training over several processes, is one file in the three folders that
    train with torchrun (VAE, CDAE, SVAE): byte for byte the same."""
    assert source(folder, "parallel") == source("VAE-PyTorch", "parallel")


def test_runs_imports_no_framework():
    imported = set()
    for node in ast.walk(ast.parse(source("ESAE-PyTorch", "runs"))):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module.split(".")[0])
    assert not imported & {"torch", "tensorflow", "numpy", "data", "metrics", "model"}


@pytest.mark.parametrize("folder", ALL_FOLDERS)
@pytest.mark.parametrize("name", ["main", "runs"])
def test_docstrings_and_help_cite_no_private_paths(folder, name):
    """Docstrings and help texts cite PROTOCOLS.md, never DESIGN.md, ../shared or an
    absolute path of some machine."""
    text = source(folder, name)
    for banned in ("DESIGN.md", "../shared", "/work/", "/home/", "/tmp/"):
        assert banned not in text, f"{folder}/{name}.py mentions {banned}"
    if name == "main":
        assert "PROTOCOLS.md" in text


@pytest.mark.parametrize("name", ["data", "metrics", "tf_runs"])
def test_rating_copies_are_identical(name):
    first, second = RATING_FOLDERS
    assert source(first, name) == source(second, name)


# ---------------------------------------------------------------- behaviour


def split_arrays(split):
    arrays = {"item_ids": split.item_ids, "train_users": split.train_user_ids,
              "train": split.train.toarray()}
    for name in ("validation", "test"):
        group = getattr(split, name)
        arrays[f"{name}_users"] = group.user_ids
        arrays[f"{name}_fold_in"] = group.fold_in.toarray()
        arrays[f"{name}_target"] = group.target.toarray()
        arrays[f"{name}_seqs"] = np.concatenate(group.fold_in_seqs)
    return arrays


@pytest.mark.parametrize("holdout", ["random", "temporal"])
def test_top_n_splits_are_identical(top_n_file, holdout):
    splits = {}
    for folder in TOP_N_FOLDERS:
        data = load_module(folder, "data")
        splits[folder] = split_arrays(data.split_top_n(data.load_ratings(top_n_file),
                                                       heldout_users=200, holdout=holdout))
    reference = splits.pop("ESAE-PyTorch")
    for folder, arrays in splits.items():
        for name, values in reference.items():
            assert np.array_equal(arrays[name], values), f"{folder}: {name} differs"


def test_top_n_metrics_are_identical():
    rng = np.random.RandomState(3)
    scores = rng.rand(80, 60)
    scores[:, :5] = 0.5  # ties
    fold_in = rng.rand(80, 60) < 0.15
    target = (rng.rand(80, 60) < 0.15) & ~fold_in
    fold_in, target = sp.csr_matrix(fold_in, dtype=np.float32), sp.csr_matrix(target,
                                                                              dtype=np.float32)
    results = {folder: load_module(folder, "metrics").ranking_metrics(scores, fold_in, target)
               for folder in TOP_N_FOLDERS}
    reference = results.pop("ESAE-PyTorch")
    for folder, values in results.items():
        assert values == reference, folder


def split_pairs(split):
    arrays = {"user_ids": split.user_ids, "item_ids": split.item_ids,
              "train": split.train.toarray()}
    for name in ("validation", "test"):
        pairs = getattr(split, name)
        arrays.update({f"{name}_{field}": getattr(pairs, field)
                       for field in ("users", "items", "ratings")})
    return arrays


def test_rating_splits_are_identical(rating_file):
    splits = {}
    for folder in RATING_FOLDERS:
        data = load_module(folder, "data")
        splits[folder] = split_pairs(data.split_ratings(data.load_ratings(rating_file)))
    first, second = RATING_FOLDERS
    for name, values in splits[first].items():
        assert np.array_equal(splits[second][name], values), name


def test_rating_metrics_are_identical(rating_file):
    data = load_module(RATING_FOLDERS[0], "data")
    split = data.split_ratings(data.load_ratings(rating_file))
    predictions = np.random.RandomState(5).uniform(0, 6, len(split.test))
    results = [load_module(folder, "metrics").rating_metrics(predictions, split.test, split.train)
               for folder in RATING_FOLDERS]
    assert results[0] == results[1]


# ---------------------------------------------------------------- CometML

COMET_PROBE = """
import sys
from pathlib import Path
import runs
labels = runs.run_labels("probe", "probe", "B", "random", 0)
experiment = runs.start_comet("offline", Path(sys.argv[1]), {}, labels)
from comet_ml.error_tracking import api
import sentry_sdk
print(api.enabled_in_config(), sentry_sdk.get_client().is_active())
experiment.end()
"""


@pytest.mark.parametrize("folder", ALL_FOLDERS)
def test_offline_comet_turns_off_comets_error_reports(folder, tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("COMET_API_KEY", "COMET_ERROR_TRACKING_ENABLE")}
    done = subprocess.run([sys.executable, "-c", COMET_PROBE, str(tmp_path)],
                          cwd=REPO / folder, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]  # tracker off in config, never started
    assert list(tmp_path.glob("*.zip"))  # the offline archive was still written
