"""Hand-worked checks of the top-N metrics, run against every top-N folder's metrics.py."""
import math

import numpy as np
import pytest
import scipy.sparse as sp

from conftest import TOP_N_FOLDERS, load_module


@pytest.fixture(params=TOP_N_FOLDERS)
def metrics(request):
    return load_module(request.param, "metrics")


def csr(rows):
    return sp.csr_matrix(np.array(rows, dtype=np.float32))


# Three users, six items.
# user 0: fold-in {0}, targets {1, 3}; ranking after masking 1,2,3,4,5 (item 0 masked).
# user 1: no target: left out of every average.
# user 2: fold-in {4, 5} hold the two best scores; target {0} ranks 4th once they are masked.
SCORES = np.array([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4],
                   [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
                   [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]])
FOLD_IN = csr([[1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 1, 1]])
TARGET = csr([[0, 1, 0, 1, 0, 0], [0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]])


def test_hand_worked_values(metrics):
    result = metrics.ranking_metrics(SCORES, FOLD_IN, TARGET, ks=(2, 3, 4))
    idcg_two = 1 + 1 / math.log2(3)
    assert result["n_users"] == 2
    # K=2: user 0 ranks 1,2 -> one hit at rank 1; user 2 ranks 3,2 -> no hit.
    assert result["precision@2"] == pytest.approx((1 / 2 + 0) / 2)
    assert result["recall@2"] == pytest.approx((1 / 2 + 0) / 2)
    assert result["ndcg@2"] == pytest.approx((1 / idcg_two + 0) / 2)
    # K=3: user 0 hits at ranks 1 and 3; user 2 still none.
    assert result["precision@3"] == pytest.approx((2 / 3 + 0) / 2)
    assert result["recall@3"] == pytest.approx((1.0 + 0) / 2)
    assert result["ndcg@3"] == pytest.approx(((1 + 1 / math.log2(4)) / idcg_two + 0) / 2)
    # K=4: user 2's target at rank 4; its IDCG covers min(4, 1) = 1 item.
    assert result["precision@4"] == pytest.approx((2 / 4 + 1 / 4) / 2)
    assert result["recall@4"] == pytest.approx((1.0 + 1.0) / 2)
    assert result["ndcg@4"] == pytest.approx(
        ((1 + 1 / math.log2(4)) / idcg_two + 1 / math.log2(5)) / 2)


def test_recall_divides_by_min_of_k_and_targets(metrics):
    scores = np.array([[6.0, 5.0, 4.0, 3.0, 2.0, 1.0]])
    target = csr([[1, 1, 1, 1, 1, 0]])
    result = metrics.ranking_metrics(scores, csr([[0] * 6]), target, ks=(2, 5))
    assert result["recall@2"] == pytest.approx(1.0)   # 2 hits / min(2, 5)
    assert result["ndcg@2"] == pytest.approx(1.0)
    assert result["recall@5"] == pytest.approx(1.0)
    assert result["precision@5"] == pytest.approx(1.0)


def test_fold_in_items_never_ranked_above_others(metrics):
    scores = np.array([[10.0, 9.0, 1.0, 0.5]])
    fold_in = csr([[1, 1, 0, 0]])
    top = metrics.top_k_items(scores, fold_in, 2)
    assert top.tolist() == [[2, 3]]
    result = metrics.ranking_metrics(scores, fold_in, csr([[0, 0, 0, 1]]), ks=(1,))
    assert result["recall@1"] == 0.0 and result["precision@1"] == 0.0


def test_ties_go_to_the_lower_item_index(metrics):
    top = metrics.top_k_items(np.zeros((1, 5)), csr([[0, 1, 0, 0, 0]]), 3)
    assert top.tolist() == [[0, 2, 3]]


def full_stable_ranking(scores, fold_in, k):
    """The definition: a stable sort of -scores after masking fold-in items to -inf."""
    masked = np.array(scores, dtype=np.float64, copy=True)
    rows, cols = fold_in.nonzero()
    masked[rows, cols] = -np.inf
    return np.argsort(-masked, axis=1, kind="stable")[:, :k]


def test_partial_sort_equals_the_full_stable_sort(metrics):
    """top_k_items sorts only the k best; with ties at the k-th value (few distinct
    scores), NaN, infinities and rows with fewer unmasked items than k it must still
    return exactly the full stable sort's first k items."""
    rng = np.random.RandomState(3)
    for trial in range(400):
        users, items = rng.randint(1, 25), rng.randint(1, 50)
        if trial % 2:
            scores = rng.randint(0, rng.randint(1, 5), size=(users, items)).astype(float)
        else:
            scores = rng.normal(size=(users, items))
        for value, every in ((np.nan, 5), (np.inf, 7), (-np.inf, 11)):
            if trial % every == 0:
                scores[rng.rand(users, items) < 0.1] = value
        fold_in = sp.csr_matrix(rng.rand(users, items) < rng.rand())
        k = rng.randint(1, items + 3)
        expected = full_stable_ranking(scores, fold_in, min(k, items))
        assert metrics.top_k_items(scores, fold_in, k).tolist() == expected.tolist()


def test_batches_average_like_one_call(metrics):
    rng = np.random.RandomState(0)
    scores = rng.rand(50, 30)
    fold_in_dense = rng.rand(50, 30) < 0.2
    fold_in = sp.csr_matrix(fold_in_dense, dtype=np.float32)
    target = sp.csr_matrix((rng.rand(50, 30) < 0.2) & ~fold_in_dense, dtype=np.float32)
    whole = metrics.ranking_metrics(scores, fold_in, target)
    parts = metrics.average([metrics.per_user_metrics(scores[i:i + 7], fold_in[i:i + 7],
                                                      target[i:i + 7])
                             for i in range(0, 50, 7)])
    assert parts == pytest.approx(whole)


# ---------------------------------------------------------------- gaps found by mutation
# testing (issue #16, mutation/README.md)


def test_default_cutoffs_are_the_protocol_b_ones(metrics):
    result = metrics.ranking_metrics(SCORES, FOLD_IN, TARGET)
    assert set(result) == {f"{name}@{k}" for name in ("precision", "recall", "ndcg")
                           for k in (10, 20, 50, 100)} | {"n_users"}


def test_ndcg_with_three_targets_divides_by_the_three_item_ideal(metrics):
    # One user, five items ranked 0..4, targets {0, 2, 3}: hits at ranks 1, 3 and 4.
    scores = np.array([[5.0, 4.0, 3.0, 2.0, 1.0]])
    result = metrics.ranking_metrics(scores, csr([[0] * 5]), csr([[1, 0, 1, 1, 0]]),
                                     ks=(3, 5))
    idcg_three = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert result["ndcg@3"] == pytest.approx((1 + 1 / math.log2(4)) / idcg_three)
    assert result["ndcg@5"] == pytest.approx(
        (1 + 1 / math.log2(4) + 1 / math.log2(5)) / idcg_three)


def test_masking_leaves_the_callers_scores_alone_and_takes_float32(metrics):
    scores = SCORES.copy()
    top = metrics.top_k_items(scores, FOLD_IN, 3)
    assert top.tolist() == [[1, 2, 3], [4, 3, 2], [3, 2, 1]]
    np.testing.assert_array_equal(scores, SCORES)  # no -inf written into the input
    as_float32 = metrics.ranking_metrics(SCORES.astype(np.float32), FOLD_IN, TARGET,
                                         ks=(2, 4))
    assert as_float32 == pytest.approx(metrics.ranking_metrics(SCORES, FOLD_IN, TARGET,
                                                               ks=(2, 4)))


def test_write_per_user_has_one_row_per_user_with_a_target(metrics, tmp_path):
    per_user = metrics.per_user_metrics(SCORES, FOLD_IN, TARGET, ks=(2,))
    path = tmp_path / "test_per_user.csv"
    metrics.write_per_user(path, np.array([11, 12, 13]), FOLD_IN, TARGET, per_user)
    # user 12 has no target and no row; user 11: 1 fold-in item, 2 targets, a hit at rank
    # 1 of 2; user 13: 2 fold-in items, 1 target, no hit in the top 2.
    ndcg = repr(float(per_user["ndcg@2"][0]))
    assert float(ndcg) == pytest.approx(1 / (1 + 1 / math.log2(3)))
    assert path.read_text() == ("user_id,n_fold_in,n_target,precision@2,recall@2,ndcg@2\n"
                                f"11,1,2,0.5,0.5,{ndcg}\n"
                                "13,2,1,0.0,0.0,0.0\n")
