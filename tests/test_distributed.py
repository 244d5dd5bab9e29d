"""Training over two processes (torchrun, gloo on the CPU) for VAE-PyTorch, CDAE-PyTorch and
SVAE-PyTorch: the runs learn the planted structure, rank 0 alone writes one run folder,
noise-free runs match the single-process run (so gradients are summed over disjoint shards,
neither dropped nor counted twice), and --resume continues exactly under torchrun.
Also parallel.py's all-reduce on hand-made gradients, and the evaluation of CDAE and SVAE
and recommend.py --users-file in batches of users against one batch of all users."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import (REPO, load_main, load_module, planted_top_n_rows,
                      popularity_and_cooccurrence, read_history, read_results, run_main,
                      write_ratings)

HELDOUT = "200"  # of the 1500 planted users: 1100 train, 200 validation, 200 test
VAE_FAST = ("--heldout-users", HELDOUT, "--batch-size", "100", "--lr", "3e-3",
            "--device", "cpu", "--comet", "off", "--quiet")
CDAE_FAST = ("--heldout-users", HELDOUT, "--batch-size", "64", "--eval-every", "1",
             "--device", "cpu", "--comet", "off", "--quiet")
# Share of plain item co-occurrence's test NDCG@10 (0.63) the short runs must reach, as in
# test_vae.py and test_cdae.py; popularity ranks like chance on the planted data (0.05).
FRACTION = 0.85


def torchrun(script, *args, processes=2):
    """`torchrun --standalone --nproc_per_node=processes script args` as a subprocess,
    one thread per process."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env.pop("COMET_API_KEY", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={processes}", str(script), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env,
                          cwd=REPO)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return write_ratings(tmp_path_factory.mktemp("planted") / "data" / "ratings.dat",
                         *planted_top_n_rows())


def baselines(folder, ratings_file):
    data, metrics = load_module(folder, "data"), load_module(folder, "metrics")
    split = data.split_top_n(data.load_ratings(ratings_file), heldout_users=int(HELDOUT))
    return popularity_and_cooccurrence(metrics, split)


def assert_learned(folder, planted, results):
    popular, cooccurring = baselines(folder, planted)
    assert results["test"]["ndcg@10"] > FRACTION * cooccurring["ndcg@10"], \
        (results["test"], cooccurring)
    assert results["test"]["ndcg@10"] > popular["ndcg@10"] + 0.2, (results["test"], popular)


def copy_folder(folder, tmp_path):
    """The folder's .py files in tmp_path/folder: its default run folder is then
    tmp_path/runs/folder/<timestamp>/."""
    target = tmp_path / folder
    target.mkdir()
    for path in (REPO / folder).glob("*.py"):
        shutil.copy(path, target / path.name)
    return target / "main.py"


def assert_same_history(one, other, loss_tol=1e-4, metric_tol=2e-3):
    """Two runs' metrics.jsonl: the same epochs, losses and validation NDCG@100 up to the
    rounding of summing gradients in another order."""
    a, b = read_history(one), read_history(other)
    assert [line["epoch"] for line in a] == [line["epoch"] for line in b]
    for x, y in zip(a, b):
        assert x["train_loss"] == pytest.approx(y["train_loss"], rel=loss_tol), (x, y)
        assert x["validation"]["ndcg@100"] == pytest.approx(
            y["validation"]["ndcg@100"], abs=metric_tol), (x, y)


# ---------------------------------------------------------------- VAE-PyTorch


def test_vae_two_processes_learn_and_rank_0_writes_one_run_folder(planted, tmp_path):
    main = copy_folder("VAE-PyTorch", tmp_path)
    done = torchrun(main, "--data-dir", planted.parent, *VAE_FAST, "--epochs", "6")
    assert done.returncode == 0, done.stderr
    runs = list((tmp_path / "runs" / "VAE-PyTorch").iterdir())
    assert len(runs) == 1, runs
    run_dir = runs[0]
    results = read_results(run_dir)
    assert results["processes"] == 2 and results["model"] == "Mult-VAE"
    assert json.loads((run_dir / "config.json").read_text())["processes"] == 2
    assert [line["epoch"] for line in read_history(run_dir)] == [1, 2, 3, 4, 5, 6]
    assert done.stdout.count("results written to") == 1, done.stdout
    assert_learned("VAE-PyTorch", planted, results)


@pytest.fixture(scope="module")
def dae_runs(planted, tmp_path_factory):
    """Mult-DAE without dropout (no noise at all): a plain run and a 2-process run of two
    epochs, and a 2-process run of one epoch resumed to two."""
    out = tmp_path_factory.mktemp("dae")
    script = REPO / "VAE-PyTorch" / "main.py"
    noise_free = ("--data-dir", planted.parent, *VAE_FAST, "--model", "dae",
                  "--dropout", "0")
    plain = run_main("VAE-PyTorch", *noise_free, "--epochs", "2", "--out-dir", out / "plain")
    assert plain.returncode == 0, plain.stderr
    for name, epochs in (("two", 2), ("resumed", 1)):
        done = torchrun(script, *noise_free, "--epochs", epochs, "--out-dir", out / name)
        assert done.returncode == 0, done.stderr
    done = torchrun(script, "--resume", out / "resumed", "--epochs", "2", "--quiet",
                    "--comet", "off")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("resuming") == 1, done.stdout  # rank 0 alone speaks
    return out


def test_vae_two_processes_match_one_without_noise(dae_runs):
    assert_same_history(dae_runs / "plain", dae_runs / "two")


def test_vae_resume_under_torchrun_continues_exactly(dae_runs):
    assert read_history(dae_runs / "resumed") == read_history(dae_runs / "two")
    assert read_results(dae_runs / "resumed")["test"] == read_results(dae_runs / "two")["test"]


# ---------------------------------------------------------------- CDAE-PyTorch


def test_cdae_two_processes_learn_planted_structure(planted, tmp_path):
    """With the user vectors under SparseAdam (sparse gradients over the batch's rows)."""
    main = copy_folder("CDAE-PyTorch", tmp_path)
    done = torchrun(main, "--data-dir", planted.parent, *CDAE_FAST, "--epochs", "4",
                    "--user-optimizer", "sparse-adam")
    assert done.returncode == 0, done.stderr
    runs = list((tmp_path / "runs" / "CDAE-PyTorch").iterdir())
    assert len(runs) == 1, runs
    results = read_results(runs[0])
    assert results["processes"] == 2 and results["epochs_run"] == 4
    assert [line["epoch"] for line in read_history(runs[0])] == [1, 2, 3, 4]
    assert_learned("CDAE-PyTorch", planted, results)


def test_cdae_two_processes_match_one_without_noise(planted, tmp_path):
    """No corruption, every item in the loss: the two runs differ only by rounding, so each
    training user's vector gets its whole gradient once (the batch's rows summed)."""
    noise_free = ("--data-dir", planted.parent, *CDAE_FAST, "--dropout", "0", "--loss",
                  "full", "--epochs", "2")
    plain = run_main("CDAE-PyTorch", *noise_free, "--out-dir", tmp_path / "plain")
    assert plain.returncode == 0, plain.stderr
    two = torchrun(REPO / "CDAE-PyTorch" / "main.py", *noise_free, "--out-dir",
                   tmp_path / "two")
    assert two.returncode == 0, two.stderr
    assert_same_history(tmp_path / "plain", tmp_path / "two")
    weights = [torch.load(tmp_path / name / "last.pt", weights_only=False)["model"]
               for name in ("plain", "two")]
    for name in weights[0]:
        assert torch.allclose(weights[0][name], weights[1][name], atol=1e-4), name


def test_cdae_batched_evaluation_matches_one_batch(planted, monkeypatch):
    main = load_main("CDAE-PyTorch")
    data = load_module("CDAE-PyTorch", "data")
    split = data.split_top_n(data.load_ratings(planted), heldout_users=int(HELDOUT))
    args = main.parse_args(["--hidden", "16", "--fold-in-steps", "5"])
    torch.manual_seed(0)
    net = main.model.CDAE(split.n_items, len(split.train_user_ids), args.hidden)
    cpu = torch.device("cpu")
    whole = main.evaluate(net, split.test, args, [10, 100], cpu)
    monkeypatch.setattr(main, "EVAL_BATCH_USERS", 64)  # 200 users: batches 64, 64, 64, 8
    batched = main.evaluate(net, split.test, args, [10, 100], cpu)
    assert batched == pytest.approx(whole, abs=1e-6)


# ---------------------------------------------------------------- SVAE-PyTorch

SVAE_SMALL = ("--heldout-users", HELDOUT, "--device", "cpu", "--comet", "off", "--quiet",
              "--embed-dim", "16", "--rnn-dim", "16", "--hidden-dim", "16", "--latent-dim",
              "8", "--epochs", "1")


def test_svae_two_processes_run_and_match_one_without_noise(planted, tmp_path):
    """A smoke run under torchrun. Every step counts (--loss-steps 0), so the two runs see
    the same batches and differ only in the sampled codes: their losses stay close."""
    common = ("--data-dir", planted.parent, *SVAE_SMALL, "--loss-steps", "0")
    plain = run_main("SVAE-PyTorch", *common, "--out-dir", tmp_path / "plain")
    assert plain.returncode == 0, plain.stderr
    two = torchrun(REPO / "SVAE-PyTorch" / "main.py", *common, "--out-dir", tmp_path / "two")
    assert two.returncode == 0, two.stderr
    assert read_results(tmp_path / "two")["processes"] == 2
    a, b = read_history(tmp_path / "plain"), read_history(tmp_path / "two")
    assert [line["epoch"] for line in b] == [1]
    for x, y in zip(a, b):  # the same batches and losses, other latent noise
        assert x["train_nll"] == pytest.approx(y["train_nll"], rel=0.02), (x, y)


def test_svae_batched_evaluation_matches_one_chunk(planted, monkeypatch):
    main = load_main("SVAE-PyTorch")
    data = load_module("SVAE-PyTorch", "data")
    split = data.split_top_n(data.load_ratings(planted), heldout_users=int(HELDOUT))
    torch.manual_seed(0)
    net = main.model.SVAE(split.n_items, 16, 16, 16, 8)
    cpu = torch.device("cpu")
    whole = main.evaluate(net, split.test, [10, 100], split.n_items, cpu)
    monkeypatch.setattr(main, "EVAL_CHUNK_USERS", 64)
    batched = main.evaluate(net, split.test, [10, 100], split.n_items, cpu)
    assert batched == pytest.approx(whole, abs=1e-6)


# ---------------------------------------------------------------- parallel.py itself


def reduce_worker(rank, port, out):
    """One of two gloo processes: reduce_gradients over hand-made gradients, broadcast."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    parallel = load_module("VAE-PyTorch", "parallel")
    context = parallel.start(torch.device("cpu"))
    dense = torch.nn.Parameter(torch.zeros(2, 3))
    dense.grad = torch.full((2, 3), rank + 1.0)              # sums to 3
    table = torch.nn.Parameter(torch.zeros(5, 2))            # user vectors; batch rows 1, 3
    table.grad = torch.zeros(5, 2)
    table.grad[[1, 3][rank]] = 10.0 * (rank + 1)             # each process its own user
    unused = torch.nn.Parameter(torch.zeros(4))               # no gradient on rank 0
    unused.grad = None if rank == 0 else torch.ones(4)
    values = parallel.reduce_gradients([dense, table, unused], context, [0.5, rank],
                                       rows={table: torch.tensor([1, 3])})
    stop = parallel.broadcast(rank == 0, context)           # rank 0's decision everywhere
    mine = parallel.shard(np.arange(7), context)
    torch.save({"dense": dense.grad, "table": table.grad, "unused": unused.grad,
                "values": values, "stop": stop, "mine": mine}, out / f"{rank}.pt")
    parallel.finish(context)


def free_port():
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_parallel_sums_gradients_rows_and_values(tmp_path):
    torch.multiprocessing.spawn(reduce_worker, args=(free_port(), tmp_path), nprocs=2)
    results = [torch.load(tmp_path / f"{rank}.pt", weights_only=False) for rank in (0, 1)]
    expected_table = torch.zeros(5, 2)
    expected_table[1], expected_table[3] = 10.0, 20.0
    for result in results:
        assert torch.equal(result["dense"], torch.full((2, 3), 3.0))
        assert torch.equal(result["table"], expected_table)
        assert torch.equal(result["unused"], torch.ones(4))
        assert result["values"] == [1.0, 1.0] and result["stop"] is True
    assert sorted(np.concatenate([r["mine"] for r in results])) == list(range(7))
    assert list(results[0]["mine"]) == [0, 2, 4, 6]


# ---------------------------------------------------------------- recommend.py --users-file


@pytest.mark.parametrize("folder", ["VAE-PyTorch", "CDAE-PyTorch", "SVAE-PyTorch"])
def test_recommend_users_file_in_chunks_equals_one_chunk(folder):
    """--users-file ranks its users a chunk at a time: the same lists as all at once."""
    import scipy.sparse as sp
    from conftest import folder_imports
    with folder_imports(folder):
        recommend = load_module(folder, "recommend")
    rng = np.random.default_rng(0)
    matrix = sp.csr_matrix(rng.random((10, 30)) < 0.2, dtype=np.float32)
    inputs = recommend.Inputs(matrix, [list(row.indices) for row in matrix], np.arange(10))
    table = rng.random((10, 30))

    class Scorer:  # each user's row of a fixed table (the user's number in train_rows)
        def scores(self, rows):
            return table[rows.train_rows]

    whole = recommend.top_k(Scorer().scores(inputs), matrix, 5, False)
    chunked = recommend.top_k_in_chunks(Scorer(), inputs, 5, False, chunk=3)
    assert np.array_equal(whole[0], chunked[0]) and np.allclose(whole[1], chunked[1])
