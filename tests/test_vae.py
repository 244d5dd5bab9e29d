"""VAE-PyTorch: Mult-VAE / Mult-DAE learn planted structure, the beta schedule, masking of
fold-in items, resume equivalence, the NaN guard, main.py end to end and its flags."""
import filecmp
import json
import sys
import zipfile

import numpy as np
import pytest
import torch

from conftest import (REPO, SHARED_DATA, keys_naming_test, load_module, planted_top_n_rows,
                      popularity_and_cooccurrence, read_history, read_results, run_main,
                      write_ratings)

FOLDER = "VAE-PyTorch"
HELDOUT = "200"            # of the 1500 planted users: 1100 train, 200 validation, 200 test
FAST = ("--heldout-users", HELDOUT, "--batch-size", "100", "--lr", "3e-3", "--device", "cpu")
# Share of plain item co-occurrence's test NDCG@10 (0.63) that the short runs below must
# reach: they reach 0.62-0.63; popularity ranks like chance on the planted data (0.05).
FRACTION = 0.85


@pytest.fixture(scope="module")
def modules():
    loaded = {name: load_module(FOLDER, name)
              for name in ("data", "model", "metrics", "runs", "parallel")}
    return {**loaded, "main": load_main(loaded)}


def load_main(siblings):
    """main.py imports data, metrics and model by plain name: lend it this folder's copies
    under those names while it loads, then put back whatever sys.modules held before."""
    saved = {name: sys.modules.get(name) for name in siblings}
    sys.modules.update(siblings)
    try:
        return load_module(FOLDER, "main")
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return write_ratings(tmp_path_factory.mktemp("planted") / "data" / "ratings.dat",
                         *planted_top_n_rows())


@pytest.fixture(scope="module")
def vae_run(planted, tmp_path_factory):
    """One Mult-VAE run on the planted data with an offline Comet archive, shared below."""
    run_dir = tmp_path_factory.mktemp("vae") / "run"
    done = run_main(FOLDER, "--data-dir", planted.parent, "--out-dir", run_dir, *FAST,
                    "--epochs", "6", "--comet", "offline", "--quiet")
    assert done.returncode == 0, done.stderr
    return run_dir, done


def baselines(modules, ratings_file, holdout="random"):
    """Test metrics of popularity and of plain item co-occurrence on the runs' split."""
    data, metrics = modules["data"], modules["metrics"]
    split = data.split_top_n(data.load_ratings(ratings_file), heldout_users=int(HELDOUT),
                             holdout=holdout)
    return popularity_and_cooccurrence(metrics, split)


def read_comet_archive(run_dir):
    archives = list(run_dir.glob("*.zip"))
    assert len(archives) == 1, f"expected one Comet offline archive in {run_dir}"
    with zipfile.ZipFile(archives[0]) as archive:
        return "\n".join(archive.read(name).decode("utf-8", "replace")
                         for name in archive.namelist() if name.endswith(".json"))


# ---------------------------------------------------------------- copies and schedule


def test_data_and_metrics_are_copies_of_esae():
    for name in ("data.py", "metrics.py"):
        assert filecmp.cmp(REPO / FOLDER / name, REPO / "ESAE-PyTorch" / name, shallow=False)


def test_beta_reaches_cap_within_a_default_run(modules):
    main, model = modules["main"], modules["model"]
    args = main.parse_args([])
    # ML-1M under the default split: 4834 training users, 100 per batch -> 49 updates/epoch.
    total = main.default_anneal_steps(4834, args.batch_size, args.epochs)
    assert total == 49 * 200
    cap, used = main.anneal_settings(args, 4834)
    assert (cap, used) == (0.2, total)
    betas = [model.anneal_beta(step, used, cap) for step in range(total)]
    assert betas == sorted(betas) and betas[0] == 0.0
    reached = betas.index(cap)
    assert reached <= 0.25 * total            # at update 1960 = epoch 40 of 200
    assert model.anneal_beta(200, 200_000, cap) < 0.01   # the paper's constant would not
    best = main.anneal_settings(main.parse_args(["--anneal-mode", "best"]), 4834)
    assert best == (1.0, total)
    assert model.anneal_beta(total - 1, total, 1.0) > 0.99
    assert main.anneal_settings(main.parse_args(["--total-anneal-steps", "0"]), 4834)[1] == 0
    assert model.anneal_beta(0, 0, 0.2) == 0.2


def test_logged_beta_reaches_cap_in_a_run(vae_run):
    run_dir, _ = vae_run
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    betas = [line["beta"] for line in lines]
    assert betas == sorted(betas) and betas[0] < 0.2
    assert betas[-1] == pytest.approx(0.2)


# ---------------------------------------------------------------- model


def test_sparse_encoder_equals_dense_formula(modules):
    model = modules["model"]
    import scipy.sparse as sp
    rng = np.random.RandomState(0)
    x = sp.csr_matrix((rng.rand(7, 30) < 0.3).astype(np.float32))
    torch.manual_seed(0)
    net = model.MultVAE(30, hidden=8, latent=4, dropout=0.5).eval()
    mu, logvar = net.encode(model.sparse_rows(x, "cpu"))
    dense = torch.from_numpy(x.toarray())
    dense = dense / dense.norm(dim=1, keepdim=True).clamp_min(1e-12)
    h = torch.tanh(dense @ net.encoder.weight + net.encoder_bias)
    code = net.code(h)
    torch.testing.assert_close(mu, code[:, :4])
    torch.testing.assert_close(logvar, code[:, 4:])
    logits, mu2, _ = net(model.sparse_rows(x, "cpu"))
    torch.testing.assert_close(mu2, mu)                       # the mean at evaluation
    neg_ll, kl = model.loss_terms(logits, model.sparse_rows(x, "cpu"), mu, logvar)
    expected = -(torch.log_softmax(logits, 1) * torch.from_numpy(x.toarray())).sum(1).mean()
    torch.testing.assert_close(neg_ll, expected)
    assert kl.item() > 0


def test_training_noise_depends_only_on_the_generator(modules):
    model = modules["model"]
    import scipy.sparse as sp
    x = model.sparse_rows(sp.csr_matrix(np.eye(5, 20, dtype=np.float32)), "cpu")
    torch.manual_seed(0)
    net = model.MultVAE(20, hidden=8, latent=4).train()
    runs = []
    for _ in range(2):
        generator = torch.Generator().manual_seed(7)
        runs.append(net(x, generator)[0])
    torch.testing.assert_close(runs[0], runs[1])
    other = net(x, torch.Generator().manual_seed(8))[0]
    assert not torch.allclose(runs[0], other)


def test_evaluation_masks_fold_in_items(modules, planted):
    """A scorer that puts fold-in items first gets the metrics of the rest of its ranking."""
    data, main, metrics, model = (modules[n] for n in ("data", "main", "metrics", "model"))
    split = data.split_top_n(data.load_ratings(planted), heldout_users=int(HELDOUT))
    popularity = torch.from_numpy(np.asarray(split.train.sum(axis=0)).ravel()).float()

    class FoldInFirst(torch.nn.Module):
        variational = False

        def forward(self, x, generator=None):
            scores = popularity.repeat(x.n_rows, 1)
            scores[x.rows, x.items] += 1e6
            return scores, None, None

    held = split.test
    got = main.evaluate(FoldInFirst(), held, [10, 100], 7, "cpu")   # batches of 7 users
    pop = popularity.numpy()
    expected = metrics.ranking_metrics(np.tile(pop, (len(held.user_ids), 1)), held.fold_in,
                                       held.target, [10, 100])
    assert got == pytest.approx(expected)
    scores = np.tile(pop, (len(held.user_ids), 1)) + 1e6 * held.fold_in.toarray()
    top = metrics.top_k_items(scores, held.fold_in, 10)
    assert not np.take_along_axis(held.fold_in.toarray(), top, axis=1).any()


# ---------------------------------------------------------------- learning


def test_mult_vae_reaches_cooccurrence(modules, planted, vae_run):
    run_dir, _ = vae_run
    results = json.loads((run_dir / "results.json").read_text())
    popular, cooccurring = baselines(modules, planted)
    assert results["test"]["ndcg@10"] > FRACTION * cooccurring["ndcg@10"], cooccurring
    assert results["test"]["recall@10"] > FRACTION * cooccurring["recall@10"], cooccurring
    assert results["test"]["ndcg@10"] > popular["ndcg@10"] + 0.2


def test_mult_dae_reaches_cooccurrence(modules, planted, tmp_path):
    run_dir = tmp_path / "dae"
    done = run_main(FOLDER, "--data-dir", planted.parent, "--out-dir", run_dir, *FAST,
                    "--model", "dae", "--epochs", "4", "--comet", "off", "--quiet")
    assert done.returncode == 0, done.stderr
    results = json.loads((run_dir / "results.json").read_text())
    assert results["model"] == "Mult-DAE" and results["selected"]["beta"] == 0.0
    popular, cooccurring = baselines(modules, planted)
    assert results["test"]["ndcg@10"] > FRACTION * cooccurring["ndcg@10"], cooccurring
    assert results["test"]["ndcg@10"] > popular["ndcg@10"] + 0.2


@pytest.mark.parametrize("flags, holdout", [(("--anneal-mode", "best"), "random"),
                                            (("--holdout", "temporal"), "temporal")],
                         ids=["anneal-mode-best", "temporal"])
def test_model_options_through_main_learn(modules, planted, tmp_path, flags, holdout):
    run_dir = tmp_path / "run"
    done = run_main(FOLDER, "--data-dir", planted.parent, "--out-dir", run_dir, *FAST,
                    "--epochs", "4", "--comet", "off", "--quiet", *flags)
    assert done.returncode == 0, done.stderr
    results = read_results(run_dir)
    assert results["holdout"] == holdout
    if "best" in flags:  # beta annealed towards 1 over the run, the best beta kept
        assert results["selected"]["anneal_mode"] == "best"
        assert results["selected"]["anneal_cap"] == 1.0
        assert [line["beta"] for line in read_history(run_dir)][-1] > 0.5
    popular, cooccurring = baselines(modules, planted, holdout)
    assert results["test"]["ndcg@10"] > FRACTION * cooccurring["ndcg@10"], cooccurring
    assert results["test"]["ndcg@10"] > popular["ndcg@10"] + 0.2


def test_patience_stops_the_run_and_test_is_the_reloaded_best_model(modules, planted,
                                                                    tmp_path):
    """With lr 0.1 validation NDCG@100 stops improving after 2 epochs (0.33, 0.35, 0.32):
    --patience 1 stops the run at epoch 3 of 20. The test metrics are those of best.pt,
    reloaded and evaluated here, not those of the last weights (last.pt)."""
    run_dir = tmp_path / "run"
    done = run_main(FOLDER, "--data-dir", planted.parent, "--out-dir", run_dir, *FAST,
                    "--lr", "0.1", "--epochs", "20", "--patience", "1", "--comet", "off",
                    "--quiet")
    assert done.returncode == 0, done.stderr
    results, lines = read_results(run_dir), read_history(run_dir)
    epochs = [line["epoch"] for line in lines]
    assert epochs == list(range(1, len(lines) + 1)) and len(lines) < 20, epochs
    best = max(lines, key=lambda line: line["validation"]["ndcg@100"])
    assert results["best_epoch"] == best["epoch"] == epochs[-2]  # then one without progress
    assert results["validation"] == best["validation"]

    data, main, model = modules["data"], modules["main"], modules["model"]
    split = data.split_top_n(data.load_ratings(planted), heldout_users=int(HELDOUT))
    args = main.parse_args([])  # the sizes of the run: main.py's defaults

    def test_metrics_of(checkpoint):
        net = model.MultVAE(split.n_items, args.hidden, args.latent, args.dropout)
        net.load_state_dict(torch.load(run_dir / checkpoint, weights_only=False)["model"])
        return main.evaluate(net, split.test, [10, 20, 50, 100], 100, "cpu")

    assert test_metrics_of("best.pt") == pytest.approx(results["test"], rel=1e-6)
    assert test_metrics_of("last.pt")["ndcg@100"] != pytest.approx(
        results["test"]["ndcg@100"], rel=1e-3)


# ---------------------------------------------------------------- main.py


def test_main_end_to_end_with_offline_comet(modules, planted, vae_run):
    run_dir, done = vae_run
    results = json.loads((run_dir / "results.json").read_text())
    assert results["model"] == "Mult-VAE" and results["protocol"] == "B"
    assert results["holdout"] == "random" and results["test"]["n_users"] == 200
    assert results["data_sha256"] == modules["data"].load_ratings(planted).sha256
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert not any(keys_naming_test(line) for line in lines), lines
    assert [line["epoch"] for line in lines][:3] == [1, 2, 3]
    best = max(lines, key=lambda line: line["validation"]["ndcg@100"])
    assert results["best_epoch"] == best["epoch"]
    assert results["validation"] == best["validation"]
    for name in ("config.json", "best.pt", "last.pt"):
        assert (run_dir / name).is_file()
    logged = read_comet_archive(run_dir)
    for name in ("test_ndcg@100", "val_ndcg@100", "train_loss", "beta", "wall_seconds"):
        assert name in logged
    assert "comet upload" in done.stdout


def test_resume_gives_the_same_results(planted, tmp_path):
    common = ("--data-dir", planted.parent, *FAST, "--total-anneal-steps", "30",
              "--comet", "off", "--quiet")
    straight, halted = tmp_path / "straight", tmp_path / "halted"
    assert run_main(FOLDER, *common, "--epochs", "4", "--out-dir", straight).returncode == 0
    # A run stopped after epoch 2 leaves what an interrupted 4-epoch run leaves: its
    # checkpoints of epoch 2. Give it the 4-epoch config and resume.
    assert run_main(FOLDER, *common, "--epochs", "2", "--out-dir", halted).returncode == 0
    config = json.loads((halted / "config.json").read_text())
    (halted / "config.json").write_text(json.dumps({**config, "epochs": 4}))
    (halted / "results.json").unlink()
    done = run_main(FOLDER, "--resume", halted, "--comet", "off", "--quiet")
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stdout
    a, b = (json.loads((d / "results.json").read_text()) for d in (straight, halted))
    for key in ("test", "validation", "best_epoch", "selected"):
        assert a[key] == b[key]
    assert (straight / "metrics.jsonl").read_text() == (halted / "metrics.jsonl").read_text()


def test_nan_loss_stops_with_a_clear_message(planted, tmp_path):
    run_dir = tmp_path / "nan"
    # One batch per epoch: epoch 1 evaluates, then the huge step makes epoch 2's loss NaN.
    done = run_main(FOLDER, "--data-dir", planted.parent, "--out-dir", run_dir,
                    "--heldout-users", HELDOUT, "--batch-size", "5000", "--lr", "1e30",
                    "--epochs", "5", "--device", "cpu", "--comet", "off", "--quiet")
    assert done.returncode != 0
    assert "error: training loss became nan at epoch 2" in done.stderr
    assert "best checkpoint (epoch 1) kept at" in done.stderr
    assert "Traceback" not in done.stderr
    best = torch.load(run_dir / "best.pt", weights_only=False)
    assert best["epoch"] == 1
    assert all(torch.isfinite(value).all() for value in best["model"].values())
    assert not (run_dir / "results.json").exists()


@pytest.mark.parametrize("flags", [("--dropout", "-0.1"), ("--dropout", "1"),
                                   ("--batch-size", "0"), ("--lr", "0"), ("--lr", "nan"),
                                   ("--epochs", "-1"), ("--anneal-cap", "-0.2"),
                                   ("--patience", "0"), ("--model", "gan"),
                                   ("--total-anneal-steps", "-5"), ("--ks", "10,x")])
def test_bad_flags_are_argparse_errors(modules, flags, capsys):
    with pytest.raises(SystemExit) as stop:
        modules["main"].parse_args(list(flags))
    assert stop.value.code == 2
    assert f"error: argument {flags[0]}" in capsys.readouterr().err


def test_bad_flag_from_inside_the_folder():
    done = run_main(FOLDER, "--dropout", "-0.5", cwd=REPO / FOLDER)
    assert done.returncode == 2
    assert "error: argument --dropout" in done.stderr and "Traceback" not in done.stderr


def test_missing_data_is_one_clear_error(tmp_path):
    done = run_main(FOLDER, "--data-dir", tmp_path / "nothing", "--no-download",
                    "--out-dir", tmp_path / "run", "--comet", "off")
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "ratings.dat not found" in done.stderr
    assert not (tmp_path / "run").exists()  # no empty run folder left behind


@pytest.mark.skipif(not (SHARED_DATA / "ratings.dat").is_file(),
                    reason=f"real MovieLens-1M not at {SHARED_DATA}")
def test_real_data_one_epoch_crash_check(tmp_path):
    """One epoch on the real data: a crash check (reads it, trains, evaluates 600 users and
    writes the run folder), not a quality check: the 0.1 floor is below popularity's 0.22."""
    run_dir = tmp_path / "real"
    done = run_main(FOLDER, "--data-dir", SHARED_DATA, "--out-dir", run_dir, "--epochs", "1",
                    "--no-download", "--comet", "off", "--quiet")
    assert done.returncode == 0, done.stderr
    results = json.loads((run_dir / "results.json").read_text())
    assert results["test"]["n_users"] == 600 and results["test"]["ndcg@100"] > 0.1
