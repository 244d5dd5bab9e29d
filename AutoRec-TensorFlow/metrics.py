"""Rating-prediction metric of PROTOCOLS.md, Protocol A: one global RMSE over evaluated pairs.

Identical in both rating folders (tests/test_consistency.py checks it). The rating scale is
the range of the TRAINING ratings (rating_scale; never the held-out ratings, which would
leak them): predictions are clipped to it, and a pair whose user or movie has no training
rating is predicted its midpoint whatever the model says. On ML-1M that is 1..5 and 3.0.
"""
import numpy as np


def rating_scale(train):
    """(low, high): the smallest and largest rating of the scipy training matrix."""
    values = train.tocsr().data
    return float(values.min()), float(values.max())


def cold_start_rating(train):
    """The prediction for a cold-start pair: the midpoint of the training ratings' scale."""
    low, high = rating_scale(train)
    return (low + high) / 2


def cold_start(users, items, train):
    """True for each pair whose user row or item column of `train` holds no rating.

    users, items: index arrays; train: the scipy sparse training matrix (users x items).
    """
    user_counts = np.diff(train.tocsr().indptr)
    item_counts = np.diff(train.tocsc().indptr)
    return (user_counts[users] == 0) | (item_counts[items] == 0)


def final_predictions(predictions, users, items, train):
    """Model outputs for the pairs, cold-start pairs set to the scale's midpoint, all
    clipped to the scale of the training ratings."""
    predictions = np.asarray(predictions, dtype=np.float64)
    predictions = np.where(cold_start(users, items, train), cold_start_rating(train),
                           predictions)
    return np.clip(predictions, *rating_scale(train))


def rmse(predictions, ratings):
    """sqrt(mean((p - r)^2)) over all pairs; p are final predictions (final_predictions)."""
    errors = np.asarray(predictions, dtype=np.float64) - np.asarray(ratings, dtype=np.float64)
    return float(np.sqrt(np.mean(errors ** 2)))


def rating_metrics(predictions, pairs, train):
    """{"rmse", "n_ratings"} for model outputs on pairs (a data.Pairs-like object)."""
    final = final_predictions(predictions, pairs.users, pairs.items, train)
    return {"rmse": rmse(final, pairs.ratings), "n_ratings": int(len(pairs.ratings))}


def write_predictions(path, pairs, predictions, split):
    """CSV of every evaluated pair (user_id, movie_id, rating, prediction), in split order,
    with the final (cold-start rule, clipped) predictions: for paired comparisons."""
    final = final_predictions(predictions, pairs.users, pairs.items, split.train)
    user_ids = np.asarray(split.user_ids)[pairs.users]
    item_ids = np.asarray(split.item_ids)[pairs.items]
    lines = ["user_id,movie_id,rating,prediction"]
    lines += [f"{u},{i},{r:g},{p!r}" for u, i, r, p in
              zip(user_ids.tolist(), item_ids.tolist(), pairs.ratings.tolist(), final.tolist())]
    path.write_text("\n".join(lines) + "\n")
