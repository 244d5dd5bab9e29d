"""Shared test helpers: loading a model folder's modules under unique names, running a
folder's main.py in a subprocess, and synthetic MovieLens-format files with planted structure.

Module names repeat across folders (data, model, metrics), so nothing here touches sys.path:
load_module gives each file a unique name such as `ESAE_PyTorch_data`.
"""
import contextlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data" / "ml-1m"
TOP_N_FOLDERS = ("ESAE-PyTorch", "VAE-PyTorch", "CDAE-PyTorch", "SVAE-PyTorch")
RATING_FOLDERS = ("AutoRec-TensorFlow", "NVIDIA-DeepRec-TensorFlow")


@contextlib.contextmanager
def folder_imports(folder):
    """Let main.py import its siblings by plain name from its own folder, then put sys.path
    and sys.modules back as they were."""
    names = {path.stem for path in (REPO / folder).glob("*.py")}
    saved = {name: sys.modules.pop(name) for name in names if name in sys.modules}
    sys.path.insert(0, str(REPO / folder))
    try:
        yield
    finally:
        sys.path.remove(str(REPO / folder))
        for name in names:
            sys.modules.pop(name, None)
        sys.modules.update(saved)


def load_module(folder, name):
    """Import REPO/folder/name.py as a fresh module named `<folder>_<name>`."""
    path = REPO / folder / f"{name}.py"
    if not path.is_file():  # a missing file is a failure, never a skipped test
        pytest.fail(f"{folder}/{name}.py does not exist", pytrace=False)
    unique = f"{folder}_{name}".replace("-", "_")
    spec = importlib.util.spec_from_file_location(unique, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[unique] = module
    spec.loader.exec_module(module)
    return module


def run_main(folder, *args, timeout=600, cwd=None):
    """Run `python <folder>/main.py args...` in a subprocess; returns CompletedProcess."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("COMET_API_KEY", None)
    return subprocess.run([sys.executable, str(REPO / folder / "main.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=cwd or REPO)


def write_ratings(path, users, items, ratings, timestamps=None):
    """Write rows in the ratings.dat format (four fields, or three without timestamps)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = [users, items, ratings] + ([timestamps] if timestamps is not None else [])
    lines = ["::".join(str(int(v)) for v in row) for row in zip(*columns)]
    path.write_text("\n".join(lines) + "\n", encoding="latin-1")
    return path


def planted_top_n_rows(n_users=1500, n_clusters=10, items_per_cluster=12, seed=0):
    """Users who each like one or two item clusters, plus a few popular noise items.

    Targets of a held-out user lie mostly in the clusters of their fold-in items, so a model
    that learns item co-occurrence beats popularity ranking clearly.
    """
    rng = np.random.RandomState(seed)
    n_items = n_clusters * items_per_cluster
    users, items, ratings, times = [], [], [], []
    for user in range(1, n_users + 1):
        clusters = rng.choice(n_clusters, rng.randint(1, 3), replace=False)
        liked = np.concatenate([c * items_per_cluster + np.flatnonzero(
            rng.rand(items_per_cluster) < 0.7) for c in clusters])
        noise = rng.choice(n_items, 3, replace=False)
        chosen = np.unique(np.concatenate([liked, noise]))
        for t, item in enumerate(rng.permutation(chosen)):
            users.append(user)
            items.append(item + 1)
            ratings.append(rng.randint(4, 6) if item in liked else rng.randint(1, 4))
            times.append(1_000_000 + 1000 * user + t)
    return (np.array(users), np.array(items), np.array(ratings), np.array(times))


def planted_rating_rows(n_users=400, n_items=300, rank=3, density=0.25, seed=0):
    """A low-rank rating matrix on 1..5, a random `density` share of entries observed."""
    rng = np.random.RandomState(seed)
    u = rng.normal(size=(n_users, rank))
    v = rng.normal(size=(n_items, rank))
    full = np.clip(np.rint(3.2 + 0.9 * (u @ v.T) / np.sqrt(rank)), 1, 5)
    rows, cols = np.nonzero(rng.rand(n_users, n_items) < density)
    times = 1_000_000 + np.arange(len(rows))
    return rows + 1, cols + 1, full[rows, cols].astype(int), times


@pytest.fixture
def top_n_file(tmp_path):
    """A ratings.dat in tmp_path/data with planted cluster structure (1500 users)."""
    return write_ratings(tmp_path / "data" / "ratings.dat", *planted_top_n_rows())


@pytest.fixture
def rating_file(tmp_path):
    """A ratings.dat in tmp_path/data with a planted rank-3 rating matrix."""
    return write_ratings(tmp_path / "data" / "ratings.dat", *planted_rating_rows())


# ---------------------------------------------------------------- helpers added for issue #16


def load_main(folder):
    """Import REPO/folder/main.py in-process. main.py imports data, metrics and model by
    plain name: lend it this folder's copies (load_module) under those names while it loads,
    then put back whatever sys.modules held before. Its `main.model` etc. are the copies."""
    names = ["data", "metrics", "model"] + [name for name in ("runs", "parallel")
                                            if (REPO / folder / f"{name}.py").is_file()]
    saved = {name: sys.modules.get(name) for name in names}
    try:
        for name in names:  # runs.py, where there is one, may import the other three
            sys.modules[name] = load_module(folder, name)
        return load_module(folder, "main")
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def run_script(script, *args, timeout=600, cwd=None):
    """Run `python script args...` (any main.py, e.g. a copied one) like run_main."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("COMET_API_KEY", None)
    return subprocess.run([sys.executable, str(script), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)


def read_history(run_dir):
    """The records of run_dir/metrics.jsonl, in order."""
    import json
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text()
            .splitlines()]


def read_results(run_dir):
    import json
    return json.loads((Path(run_dir) / "results.json").read_text())


def keys_naming_test(record):
    """Every key of a (nested) metrics.jsonl record that names test metrics ("test",
    "test_ndcg@100", ...): metrics.jsonl holds the validation history only."""
    found = []
    for key, value in record.items():
        if str(key).lower().startswith("test"):
            found.append(key)
        if isinstance(value, dict):
            found += keys_naming_test(value)
    return found


def popularity_and_cooccurrence(metrics, split, held_out=None, ks=(10, 100)):
    """Ranking metrics of two baselines on held-out users (default: split.test) of a top-N
    split: training popularity, and plain item co-occurrence, scores = fold_in @ C with
    C = X^T X of the training matrix, zero diagonal. Returns (popularity, cooccurrence)."""
    held = split.test if held_out is None else held_out
    popularity = np.asarray(split.train.sum(axis=0)).ravel().astype(np.float64)
    cooccurrence = (split.train.T @ split.train).toarray().astype(np.float64)
    np.fill_diagonal(cooccurrence, 0)
    n = held.fold_in.shape[0]
    return (metrics.ranking_metrics(np.tile(popularity, (n, 1)), held.fold_in, held.target,
                                    list(ks)),
            metrics.ranking_metrics(np.asarray(held.fold_in @ cooccurrence), held.fold_in,
                                    held.target, list(ks)))
