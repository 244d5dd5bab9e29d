"""CDAE-PyTorch: learning planted structure, fold-in, resume, NaN guard, CLI, real data.

main.py imports its siblings by plain name, so it only ever runs in a subprocess
(conftest.run_main); model/data/metrics are loaded in-process under unique names.
"""
import json
import re
import shutil
import zipfile

import numpy as np
import pytest
import torch

from conftest import (SHARED_DATA, keys_naming_test, load_main, load_module,
                      planted_top_n_rows, popularity_and_cooccurrence, read_history,
                      run_main, write_ratings)

FOLDER = "CDAE-PyTorch"
SMALL = ("--heldout-users", "200", "--eval-every", "1", "--batch-size", "64", "--quiet")
# Share of plain item co-occurrence's test NDCG@10 (0.63) that 4 epochs of CDAE must reach;
# popularity ranks like chance (0.05). Batches of 64: the planted set has few users, and the
# default batch of 256 would give too few updates in 4 epochs.
FRACTION = 0.85


@pytest.fixture(scope="module")
def planted_dir(tmp_path_factory):
    """The planted cluster data of conftest (1500 users), shared by this module's runs."""
    folder = tmp_path_factory.mktemp("cdae") / "data"
    write_ratings(folder / "ratings.dat", *planted_top_n_rows())
    return folder


@pytest.fixture(scope="module")
def straight_run(planted_dir):
    """Four epochs end to end, CometML offline; the reference for the resume test."""
    out = planted_dir.parent / "straight"
    done = run_main(FOLDER, "--data-dir", planted_dir, "--out-dir", out, "--epochs", "4",
                    "--comet", "offline", *SMALL)
    assert done.returncode == 0, done.stderr
    return out, done


def results_of(run_dir):
    return json.loads((run_dir / "results.json").read_text())


def baselines(data_dir, holdout="random"):
    """Test metrics of popularity and of plain item co-occurrence on the runs' split.
    Popularity ranks like chance here (NDCG@10 about 0.05); co-occurrence reaches 0.63."""
    data = load_module(FOLDER, "data")
    metrics = load_module(FOLDER, "metrics")
    split = data.split_top_n(data.load_ratings(data_dir / "ratings.dat"), heldout_users=200,
                             holdout=holdout)
    return popularity_and_cooccurrence(metrics, split)


# ---------------------------------------------------------------- end to end


def test_main_learns_planted_structure_and_logs_offline(planted_dir, straight_run):
    out, done = straight_run
    results = results_of(out)
    assert results["model"] == "CDAE" and results["protocol"] == "B"
    assert results["holdout"] == "random" and results["test"]["n_users"] == 200
    popular, cooccurring = baselines(planted_dir)
    assert results["test"]["ndcg@10"] > FRACTION * cooccurring["ndcg@10"], \
        (results["test"], cooccurring)
    assert results["test"]["ndcg@100"] > popular["ndcg@100"] + 0.15, (results["test"], popular)

    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert not any(keys_naming_test(line) for line in lines), lines
    assert [line["epoch"] for line in lines] == [1, 2, 3, 4]
    best = max(lines, key=lambda line: line["validation"]["ndcg@100"])
    assert results["best_epoch"] == best["epoch"]
    assert results["validation"] == best["validation"]
    assert all("train_loss" in line and "ndcg@100" in line["validation"] for line in lines)
    assert (out / "best.pt").is_file() and (out / "last.pt").is_file()
    assert "comet upload" in done.stdout

    archives = list(out.glob("*.zip"))
    assert len(archives) == 1
    with zipfile.ZipFile(archives[0]) as archive:
        logged = "".join(archive.read(name).decode("utf-8", "replace")
                         for name in archive.namelist())
    assert "test_ndcg@100" in logged and "train_loss" in logged


def test_resume_gives_the_same_results(planted_dir, straight_run, tmp_path):
    out = tmp_path / "resumed"
    first = run_main(FOLDER, "--data-dir", planted_dir, "--out-dir", out, "--epochs", "2",
                     "--comet", "off", *SMALL)
    assert first.returncode == 0, first.stderr
    diverging = tmp_path / "diverging"
    shutil.copytree(out, diverging)

    second = run_main(FOLDER, "--resume", out, "--epochs", "4", "--comet", "off")
    assert second.returncode == 0, second.stderr
    # every evaluation record, the two resumed epochs' included, is the uninterrupted run's
    assert [line["epoch"] for line in read_history(out)] == [1, 2, 3, 4]
    assert read_history(out) == read_history(straight_run[0])
    straight, resumed = results_of(straight_run[0]), results_of(out)
    assert resumed["best_epoch"] == straight["best_epoch"]
    assert resumed["test"] == pytest.approx(straight["test"], abs=1e-9)
    assert resumed["validation"] == pytest.approx(straight["validation"], abs=1e-9)

    # The same interrupted run resumed with a huge learning rate: the loss becomes NaN or
    # inf in epoch 3, the run stops with one clear message, best.pt (epoch 1 or 2) untouched.
    config = json.loads((diverging / "config.json").read_text())
    (diverging / "config.json").write_text(json.dumps({**config, "lr": 1e37}))
    best_before = (diverging / "best.pt").read_bytes()
    results_before = (diverging / "results.json").read_bytes()  # of the 2-epoch run
    crashed = run_main(FOLDER, "--resume", diverging, "--epochs", "4", "--comet", "off")
    assert crashed.returncode != 0
    message = crashed.stderr.strip().splitlines()[-1]
    assert re.match(r"error: training loss became (nan|inf) at epoch 3;", message), message
    assert "best checkpoint (epoch" in message and str(diverging / "best.pt") in message
    assert "Traceback" not in crashed.stderr
    assert (diverging / "best.pt").read_bytes() == best_before
    assert (diverging / "results.json").read_bytes() == results_before


@pytest.mark.parametrize("flags, holdout, model_name, evaluated, fraction", [
    # the plain DAE (reaches 0.62, 0.97 of co-occurrence); evaluations every 2 epochs, and
    # at the last one whatever --eval-every
    (("--no-user-node", "--epochs", "5", "--eval-every", "2"), "random", "DAE", [2, 4, 5],
     FRACTION),
    # latest 20% as targets: 3 epochs reach 0.48, 0.75 of co-occurrence (0.64)
    (("--holdout", "temporal", "--epochs", "3"), "temporal", "CDAE", [1, 2, 3], 0.6),
], ids=["no-user-node-eval-every-2", "temporal"])
def test_model_options_through_main_learn(planted_dir, tmp_path, flags, holdout, model_name,
                                          evaluated, fraction):
    out = tmp_path / "run"
    done = run_main(FOLDER, "--data-dir", planted_dir, "--out-dir", out, "--comet", "off",
                    *SMALL, *flags)
    assert done.returncode == 0, done.stderr
    results, lines = results_of(out), read_history(out)
    assert results["model"] == model_name and results["holdout"] == holdout
    assert [line["epoch"] for line in lines] == evaluated
    assert results["epochs_run"] == evaluated[-1]
    assert not any(keys_naming_test(line) for line in lines)
    popular, cooccurring = baselines(planted_dir, holdout)
    assert results["test"]["ndcg@10"] > fraction * cooccurring["ndcg@10"], \
        (results["test"], cooccurring)
    assert results["test"]["ndcg@10"] > popular["ndcg@10"] + 0.2, (results["test"], popular)


@pytest.mark.parametrize("flag,value", [("--dropout", "-0.1"), ("--dropout", "1"),
                                        ("--batch-size", "0"), ("--l2", "-1")])
def test_bad_flags_are_argparse_errors(flag, value):
    done = run_main(FOLDER, flag, value, "--comet", "off", "--no-download")
    assert done.returncode == 2
    assert f"argument {flag}" in done.stderr and "Traceback" not in done.stderr


def test_missing_data_is_one_clear_error_and_leaves_no_run_folder(tmp_path):
    done = run_main(FOLDER, "--data-dir", tmp_path / "empty", "--no-download",
                    "--out-dir", tmp_path / "run", "--comet", "off")
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "ratings.dat not found" in done.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(not (SHARED_DATA / "ratings.dat").is_file(),
                    reason=f"real MovieLens-1M not found at {SHARED_DATA}")
def test_real_data_one_epoch_crash_check(tmp_path):
    """One epoch on the real data: a crash check (reads it, trains, evaluates 600 users and
    writes the run folder), not a quality check: the 0.1 floor is below popularity's 0.22."""
    done = run_main(FOLDER, "--data-dir", SHARED_DATA, "--out-dir", tmp_path, "--epochs", "1",
                    "--fold-in-steps", "10", "--comet", "off", "--quiet", "--no-download")
    assert done.returncode == 0, done.stderr
    results = results_of(tmp_path)
    assert results["test"]["n_users"] == 600 and results["best_epoch"] == 1
    assert results["data_sha256"].startswith("562c998d")
    assert 0.1 < results["test"]["ndcg@100"] < 1


# ---------------------------------------------------------------- model, in-process


def small_net(user_node=True, n_items=40, seed=0):
    model = load_module(FOLDER, "model")
    torch.manual_seed(seed)
    net = model.CDAE(n_items, n_users=30, hidden=8, user_node=user_node)
    x = (torch.rand(12, n_items) < 0.3).float()
    return model, net, x


def test_fold_in_changes_only_the_user_vectors():
    model, net, x = small_net()
    before = {name: value.clone() for name, value in net.state_dict().items()}
    vectors = model.fold_in(net, x, steps=20, lr=0.05, l2=1e-3, negatives=5.0)
    after = net.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert all(p.grad is None and p.requires_grad for p in net.parameters())
    assert vectors.shape == (12, 8) and vectors.abs().sum() > 0

    # and the fitted vectors do their job: the fold-in loss falls
    weights = model.expected_mask(x, 5.0)
    loss = lambda v: model.reconstruction_loss(net(x, v), x, weights).mean().item()
    assert loss(vectors) < loss(torch.zeros_like(vectors)) - 0.1


def test_plain_dae_has_no_user_vectors():
    model, net, x = small_net(user_node=False)
    assert net.user_vectors is None
    assert model.fold_in(net, x, steps=5) is None
    assert model.scores(net, x, None).shape == x.shape


def test_evaluation_masks_fold_in_items(planted_dir):
    """main.py's evaluation of a scorer that puts every fold-in item first, each item then
    by popularity, gives the metrics of the popularity ranking: fold-in items never count."""
    main, metrics = load_main(FOLDER), load_module(FOLDER, "metrics")
    data = load_module(FOLDER, "data")
    split = data.split_top_n(data.load_ratings(planted_dir / "ratings.dat"), heldout_users=200)
    popularity = torch.from_numpy(np.asarray(split.train.sum(axis=0)).ravel()).float()

    class FoldInFirst(torch.nn.Module):
        user_vectors = None  # no user node: nothing to fold in

        def forward(self, x, user_vectors=None):
            return popularity.repeat(x.shape[0], 1) + 1e6 * x

    held = split.test
    got = main.evaluate(FoldInFirst(), held, main.parse_args([]), [10, 100],
                        torch.device("cpu"))
    expected = metrics.ranking_metrics(np.tile(popularity.numpy(), (len(held.user_ids), 1)),
                                       held.fold_in, held.target, [10, 100])
    assert got == pytest.approx(expected)


def test_negative_sampling_rate():
    model = load_module(FOLDER, "model")
    x = torch.zeros(200, 1000)
    x[:, :50] = 1
    mask = model.loss_mask(x, 5.0, torch.Generator().manual_seed(0))
    assert mask[:, :50].all()
    assert mask[:, 50:].float().sum(dim=1).mean().item() == pytest.approx(250, rel=0.05)
    expected = model.expected_mask(x, 5.0)
    assert expected[:, 50:].sum(dim=1).mean().item() == pytest.approx(250, rel=1e-4)
    assert model.loss_mask(x, None, None) is None


# ---------------------------------------------------------------- --user-optimizer


def recorded_steps(user_optimizer, n_users=30, n_items=40, batch_size=10):
    """One epoch of main.train_epoch on random rows, optimiser and network built by
    main.build: per update, (the batch's users, user vectors before, after)."""
    import scipy.sparse
    main = load_main(FOLDER)
    args = main.parse_args(["--user-optimizer", user_optimizer, "--hidden", "8",
                            "--batch-size", str(batch_size), "--quiet"])
    net, optimiser = main.build(args, n_items, n_users, torch.device("cpu"))
    batches, steps = [], []
    net.user_vectors.register_forward_hook(lambda _, inputs, out: batches.append(inputs[0]))
    step = optimiser.step

    def recording_step():
        before = net.user_vectors.weight.detach().clone()
        step()
        steps.append((batches[-1], before, net.user_vectors.weight.detach().clone()))
    optimiser.step = recording_step
    rows = np.random.default_rng(0).random((n_users, n_items)) < 0.3
    main.train_epoch(net, optimiser, scipy.sparse.csr_matrix(rows, dtype=np.float32), args,
                     1, main.parallel.Context(device=torch.device("cpu")))
    assert len(steps) == n_users // batch_size
    return main, args, net, optimiser, steps


def moved_outside_the_batch(users, before, after):
    outside = torch.ones(len(before), dtype=torch.bool)
    outside[users] = False
    changed = (before != after).any(dim=1)
    assert changed[users].all()  # the batch's own vectors always move
    return changed[outside].any().item()


def test_sparse_adam_leaves_the_vectors_of_users_outside_the_batch_alone():
    *_, steps = recorded_steps("adam")
    # dense Adam: nothing outside the first batch moves (no gradient, no momentum yet),
    # but afterwards the earlier batches' vectors go on moving on their stale momentum
    assert not moved_outside_the_batch(*steps[0])
    assert all(moved_outside_the_batch(*step) for step in steps[1:])

    main, args, net, optimiser, steps = recorded_steps("sparse-adam")
    assert not any(moved_outside_the_batch(*step) for step in steps)
    assert net.user_vectors.sparse
    # the network's weights are Adam's, the user vectors SparseAdam's; a checkpoint's
    # optimiser state (both) loads into a fresh pair and gives the same next step
    assert isinstance(optimiser.users, torch.optim.SparseAdam)
    assert all(p is not net.user_vectors.weight
               for group in optimiser.network.param_groups for p in group["params"])
    state = optimiser.state_dict()
    _, fresh = main.build(args, 40, 30, torch.device("cpu"))
    fresh.load_state_dict(state)
    assert fresh.users.state_dict()["state"][0]["step"] == len(steps)
    assert torch.equal(fresh.users.state_dict()["state"][0]["exp_avg"],
                       state["users"]["state"][0]["exp_avg"])
    assert len(fresh.network.state_dict()["state"]) == 4  # W, b, W', b'


def test_sparse_adam_trains_and_resumes_on_the_planted_data(top_n_file, tmp_path):
    out = tmp_path / "run"
    first = run_main(FOLDER, "--data-dir", top_n_file.parent, "--out-dir", out,
                     "--epochs", "2", "--user-optimizer", "sparse-adam", "--comet", "off",
                     *SMALL)
    assert first.returncode == 0, first.stderr
    resumed = run_main(FOLDER, "--resume", out, "--epochs", "4", "--comet", "off")
    assert resumed.returncode == 0, resumed.stderr
    results = results_of(out)
    assert json.loads((out / "config.json").read_text())["user_optimizer"] == "sparse-adam"
    assert [line["epoch"] for line in read_history(out)] == [1, 2, 3, 4]
    popular, cooccurring = baselines(top_n_file.parent)
    assert results["test"]["ndcg@10"] > FRACTION * cooccurring["ndcg@10"], \
        (results["test"], cooccurring)
    assert results["test"]["ndcg@100"] > popular["ndcg@100"] + 0.15, (results["test"], popular)
