"""Top-N ranking metrics of PROTOCOLS.md, Protocol B: Precision, Recall and NDCG at K.

Identical in every top-N folder (tests/test_consistency.py checks it). Items are ranked
by score, highest first, ties broken by the lower item index; fold-in items are masked
to -inf first. Only users with at least one target count in the averages.
"""
import numpy as np

DEFAULT_KS = (10, 20, 50, 100)


def top_k_items(scores, fold_in, k):
    """Indices of each row's k best items after masking fold-in items to -inf.

    scores: dense (users x items) array; fold_in: scipy sparse matrix of the same shape.
    """
    negated = np.array(scores, dtype=np.float64, copy=True)
    np.negative(negated, out=negated)  # ascending order of -scores; in place: one copy
    rows, cols = fold_in.nonzero()
    negated[rows, cols] = np.inf
    if k >= negated.shape[1]:
        return np.argsort(negated, axis=1, kind="stable")
    # A partial sort: the k smallest of -scores per row, then sorted by (value, index).
    chosen = np.sort(np.argpartition(negated, k - 1, axis=1)[:, :k], axis=1)
    values = np.take_along_axis(negated, chosen, axis=1)
    top = np.take_along_axis(chosen, np.argsort(values, axis=1, kind="stable"), axis=1)
    # Where more items tie at the k-th value than were chosen, argpartition picked among
    # them freely; those rows (rare: exact ties, NaN) get the full stable sort.
    kth = values.max(axis=1, keepdims=True)
    ambiguous = (np.isnan(kth[:, 0]) | ((negated == kth).sum(axis=1)
                                        != (values == kth).sum(axis=1)))
    if ambiguous.any():
        top[ambiguous] = np.argsort(negated[ambiguous], axis=1, kind="stable")[:, :k]
    return top


def per_user_metrics(scores, fold_in, target, ks=DEFAULT_KS):
    """Per-user metric arrays, name -> values, over the rows that have at least one target."""
    n_targets = np.asarray(target.sum(axis=1)).ravel()
    has_target = n_targets > 0
    top = top_k_items(scores[has_target], fold_in[has_target], max(ks))
    target_dense = target[has_target].toarray() > 0
    hits = np.take_along_axis(target_dense, top, axis=1)
    n_targets = n_targets[has_target]
    discounts = 1.0 / np.log2(np.arange(2, hits.shape[1] + 2))
    result = {}
    for k in ks:
        hits_k = hits[:, :k].sum(axis=1)
        ideal = np.minimum(k, n_targets).astype(int)
        dcg = (hits[:, :k] * discounts[:k]).sum(axis=1)
        idcg = np.cumsum(discounts)[np.minimum(ideal, len(discounts)) - 1]
        result[f"precision@{k}"] = hits_k / k
        result[f"recall@{k}"] = hits_k / np.minimum(k, n_targets)
        result[f"ndcg@{k}"] = dcg / idcg
    return result


def merge(per_user_batches):
    """One per_user_metrics result (name -> values) from a list of them, in batch order."""
    names = per_user_batches[0].keys()
    return {name: np.concatenate([batch[name] for batch in per_user_batches])
            for name in names}


def average(per_user_batches):
    """Mean of each metric over all users of a list of per_user_metrics results."""
    merged = merge(per_user_batches)
    summary = {name: float(values.mean()) for name, values in merged.items()}
    summary["n_users"] = len(next(iter(merged.values())))
    return summary


def write_per_user(path, user_ids, fold_in, target, per_user):
    """CSV of every evaluated user's metrics, for paired comparisons between models.

    Columns: user_id, n_fold_in, n_target, then each metric of per_user (the rows that
    per_user_metrics kept: users with at least one target, in user order).
    """
    n_targets = np.asarray(target.sum(axis=1)).ravel()
    kept = n_targets > 0
    n_fold_in = np.asarray(fold_in.sum(axis=1)).ravel()[kept]
    names = list(per_user)
    lines = [",".join(["user_id", "n_fold_in", "n_target", *names])]
    for row, user_id in enumerate(np.asarray(user_ids)[kept]):
        values = [repr(float(per_user[name][row])) for name in names]
        lines.append(",".join([str(user_id), str(int(n_fold_in[row])),
                               str(int(n_targets[kept][row])), *values]))
    path.write_text("\n".join(lines) + "\n")


def ranking_metrics(scores, fold_in, target, ks=DEFAULT_KS):
    """Averaged metrics for one dense score matrix: the simple, single-batch entry point."""
    return average([per_user_metrics(scores, fold_in, target, ks)])
