"""Tests for the gaps that mutation testing found (issue #16; mutation/README.md): each one
kills a mutant of metrics.py or data.py that the rest of the suite let survive. Hand-worked
values on tiny inputs; every copy of a file is checked, like the tests beside them.
"""
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp

from conftest import RATING_FOLDERS, load_module


@pytest.fixture(params=RATING_FOLDERS)
def rating_metrics(request):
    return load_module(request.param, "metrics")


# ---------------------------------------------------------------- rating metrics.py


def test_write_predictions_hand_worked(rating_metrics, tmp_path):
    # users 10, 20, 30 x movies 7, 8, 9; user 30 and movie 9 have no training rating.
    train = sp.csr_matrix(np.array([[4, 0, 0], [0, 2, 0], [0, 0, 0]], dtype=np.float32))
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
