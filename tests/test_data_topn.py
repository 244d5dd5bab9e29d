"""Parsing, download and the Protocol B split, run against every top-N folder's data.py."""
import hashlib
import io
import zipfile

import numpy as np
import pytest

from conftest import TOP_N_FOLDERS, load_module, planted_top_n_rows, run_main, write_ratings


@pytest.fixture(params=TOP_N_FOLDERS)
def data(request):
    return load_module(request.param, "data")


# ---------------------------------------------------------------- parsing


def test_parses_four_and_three_field_files(data, tmp_path):
    four = tmp_path / "four.dat"
    four.write_text("1::10::5::100\n2::20::3::200\n")
    ratings = data.load_ratings(four)
    assert ratings.users.tolist() == [1, 2] and ratings.items.tolist() == [10, 20]
    assert ratings.ratings.tolist() == [5, 3] and ratings.timestamps.tolist() == [100, 200]
    assert ratings.sha256 == hashlib.sha256(four.read_bytes()).hexdigest()
    three = tmp_path / "three.dat"
    three.write_text("1::10::5\n2::20::3\n")
    assert data.load_ratings(three).timestamps is None


@pytest.mark.parametrize("bad_line, reason", [
    ("3,30,4,300", "fields"),
    ("3::abc::4::300", "MovieID"),
    ("3::30::6::300", "outside 0.5..5"),
    ("3::30::0::300", "outside 0.5..5"),
    ("3::30::4", "fields"),
    ("", "fields"),
    ("3\t30::4::300", "fields"),
])
def test_malformed_line_names_file_and_line(data, tmp_path, bad_line, reason):
    path = tmp_path / "ratings.dat"
    path.write_text(f"1::10::5::100\n2::20::3::200\n{bad_line}\n4::40::4::400\n")
    with pytest.raises(data.DataError) as error:
        data.load_ratings(path)
    assert f"{path}, line 3" in str(error.value)
    assert reason in str(error.value)


def test_empty_file_is_an_error(data, tmp_path):
    path = tmp_path / "ratings.dat"
    path.write_text("")
    with pytest.raises(data.DataError, match="empty"):
        data.load_ratings(path)


# ---------------------------------------------------------------- download


def make_archive(members):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in members.items():
            archive.writestr(name, text)
    return buffer.getvalue()


GOOD_MEMBERS = {"ml-1m/ratings.dat": "1::10::5::100\n", "ml-1m/movies.dat": "10::A::B\n",
                "ml-1m/users.dat": "1::F::1::10::48067\n", "ml-1m/README": "readme\n"}


def serve(tmp_path, payload):
    path = tmp_path / "served" / "ml-1m.zip"
    path.parent.mkdir()
    path.write_bytes(payload)
    return path.as_uri(), hashlib.md5(payload).hexdigest()


def test_download_extracts_a_good_archive(data, tmp_path):
    url, md5 = serve(tmp_path, make_archive(GOOD_MEMBERS))
    target = tmp_path / "ml-1m"
    path = data.ensure_ratings_file(target, url=url, md5=md5, quiet=True)
    assert path == target / "ratings.dat"
    assert path.read_text() == "1::10::5::100\n"
    assert sorted(p.name for p in target.iterdir()) == ["README", "movies.dat", "ratings.dat",
                                                       "users.dat"]


def test_download_with_wrong_checksum_leaves_nothing(data, tmp_path):
    url, _ = serve(tmp_path, make_archive(GOOD_MEMBERS))
    target = tmp_path / "ml-1m"
    with pytest.raises(data.DataError, match="MD5"):
        data.ensure_ratings_file(target, url=url, md5="0" * 32, quiet=True)
    assert list(target.iterdir()) == []


def test_path_traversal_member_is_refused(data, tmp_path):
    members = {**GOOD_MEMBERS, "ml-1m/../../escaped.txt": "gotcha\n"}
    url, md5 = serve(tmp_path, make_archive(members))
    target = tmp_path / "deep" / "ml-1m"
    with pytest.raises(data.DataError, match="outside"):
        data.ensure_ratings_file(target, url=url, md5=md5, quiet=True)
    assert list(target.iterdir()) == []
    assert not list(tmp_path.rglob("escaped.txt"))


def test_no_data_and_no_network_says_where_to_put_it(data, tmp_path):
    target = tmp_path / "ml-1m"
    with pytest.raises(data.DataError) as error:
        data.ensure_ratings_file(target, allow_download=False)
    assert str(target / "ratings.dat") in str(error.value)
    assert "ml-1m.zip" in str(error.value)
    unreachable = (tmp_path / "nowhere.zip").as_uri()
    with pytest.raises(data.DataError, match="download failed"):
        data.ensure_ratings_file(target, url=unreachable, quiet=True)


# ---------------------------------------------------------------- Protocol B split


@pytest.fixture
def ratings(data, top_n_file):
    return data.load_ratings(top_n_file)


def split(data, ratings, **options):
    return data.split_top_n(ratings, heldout_users=200, **options)


def test_split_is_deterministic_for_a_seed(data, ratings):
    first, second = split(data, ratings), split(data, ratings)
    assert (first.test.user_ids == second.test.user_ids).all()
    assert (first.test.target != second.test.target).nnz == 0
    other = split(data, ratings, seed=1)
    assert set(other.test.user_ids) != set(first.test.user_ids)


def test_user_groups_follow_the_seeded_permutation(data, ratings):
    result = split(data, ratings, seed=7)
    ids, positives = np.unique(ratings.users[ratings.ratings >= 4], return_counts=True)
    assert (positives < 5).any()  # the filter below is exercised
    users = np.random.RandomState(7).permutation(ids[positives >= 5])
    assert set(result.test.user_ids) == set(users[-200:])
    assert set(result.validation.user_ids) == set(users[-400:-200])
    assert set(result.train_user_ids) == set(users[:-400])


def test_groups_disjoint_and_items_from_training_users(data, tmp_path):
    users, items, values, times = planted_top_n_rows()
    # an item only a held-out user could have: must be dropped from the item set
    rows = write_ratings(tmp_path / "r.dat", np.append(users, users[-1]),
                         np.append(items, 999), np.append(values, 5), np.append(times, 1))
    ratings = data.load_ratings(rows)
    result = split(data, ratings)
    groups = [set(result.train_user_ids), set(result.validation.user_ids),
              set(result.test.user_ids)]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    positive = ratings.ratings >= 4
    train_items = np.unique(ratings.items[positive & np.isin(ratings.users,
                                                             result.train_user_ids)])
    assert result.item_ids.tolist() == train_items.tolist()
    assert 999 not in result.item_ids


@pytest.mark.parametrize("holdout", ["random", "temporal"])
def test_fold_in_and_target_partition_each_user(data, ratings, holdout):
    result = split(data, ratings, holdout=holdout)
    positive = ratings.ratings >= 4
    for group in (result.validation, result.test):
        assert (group.fold_in.multiply(group.target)).nnz == 0
        for row, user in enumerate(group.user_ids):
            mine = positive & (ratings.users == user) & np.isin(ratings.items, result.item_ids)
            expected = set(np.searchsorted(result.item_ids, ratings.items[mine]))
            fold_in = set(group.fold_in[row].indices)
            target = set(group.target[row].indices)
            assert fold_in | target == expected
            assert len(target) == int(0.2 * len(expected))
            assert set(group.fold_in_seqs[row]) == fold_in


def test_temporal_targets_are_the_latest_items(data, tmp_path):
    users, items, values, times = planted_top_n_rows()
    path = write_ratings(tmp_path / "r.dat", users, items, values, times)
    ratings = data.load_ratings(path)
    result = split(data, ratings, holdout="temporal")
    when = {(u, i): t for u, i, t in zip(users, items, times)}
    for row, user in enumerate(result.test.user_ids):
        fold_times = [when[user, result.item_ids[i]] for i in result.test.fold_in[row].indices]
        target_times = [when[user, result.item_ids[i]] for i in result.test.target[row].indices]
        if target_times:
            assert min(target_times) > max(fold_times)
        seq_times = [when[user, result.item_ids[i]] for i in result.test.fold_in_seqs[row]]
        assert seq_times == sorted(seq_times)


def test_hand_worked_temporal_split(data, tmp_path):
    # 5 users x 10 positives; user u rates movies 1..10 at times 10..1 (reverse order), so
    # the latest 2 of each are movies 1 and 2. One held-out user per group.
    rows = [(u, m, 5, 11 - m) for u in range(1, 6) for m in range(1, 11)]
    path = write_ratings(tmp_path / "r.dat", *np.array(rows).T)
    result = data.split_top_n(data.load_ratings(path), heldout_users=1, holdout="temporal")
    assert result.item_ids.tolist() == list(range(1, 11))
    assert result.test.target.toarray().tolist() == [[1, 1, 0, 0, 0, 0, 0, 0, 0, 0]]
    assert result.test.fold_in_seqs[0].tolist() == [9, 8, 7, 6, 5, 4, 3, 2]


def test_min_rating_and_min_positives(data, tmp_path):
    users, items, values, times = planted_top_n_rows()
    ratings = data.load_ratings(write_ratings(tmp_path / "r.dat", users, items, values, times))
    strict = split(data, ratings)
    everything = split(data, ratings, min_rating=0)
    assert everything.train.nnz > strict.train.nnz
    assert strict.train.sum(axis=1).min() >= 5


def test_temporal_needs_timestamps(data, tmp_path):
    users, items, values, _ = planted_top_n_rows()
    ratings = data.load_ratings(write_ratings(tmp_path / "r.dat", users, items, values))
    assert split(data, ratings).test.target.nnz > 0
    with pytest.raises(data.DataError, match="timestamps"):
        split(data, ratings, holdout="temporal")


# Six users with 5+ positives (user 57 has only 4 and is dropped before the permutation).
# Lines are out of time order on purpose; user 4 rates movies 33 and 11 at the same time 20
# (movie id breaks the tie: 11 first); user 9's movie 121 is rated by no training user, so it
# leaves the item set and user 9 keeps 10 positives; ratings below 4 are not positives.
HAND_WORKED_FILE = """\
23::11::5::100
23::22::4::101
23::33::5::102
23::44::4::103
23::55::5::104
23::66::2::105
42::66::5::200
42::77::4::201
42::88::5::202
42::99::4::203
42::110::5::204
42::11::1::205
4::110::4::50
4::22::5::10
4::88::4::30
4::33::5::20
4::66::5::40
4::11::4::20
4::99::5::60
4::44::3::5
15::55::5::1
15::44::4::2
15::110::5::3
15::11::4::4
15::99::5::5
15::22::4::6
15::88::5::7
15::33::4::8
15::77::5::9
15::66::4::10
9::77::5::300
9::11::4::300
9::99::5::100
9::33::4::250
9::66::5::120
9::22::4::400
9::110::5::50
9::44::4::180
9::88::5::350
9::55::4::200
9::121::5::260
31::88::4::70
31::44::5::10
31::22::4::30
31::110::5::20
31::66::4::60
31::33::5::40
31::11::2::15
31::55::3::50
57::11::5::1
57::22::5::2
57::33::5::3
57::44::5::4
57::55::1::5
"""


def test_hand_worked_random_split(data, tmp_path):
    """Worked out by hand from the protocol, and checked once with plain NumPy:

    eligible users [4, 9, 15, 23, 31, 42]; RandomState(7).permutation(...) =
    [23, 42, 4, 15, 9, 31]: training 23, 42; validation 4, 15; test 9, 31 (heldout_users=2).
    Positives in (timestamp, movie id) order, n_target = int(0.2 n):
      user 4:  [22, 11, 33, 88, 66, 110, 99]            n 7,  1 target
      user 15: [55, 44, 110, 11, 99, 22, 88, 33, 77, 66] n 10, 2 targets
      user 9:  [110, 99, 66, 44, 55, 33, 11, 77, 88, 22] n 10, 2 targets
      user 31: [44, 110, 22, 33, 66, 88]                n 6,  1 target
    Validation: rng = RandomState(7); rng.choice(7, 1) = [2] -> movie 33;
                rng.choice(10, 2) = [9, 3] -> movies 66, 11.
    Test: a fresh rng = RandomState(7); rng.choice(10, 2) = [8, 5] -> movies 88, 33;
          rng.choice(6, 1) = [1] -> movie 110.
    (A fresh RandomState per user would give user 15 [8, 5]; one rng continued from the
    validation users would give user 9 [1, 5]; ignoring the movie-id tie-break would make
    user 4's target movie 11.)
    """
    path = tmp_path / "ratings.dat"
    path.write_text(HAND_WORKED_FILE)
    result = data.split_top_n(data.load_ratings(path), seed=7, heldout_users=2)
    assert result.item_ids.tolist() == [11, 22, 33, 44, 55, 66, 77, 88, 99, 110]
    assert result.train_user_ids.tolist() == [23, 42]
    movies = result.item_ids

    def targets(group):
        return [movies[group.target[row].indices].tolist() for row in range(len(group.user_ids))]

    def fold_ins(group):
        return [movies[seq].tolist() for seq in group.fold_in_seqs]

    assert result.validation.user_ids.tolist() == [4, 15]
    assert targets(result.validation) == [[33], [11, 66]]
    assert fold_ins(result.validation) == [[22, 11, 88, 66, 110, 99],
                                           [55, 44, 110, 99, 22, 88, 33, 77]]
    assert result.test.user_ids.tolist() == [9, 31]
    assert targets(result.test) == [[33, 88], [110]]
    assert fold_ins(result.test) == [[110, 99, 66, 44, 55, 11, 77, 22], [44, 22, 33, 66, 88]]


# ---------------------------------------------------------------- duplicate pairs


DUPLICATED_FILE = ("1::10::5::100\n2::20::3::200\n1::11::4::300\n"
                   "2::21::4::400\n2::20::5::500\n1::12::4::600\n")


@pytest.mark.parametrize("holdout", ["random", "temporal"])
def test_duplicate_user_movie_lines_are_refused(data, tmp_path, holdout):
    """A repeated (user, movie) pair, whatever its rating, would count one item twice."""
    path = tmp_path / "ratings.dat"
    path.write_text(DUPLICATED_FILE)
    with pytest.raises(data.DataError) as error:
        data.split_top_n(data.load_ratings(path), heldout_users=1, holdout=holdout)
    assert str(error.value) == f"{path}, line 5: user 2 rated movie 20 already on line 2"


def test_duplicate_message_matches_the_rating_split(data, tmp_path):
    path = tmp_path / "ratings.dat"
    path.write_text(DUPLICATED_FILE)
    rating_data = load_module("AutoRec-TensorFlow", "data")
    with pytest.raises(rating_data.DataError) as rating_error:
        rating_data.split_ratings(rating_data.load_ratings(path))
    with pytest.raises(data.DataError) as top_n_error:
        data.split_top_n(data.load_ratings(path), heldout_users=1)
    assert str(top_n_error.value) == str(rating_error.value)


def test_main_shows_a_duplicate_as_one_error_line(tmp_path):
    users, items, values, times = planted_top_n_rows(n_users=60)
    write_ratings(tmp_path / "ratings.dat", np.append(users, users[3]),
                  np.append(items, items[3]), np.append(values, 1), np.append(times, 1))
    done = run_main("ESAE-PyTorch", "--data-dir", tmp_path, "--heldout-users", "10",
                    "--comet", "off", "--out-dir", tmp_path / "run")
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'ratings.dat'}, line {len(users) + 1}: user {users[3]} "
        f"rated movie {items[3]} already on line 4"]
    assert not (tmp_path / "run").exists()
