"""ESAE-PyTorch, issue #14: full-rank EDLAE (Steck 2020) next to EASE, and the faster
lambda search.

(a) the EDLAE closed form against a hand-worked 2-item solution and against the exact
    minimiser of the emphasized-dropout loss (every dropout mask enumerated);
(b) with dropout 0 it is EASE: each column the ridge regression of an item on the other
    items (the diagonal is zero);
(c) the golden-section search in float32 selects what an exhaustive float64 search over
    the same grid selects, solving fewer candidates, and the final B is float64 and equals
    ease_weights / edlae_weights at the selected values;
(d) `--model edlae` end to end through main.py on planted data, and recommend.py on its run.
"""
import itertools
import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from conftest import (REPO, load_main, load_module, planted_top_n_rows,
                      popularity_and_cooccurrence, read_history, read_results, run_main,
                      run_script, write_ratings)

FOLDER = "ESAE-PyTorch"


@pytest.fixture(scope="module")
def model():
    return load_module(FOLDER, "model")


@pytest.fixture(scope="module")
def main():
    return load_main(FOLDER)


def gram_of(X, model):
    return model.gram_matrix(sp.csr_matrix(X), torch.device("cpu"))


# ---------------------------------------------------------------- (a) the closed form


def test_edlae_two_items_by_hand(model):
    """Two items: column 2 of B regresses item 2 on item 1 alone, with the penalty
    lambda + p/(1-p) G_11, so B_12 = G_12 / (G_11 + p/(1-p) G_11 + lambda)
    = G_12 / (G_11 / (1-p) + lambda); B_21 likewise, and the diagonal is zero."""
    X = np.array([[1, 1], [1, 0], [1, 1], [0, 1], [1, 0]], dtype=np.float64)
    # G_11 = 4, G_22 = 3, G_12 = 2
    p, lam = 0.25, 2.0
    B = model.edlae_weights(gram_of(X, model), lam, p).numpy()
    assert B[0, 1] == pytest.approx(2 / (4 / 0.75 + 2), rel=1e-12)  # 2 / (16/3 + 2) = 3/11
    assert B[1, 0] == pytest.approx(2 / (3 / 0.75 + 2), rel=1e-12)  # 2 / 6 = 1/3
    assert B[0, 1] == pytest.approx(3 / 11, rel=1e-12)
    assert B[0, 0] == 0 and B[1, 1] == 0


def emphasized_dropout_minimiser(X, p, lam):
    """argmin_B E_z[ sum_u sum_j [z_uj = 0] (x_uj - sum_i z_ui x_ui B_ij / (1-p))^2 ]
    + p lam ||B||^2 with every mask z of a user enumerated (dropout rate p, inverted
    scaling; only the dropped-out outputs count: full emphasis). A weighted least-squares
    problem per column j: one row per (user, mask with z_j = 0), weight Pr(z)."""
    n_users, n_items = X.shape
    B = np.zeros((n_items, n_items))
    for j in range(n_items):
        rows, targets = [], []
        for mask in itertools.product((0, 1), repeat=n_items):
            z = np.array(mask, dtype=np.float64)
            if z[j] != 0:
                continue  # full emphasis: output j counts only when input j is dropped
            weight = np.sqrt(np.prod(np.where(z == 1, 1 - p, p)))
            rows.append(weight * X * z / (1 - p))
            targets.append(weight * X[:, j])
        rows.append(np.sqrt(p * lam) * np.eye(n_items))
        targets.append(np.zeros(n_items))
        B[:, j] = np.linalg.lstsq(np.vstack(rows), np.concatenate(targets), rcond=None)[0]
    return B


@pytest.mark.parametrize("p, lam", [(0.2, 1.5), (0.5, 0.3), (0.33, 4.0)])
def test_edlae_equals_the_exact_emphasized_dropout_minimiser(model, p, lam):
    """The expected loss divided by p is ||X_j - X b||^2 + b^T (p/(1-p) diagMat(G) +
    lambda I) b with b_j free of the loss (the L2 term sets it to 0): Steck's Eqs. 8-9."""
    rng = np.random.RandomState(1)
    X = (rng.rand(9, 4) < 0.5).astype(np.float64)
    X[0] = 1  # every item used at least once
    expected = emphasized_dropout_minimiser(X, p, lam)
    B = model.edlae_weights(gram_of(X, model), lam, p)
    assert B.dtype == torch.float64
    np.testing.assert_allclose(B.numpy(), expected, atol=1e-10)
    assert np.all(np.diag(expected) == pytest.approx(0, abs=1e-12))


def test_edlae_rejects_bad_parameters(model):
    gram = torch.eye(3, dtype=torch.float64)
    for lam, p in [(0.0, 0.1), (-1.0, 0.1), (1.0, 1.0), (1.0, -0.1)]:
        with pytest.raises(ValueError):
            model.edlae_weights(gram, lam, p)


# ---------------------------------------------------------------- (b) dropout 0


def test_edlae_without_dropout_is_ease_a_ridge_regression_per_item(model):
    """p = 0: column j is the ridge regression of item j on the other items,
    (X_-j^T X_-j + lambda I)^-1 X_-j^T x_j, with B_jj = 0 (EASE). The unconstrained
    (X^T X + lambda I)^-1 X^T X is what dropout without emphasis (DLAE) gives; it keeps
    a diagonal that EDLAE has not."""
    rng = np.random.RandomState(0)
    X = (rng.rand(40, 12) < 0.3).astype(np.float64)
    lam = 3.0
    gram = gram_of(X, model)
    B = model.edlae_weights(gram, lam, 0.0).numpy()
    for j in range(12):
        others = np.delete(np.arange(12), j)
        Xo = X[:, others]
        ridge = np.linalg.solve(Xo.T @ Xo + lam * np.eye(11), Xo.T @ X[:, j])
        np.testing.assert_allclose(B[others, j], ridge, atol=1e-12)
        assert B[j, j] == 0
    np.testing.assert_array_equal(B, model.ease_weights(gram, lam).numpy())
    unconstrained = np.linalg.solve(X.T @ X + lam * np.eye(12), X.T @ X)
    assert np.all(np.diag(unconstrained) > 0.05)  # what EDLAE is not


# ---------------------------------------------------------------- (c) the search


@pytest.fixture(scope="module")
def planted_split(tmp_path_factory):
    """The cluster data of conftest (1500 users, 120 items): for learning the structure."""
    path = write_ratings(tmp_path_factory.mktemp("planted") / "ratings.dat",
                         *planted_top_n_rows())
    data = load_module(FOLDER, "data")
    return path, data.split_top_n(data.load_ratings(path), heldout_users=200)


def topic_rows(n_users=1500, n_items=120, n_topics=8, mix=0.7, seed=0):
    """Users drawing 8-19 items each from a mixture of their own topics (share mix) and a
    Zipf popularity: only 500 training users for 120 items, so lambda matters, and the
    validation NDCG@100 rises, then falls with lambda (optimum inside the test grid)."""
    rng = np.random.RandomState(seed)
    topics = rng.dirichlet(np.full(n_items, 0.1), n_topics)
    popularity = 1.0 / np.arange(1, n_items + 1)
    popularity /= popularity.sum()
    users, items = [], []
    for user in range(1, n_users + 1):
        probs = mix * (rng.dirichlet(np.full(n_topics, 0.3)) @ topics) + (1 - mix) * popularity
        chosen = rng.choice(n_items, rng.randint(8, 20), replace=False, p=probs)
        users += [user] * len(chosen)
        items += list(chosen + 1)
    n = len(users)
    return np.array(users), np.array(items), np.full(n, 5), 1_000_000 + np.arange(n)


@pytest.fixture(scope="module")
def topic_split(tmp_path_factory):
    path = write_ratings(tmp_path_factory.mktemp("topics") / "ratings.dat", *topic_rows())
    data = load_module(FOLDER, "data")
    return data.split_top_n(data.load_ratings(path), heldout_users=500)


def exhaustive_float64(model, metrics, gram, held_out, lambdas, dropouts):
    """Every (dropout, lambda), B in float64 from edlae_weights, dense X_v B, first best."""
    best, table = None, {}
    for dropout in dropouts:
        for lam in lambdas:
            B = model.edlae_weights(gram, lam, dropout).numpy()
            value = metrics.ranking_metrics(held_out.fold_in.toarray() @ B, held_out.fold_in,
                                            held_out.target, [100])["ndcg@100"]
            table[lam, dropout] = value
            if best is None or value > best[2]:
                best = (lam, dropout, value)
    return best, table


@pytest.mark.parametrize("model_key, lambdas, dropouts", [
    ("ease", [0.3, 1, 3, 10, 30, 100, 300, 1000, 3000], [0.0]),
    ("edlae", [0.1, 0.3, 1, 3, 10, 30, 100, 300, 1000], [0.1, 0.3, 0.6])])
def test_fast_search_selects_what_exhaustive_float64_selects(model, main, topic_split,
                                                             model_key, lambdas, dropouts):
    split = topic_split
    metrics = main.metrics
    gram = main.model.gram_matrix(split.train, torch.device("cpu"))
    (lam, dropout, value), table = exhaustive_float64(main.model, metrics, gram,
                                                      split.validation, lambdas, dropouts)
    # the planted optimum lies inside the grid, not on an edge (else the test proves less)
    assert lambdas[0] < lam < lambdas[-1], table
    solved = []
    chosen = main.search(gram, split.validation, lambdas, dropouts, [100],
                         record=lambda lam, p, validation: solved.append((lam, p)))
    assert chosen[:2] == (lam, dropout), (chosen, table)
    assert chosen[2]["ndcg@100"] == pytest.approx(value, abs=2e-3)  # float32 validation
    assert len(solved) == len(set(solved)) < len(lambdas) * len(dropouts)  # fewer solves
    exhaustive = main.search(gram, split.validation, lambdas, dropouts, [100],
                             exhaustive=True, dtype=torch.float64)
    assert exhaustive[:2] == (lam, dropout)


def test_batched_evaluation_equals_one_batch(main, topic_split, monkeypatch, tmp_path):
    """Held-out users are scored EVAL_BATCH at a time (memory that grows with the data): with
    batches of 7 users the metrics, the per-user CSV and the search's choice are those of one
    batch."""
    split = topic_split
    gram = main.model.gram_matrix(split.train, torch.device("cpu"))
    weights = main.model.ease_weights(gram, 30.0)
    whole = main.evaluate(weights, split.test, [10, 100], tmp_path / "whole.csv")
    whole_search = main.search(gram, split.validation, [3, 30, 300], [0.0], [100])
    monkeypatch.setattr(main, "EVAL_BATCH", 7)
    calls = []
    original = main.metrics.per_user_metrics
    monkeypatch.setattr(main.metrics, "per_user_metrics",
                        lambda scores, *rest: calls.append(len(scores)) or original(scores, *rest))
    batched = main.evaluate(weights, split.test, [10, 100], tmp_path / "batched.csv")
    assert max(calls) == 7 and sum(calls) == split.test.fold_in.shape[0]
    assert batched == pytest.approx(whole, rel=1e-12)
    assert (tmp_path / "batched.csv").read_text() == (tmp_path / "whole.csv").read_text()
    batched_search = main.search(gram, split.validation, [3, 30, 300], [0.0], [100])
    assert batched_search[:2] == whole_search[:2]
    assert batched_search[2] == pytest.approx(whole_search[2], rel=1e-9)


def test_gram_is_exact_float32_and_final_solve_frees_it(main, topic_split):
    """The Gram matrix is held in float32 (exact: whole co-occurrence counts); the final
    float64 B from final_weights equals edlae_weights' and takes the Gram out of its holder."""
    model = main.model
    gram = model.gram_matrix(topic_split.train, torch.device("cpu"))
    X = topic_split.train.toarray().astype(np.float64)
    assert gram.dtype == torch.float32
    np.testing.assert_array_equal(gram.double().numpy(), X.T @ X)
    holder = [gram]
    weights = main.final_weights(holder, 30.0, 0.25)
    assert holder == [] and weights.dtype == torch.float64
    np.testing.assert_allclose(weights.numpy(), model.edlae_weights(gram, 30.0, 0.25).numpy(),
                               rtol=0, atol=1e-12)
    with pytest.raises(ValueError):
        model.gram_matrix(sp.csr_matrix(X * 2), torch.device("cpu"))


def test_scoring_reads_row_major_weights(main, topic_split):
    """The Gram matrix comes from scipy column-major and every in-place solve keeps that
    layout; scipy's sparse-dense product copies a column-major operand on every call (at
    26,744 items, 5.7 GB per batch of users). So the weights that score users are made
    row-major once, with the same values."""
    model = main.model
    gram = model.gram_matrix(topic_split.train, torch.device("cpu"))
    assert not gram.is_contiguous()  # the layout this guards against
    final = main.final_weights([gram.clone()], 30.0, 0.25)
    closed = model.edlae_weights(gram, 30.0, 0.25)
    assert final.is_contiguous() and closed.is_contiguous()
    np.testing.assert_array_equal(final.numpy(), closed.numpy())


def test_search_grid_on_unimodal_curves(model):
    """The golden-section bracket finds the maximum of any unimodal curve on grids of 1 to
    16 values, ties to the smaller value, each value scored at most once."""
    for n in range(1, 17):
        for peak in range(n):
            for plateau in (0, 1):
                calls = []

                def score(v):
                    calls.append(v)
                    return -max(0, abs(v - peak) - plateau)

                value, best = model.search_grid(list(range(n))[::-1], score)
                assert value == max(0, peak - plateau) and best == 0, (n, peak, plateau)
                assert len(calls) == len(set(calls))
                if n >= 9:  # the default grids have 9 values: at most 6 solved
                    assert len(calls) <= (6 if n == 9 else n - 3), (n, peak, calls)


# ---------------------------------------------------------------- (d) end to end


def test_main_edlae_end_to_end_learns_planted_structure(main, planted_split, tmp_path,
                                                        monkeypatch):
    """In process (to see the final B before it is saved as float32): the EDLAE run's B
    is float64 and equals edlae_weights at the selected values; its test metrics are those
    of that B; it beats popularity by far and matches co-occurrence like EASE."""
    path, split = planted_split
    saved = {}
    real_save = main.save_checkpoint

    def spy(run_dir, model_name, weights, lam, dropout, item_ids):
        saved.update(weights=weights.clone(), lam=lam, dropout=dropout)
        real_save(run_dir, model_name, weights, lam, dropout, item_ids)

    monkeypatch.setattr(main, "save_checkpoint", spy)
    run_dir = tmp_path / "run"
    results = main.run(main.parse_args([
        "--model", "edlae", "--data-dir", str(path.parent), "--out-dir", str(run_dir),
        "--heldout-users", "200", "--lambdas", "1,10,100", "--dropouts", "0.1,0.4",
        "--comet", "off", "--quiet", "--no-download"]))
    assert results["model"] == "EDLAE"
    assert set(results["selected"]) == {"lambda", "dropout"}
    lam, dropout = results["selected"]["lambda"], results["selected"]["dropout"]
    assert (saved["lam"], saved["dropout"]) == (lam, dropout)
    gram = main.model.gram_matrix(split.train, torch.device("cpu"))
    expected = main.model.edlae_weights(gram, lam, dropout)
    assert saved["weights"].dtype == torch.float64
    torch.testing.assert_close(saved["weights"], expected, rtol=0, atol=1e-12)
    test = split.test
    closed = main.metrics.ranking_metrics(test.fold_in.toarray() @ expected.numpy(),
                                          test.fold_in, test.target, [10, 20, 50, 100])
    assert results["test"] == pytest.approx(closed, rel=1e-9, abs=1e-12)
    popular, cooccurring = popularity_and_cooccurrence(main.metrics, split)
    assert results["test"]["ndcg@10"] > popular["ndcg@10"] + 0.4
    assert results["test"]["ndcg@10"] > 0.95 * cooccurring["ndcg@10"]
    history = read_history(run_dir)
    assert all(set(line) == {"step", "lambda", "dropout", "validation"} for line in history)
    checkpoint = torch.load(run_dir / "model.pt", weights_only=False)
    assert {k: checkpoint[k] for k in ("model", "lambda", "dropout")} == {
        "model": "EDLAE", "lambda": lam, "dropout": dropout}
    assert checkpoint["weights"].dtype == torch.float32


def test_edlae_subprocess_run_and_recommend(planted_split, tmp_path):
    """`python main.py --model edlae` as a user runs it, then recommend.py on the run."""
    path, _ = planted_split
    run_dir = tmp_path / "run"
    done = run_main(FOLDER, "--model", "edlae", "--data-dir", path.parent, "--out-dir",
                    run_dir, "--heldout-users", "200", "--lam", "10", "--dropout", "0.25",
                    "--comet", "off", "--quiet", "--no-download")
    assert done.returncode == 0, done.stderr
    results = read_results(run_dir)
    assert results["model"] == "EDLAE"
    assert results["selected"] == {"lambda": 10.0, "dropout": 0.25}
    assert json.loads((run_dir / "config.json").read_text())["model"] == "EDLAE"
    done = run_script(REPO / FOLDER / "recommend.py", run_dir, "--history", "1,2,3", "-k", "5",
                      "--json")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["model"] == "EDLAE" and len(document["recommendations"]) == 5
    # the planted clusters: items 1-12 are one cluster, so its other items come first
    assert all(r["movie_id"] <= 12 for r in document["recommendations"]), document


def test_dropout_flags_belong_to_edlae():
    done = run_main(FOLDER, "--dropout", "0.2")
    assert done.returncode == 2 and "--model edlae only" in done.stderr
    done = run_main(FOLDER, "--model", "edlae", "--dropouts", "0.1,1.0")
    assert done.returncode == 2 and "argument --dropouts" in done.stderr
