"""Tests for the gaps that mutation testing found (issue #16; mutation/README.md): each one
kills a mutant of metrics.py or data.py that the rest of the suite let survive. Hand-worked
values on tiny inputs; every copy of a file is checked, like the tests beside them.
"""
import inspect
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp

from conftest import RATING_FOLDERS, TOP_N_FOLDERS, load_module, write_ratings


@pytest.fixture(params=RATING_FOLDERS)
def rating_metrics(request):
    return load_module(request.param, "metrics")


@pytest.fixture(params=TOP_N_FOLDERS)
def top_n_data(request):
    return load_module(request.param, "data")


@pytest.fixture(params=TOP_N_FOLDERS + RATING_FOLDERS)
def data(request):
    """Every folder's data.py: the parsing half is the same in all six."""
    return load_module(request.param, "data")


# ---------------------------------------------------------------- rating metrics.py


def test_write_predictions_hand_worked(rating_metrics, tmp_path):
    # users 10, 20, 30 x movies 7, 8, 9; user 30 and movie 9 have no training rating.
    train = sp.csr_matrix(np.array([[4, 1, 0], [5, 2, 0], [0, 0, 0]], dtype=np.float32))
    split = SimpleNamespace(user_ids=np.array([10, 20, 30]), item_ids=np.array([7, 8, 9]),
                            train=train)
    pairs = SimpleNamespace(users=np.array([0, 1, 2, 1, 2]), items=np.array([1, 2, 0, 0, 2]),
                            ratings=np.array([1, 4, 5, 3, 2], dtype=np.float32))
    path = tmp_path / "test_predictions.csv"
    rating_metrics.write_predictions(path, pairs, np.array([0.5, 4.25, 4.0, 2.75, 4.5]), split)
    # clipped to 1.0; cold movie 9 -> 3.0; cold user 30 -> 3.0; kept as it is; cold user
    # and cold movie together -> 3.0 as well.
    assert path.read_text() == ("user_id,movie_id,rating,prediction\n"
                                "10,8,1,1.0\n"
                                "20,9,4,3.0\n"
                                "30,7,5,3.0\n"
                                "20,7,3,2.75\n"
                                "30,9,2,3.0\n")


# ---------------------------------------------------------------- parsing (data.py)


GOOD_LINES = "1::1::1::100\n2::20::5::200\n"  # id 1, ratings 1 and 5: the ends of the ranges


@pytest.mark.parametrize("bad_line, reason", [
    ("3::30::4::300::7",
     "expected 4 fields separated by '::', found 5 (UserID::MovieID::Rating::Timestamp)"),
    ("0::30::4::300", "ids must be positive"),
    ("3::0::4::300", "ids must be positive"),
    ("-3::30::4::300", "UserID '-3' is not a non-negative integer"),
    ("3::0::0::300", "ids must be positive"),
    ("0::0::4::300", "ids must be positive"),
    ("3::-30::4::300", "MovieID '-30' is not a non-negative integer"),
    ("3::30::6::300", "rating 6 is outside 0.5..5"),
])
def test_bad_line_is_named_with_its_reason(data, tmp_path, bad_line, reason):
    path = tmp_path / "ratings.dat"
    path.write_text(f"{GOOD_LINES}{bad_line}\n4::40::4::400\n")
    with pytest.raises(data.DataError) as error:
        data.load_ratings(path)
    assert str(error.value) == f"{path}, line 3: {reason}: {bad_line!r}"


def test_first_line_with_two_fields_is_measured_against_four(data, tmp_path):
    path = tmp_path / "ratings.dat"
    path.write_text("1::10\n" + GOOD_LINES)
    with pytest.raises(data.DataError) as error:
        data.load_ratings(path)
    assert str(error.value) == (f"{path}, line 1: expected 4 fields separated by '::', found 2 "
                                f"(UserID::MovieID::Rating::Timestamp): '1::10'")


def test_long_bad_line_is_shown_cut_to_80_characters(data, tmp_path):
    bad_line = "3::30::4::" + "9" * 100 + "x"
    path = tmp_path / "ratings.dat"
    path.write_text(f"{GOOD_LINES}{bad_line}\n")
    with pytest.raises(data.DataError) as error:
        data.load_ratings(path)
    assert str(error.value).endswith(f": {bad_line[:80]!r}")
    assert len(bad_line[:80]) == 80 and bad_line[:81] not in str(error.value)


# ---------------------------------------------------------------- Protocol B split (data.py)


def test_too_few_users_for_two_held_out_groups(top_n_data, tmp_path):
    rows = np.array([(u, m, 5, m) for u in range(1, 5) for m in range(1, 6)]).T
    path = write_ratings(tmp_path / "ratings.dat", *rows)  # 4 users x 5 positives
    ratings = top_n_data.load_ratings(path)
    with pytest.raises(top_n_data.DataError) as error:
        top_n_data.split_top_n(ratings, heldout_users=2)  # 4 <= 2 x 2
    assert str(error.value) == (f"{path}: 4 users have 5 or more positives, too few for "
                                f"2 x 2 held-out users")
    assert top_n_data.split_top_n(ratings, heldout_users=1).train_user_ids.size == 2
    three = top_n_data.load_ratings(write_ratings(tmp_path / "three.dat", *rows[:, 5:]))
    with pytest.raises(top_n_data.DataError, match="3 users have 5 or more positives"):
        top_n_data.split_top_n(three, heldout_users=2)  # 3 <= 2 x 2
    assert top_n_data.split_top_n(three, heldout_users=1).train_user_ids.size == 1


def test_split_defaults_are_the_protocols(top_n_data):
    defaults = {name: parameter.default for name, parameter
                in inspect.signature(top_n_data.split_top_n).parameters.items()}
    assert defaults == {"ratings": inspect.Parameter.empty, "seed": 98765, "min_rating": 4,
                        "heldout_users": 600, "holdout": "random", "min_positives": 5}


def test_temporal_given_as_a_new_string_still_needs_timestamps(top_n_data, tmp_path):
    path = tmp_path / "ratings.dat"
    path.write_text("".join(line.rsplit("::", 1)[0] + "\n" for line in TEN_EACH.splitlines()))
    ratings = top_n_data.load_ratings(path)
    assert ratings.timestamps is None
    with pytest.raises(top_n_data.DataError, match="needs timestamps"):
        top_n_data.split_top_n(ratings, heldout_users=1, holdout="".join(["tempo", "ral"]))


# 5 users x 10 positives; user u rates movies 1..10 at times 10..1: the temporal targets of a
# held-out user are movies 1 and 2.
TEN_EACH = "".join(f"{u}::{m}::5::{11 - m}\n" for u in range(1, 6) for m in range(1, 11))


def test_holdout_given_as_a_new_string_is_still_random(top_n_data, tmp_path):
    # argparse hands over the string from the command line, not the literal "random"
    path = tmp_path / "ratings.dat"
    path.write_text(TEN_EACH)
    ratings = top_n_data.load_ratings(path)
    as_typed = "".join(["ran", "dom"])
    assert as_typed == "random" and as_typed is not sys.intern("random")
    split = top_n_data.split_top_n(ratings, seed=7, heldout_users=1, holdout=as_typed)
    same = top_n_data.split_top_n(ratings, seed=7, heldout_users=1, holdout="random")
    assert (split.test.target != same.test.target).nnz == 0
    assert split.n_items == 10 == len(split.item_ids)
    temporal = top_n_data.split_top_n(ratings, seed=7, heldout_users=1, holdout="temporal")
    assert (split.test.target != temporal.test.target).nnz > 0


# ---------------------------------------------------------------- duplicate pairs (data.py)

# user 1 rates movie 20 on lines 1 and 4, movie 10 on lines 2 and 3.
TWO_REPEATS = "1::20::5::1\n1::10::4::2\n1::10::3::3\n1::20::4::4\n2::10::5::5\n"


@pytest.mark.parametrize("folder", TOP_N_FOLDERS + RATING_FOLDERS)
def test_two_repeated_pairs_name_the_lower_movie(folder, tmp_path):
    data = load_module(folder, "data")
    path = tmp_path / "ratings.dat"
    path.write_text(TWO_REPEATS)
    ratings = data.load_ratings(path)
    with pytest.raises(data.DataError) as error:
        if folder in RATING_FOLDERS:
            data.split_ratings(ratings)
        else:
            data.split_top_n(ratings, heldout_users=1)
    assert str(error.value) == f"{path}, line 3: user 1 rated movie 10 already on line 2"


# ---------------------------------------------------------------- Protocol A split (data.py)


@pytest.mark.parametrize("folder", RATING_FOLDERS)
def test_rating_split_seed_is_the_protocols(folder):
    split_ratings = load_module(folder, "data").split_ratings
    assert inspect.signature(split_ratings).parameters["seed"].default == 1994


@pytest.mark.parametrize("folder", RATING_FOLDERS)
def test_rating_split_shape_is_users_by_movies(folder, tmp_path):
    data = load_module(folder, "data")
    path = write_ratings(tmp_path / "ratings.dat", [1, 1, 2, 3], [10, 20, 20, 30], [5, 4, 3, 2])
    split = data.split_ratings(data.load_ratings(path))
    assert split.shape == (3, 3) == split.train.shape
