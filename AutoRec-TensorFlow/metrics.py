"""Rating-prediction metric of PROTOCOLS.md, Protocol A: one global RMSE over evaluated pairs.

Identical in both rating folders (tests/test_consistency.py checks it). Predictions are
clipped to the rating scale 1..5; a pair whose user or movie has no training rating is
predicted COLD_START_RATING (3.0) whatever the model says.
"""
import numpy as np

COLD_START_RATING = 3.0
MIN_RATING, MAX_RATING = 1.0, 5.0


def cold_start(users, items, train):
    """True for each pair whose user row or item column of `train` holds no rating.

    users, items: index arrays; train: the scipy sparse training matrix (users x items).
    """
    user_counts = np.diff(train.tocsr().indptr)
    item_counts = np.diff(train.tocsc().indptr)
    return (user_counts[users] == 0) | (item_counts[items] == 0)


def final_predictions(predictions, users, items, train):
    """Model outputs for the pairs, with cold-start pairs set to 3.0 and clipped to 1..5."""
    predictions = np.asarray(predictions, dtype=np.float64)
    predictions = np.where(cold_start(users, items, train), COLD_START_RATING, predictions)
    return np.clip(predictions, MIN_RATING, MAX_RATING)


def rmse(predictions, ratings):
    """sqrt(mean((clip(p, 1, 5) - r)^2)) over all pairs."""
    predictions = np.clip(np.asarray(predictions, dtype=np.float64), MIN_RATING, MAX_RATING)
    errors = predictions - np.asarray(ratings, dtype=np.float64)
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
