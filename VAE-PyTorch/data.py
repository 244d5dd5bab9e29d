"""MovieLens-1M for this folder: download, parsing with line-exact errors, and the
Protocol B split of PROTOCOLS.md (strong generalisation, top-N ranking).

The download and parsing half of this file is kept identical in every model folder;
the split half is identical in every top-N folder. tests/test_consistency.py checks both.
"""
import hashlib
import io
import os
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

DATA_URL = "https://files.grouplens.org/datasets/movielens/ml-1m.zip"
ARCHIVE_MD5 = "c4d9eecfca2ab87c1945afe126590906"
ARCHIVE_SIZE = 5917549
ARCHIVE_MEMBERS = ("ratings.dat", "movies.dat", "users.dat", "README")
ARCHIVE_PREFIX = "ml-1m/"


class DataError(Exception):
    """Bad or missing input data; the message names the file (and line) to fix."""


def default_data_dir():
    """The repository's `ml-1m/` folder, found from this file's path, not the cwd."""
    return Path(__file__).resolve().parent.parent / "ml-1m"


# ---------------------------------------------------------------- download


def ensure_ratings_file(data_dir, allow_download=True, url=DATA_URL, md5=ARCHIVE_MD5,
                        quiet=False):
    """Return the path of `ratings.dat` in data_dir, downloading the archive if missing."""
    data_dir = Path(data_dir)
    ratings_path = data_dir / "ratings.dat"
    if ratings_path.is_file():
        return ratings_path
    if not allow_download:
        raise DataError(_missing_data_message(data_dir, "--no-download was given"))
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        download_and_extract(url, md5, data_dir, quiet=quiet)
    except (OSError, ValueError) as error:  # urllib's URLError is an OSError
        raise DataError(_missing_data_message(data_dir, f"the download failed ({error})")) \
            from error
    return ratings_path


def _missing_data_message(data_dir, reason):
    return (f"{data_dir / 'ratings.dat'} not found and {reason}.\n"
            f"Download {DATA_URL} (MD5 {ARCHIVE_MD5}), unzip it and put ratings.dat, "
            f"movies.dat and users.dat in {data_dir}/ (or pass --data-dir DIR).")


def download_and_extract(url, md5, data_dir, quiet=False):
    """Fetch the zip into a temporary file, verify its MD5, then extract the expected members.

    Nothing is extracted from an archive whose checksum differs or that holds a member
    outside its own folder; every file is written through a temporary name and renamed.
    """
    data_dir = Path(data_dir)
    fd, archive_tmp = tempfile.mkstemp(prefix=".ml-1m-", suffix=".zip.part", dir=data_dir)
    try:
        with os.fdopen(fd, "wb") as archive_file:
            digest = _download(url, archive_file, quiet)
        if digest != md5:
            raise DataError(f"{url}: MD5 {digest} differs from the expected {md5}; "
                            f"the download was refused and nothing was extracted")
        with zipfile.ZipFile(archive_tmp) as archive:
            _check_members(archive, url)
            for name in ARCHIVE_MEMBERS:
                _extract_member(archive, ARCHIVE_PREFIX + name, data_dir / name)
    finally:
        if os.path.exists(archive_tmp):
            os.remove(archive_tmp)


def _download(url, out_file, quiet):
    from tqdm import tqdm
    digest = hashlib.md5()
    with urllib.request.urlopen(url, timeout=60) as response:
        total = int(response.headers.get("Content-Length") or ARCHIVE_SIZE)
        with tqdm(total=total, unit="B", unit_scale=True, desc="ml-1m.zip",
                  disable=quiet) as bar:
            while chunk := response.read(1 << 16):
                out_file.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
    return digest.hexdigest()


def _check_members(archive, url):
    for name in archive.namelist():
        parts = name.replace("\\", "/").split("/")
        if name.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
            raise DataError(f"{url}: archive member {name!r} points outside its folder; "
                            f"the archive was refused and nothing was extracted")
    missing = [n for n in ARCHIVE_MEMBERS if ARCHIVE_PREFIX + n not in archive.namelist()]
    if missing:
        raise DataError(f"{url}: archive lacks {', '.join(missing)}")


def _extract_member(archive, member, target):
    fd, tmp = tempfile.mkstemp(prefix="." + target.name, suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out, archive.open(member) as source:
            while chunk := source.read(1 << 20):
                out.write(chunk)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# ---------------------------------------------------------------- parsing


@dataclass
class Ratings:
    """The rows of ratings.dat in file order; timestamps is None for three-field files."""
    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray
    timestamps: np.ndarray
    path: Path
    sha256: str


def load_ratings(path):
    """Parse `UserID::MovieID::Rating[::Timestamp]` lines; any bad line raises DataError."""
    path = Path(path)
    raw = path.read_bytes()
    text = raw.decode("latin-1")
    if not text.strip():
        raise DataError(f"{path}: the file is empty")
    n_fields = text.split("\n", 1)[0].rstrip("\r").count("::") + 1
    if n_fields not in (3, 4):
        _raise_first_bad_line(path, text, 4)
    columns = _parse_fast(text, n_fields)
    if columns is None:
        _raise_first_bad_line(path, text, n_fields)
    users, items, ratings = columns[0], columns[1], columns[2]
    bad = np.flatnonzero((users <= 0) | (items <= 0) | (ratings < 1) | (ratings > 5))
    if bad.size:
        _raise_first_bad_line(path, text, n_fields)
    timestamps = columns[3] if n_fields == 4 else None
    return Ratings(users, items, ratings, timestamps, path, hashlib.sha256(raw).hexdigest())


def _parse_fast(text, n_fields):
    """All lines at C speed, or None when any line is off (blank, tab, wrong field count)."""
    body = text.rstrip("\r\n")
    if "\t" in body or "\n\n" in body or "\n\r\n" in body:
        return None
    try:
        frame = pd.read_csv(io.StringIO(body.replace("::", "\t")), sep="\t", header=None,
                            dtype="int64", engine="c")
    except (ValueError, pd.errors.ParserError):
        return None
    if frame.shape[1] != n_fields or frame.isna().any().any():
        return None
    try:
        return [frame[c].to_numpy(dtype=np.int64) for c in range(n_fields)]
    except (ValueError, TypeError):
        return None


def _raise_first_bad_line(path, text, n_fields):
    for number, line in enumerate(text.rstrip("\r\n").split("\n"), start=1):
        problem = _line_problem(line.rstrip("\r"), n_fields)
        if problem:
            raise DataError(f"{path}, line {number}: {problem}: {line[:80]!r}")
    raise DataError(f"{path}: could not be parsed")


def _line_problem(line, n_fields):
    fields = line.split("::")
    if len(fields) != n_fields:
        return (f"expected {n_fields} fields separated by '::', found {len(fields)} "
                f"(UserID::MovieID::Rating::Timestamp)")
    for name, value in zip(("UserID", "MovieID", "Rating", "Timestamp"), fields):
        if not value.strip().isdigit():
            return f"{name} {value!r} is not a non-negative integer"
    if int(fields[0]) <= 0 or int(fields[1]) <= 0:
        return "ids must be positive"
    if not 1 <= int(fields[2]) <= 5:
        return f"rating {fields[2]} is outside 1..5"
    return None


# ---------------------------------------------------------------- Protocol B split


@dataclass
class HeldOut:
    """Validation or test users: fold-in items (model input) and target items (to rank)."""
    user_ids: np.ndarray      # original ids, ascending
    fold_in: sp.csr_matrix    # users x items, 1.0 where a fold-in positive
    target: sp.csr_matrix     # users x items, 1.0 where a target positive
    fold_in_seqs: list        # per user, fold-in item indices in (timestamp, movie id) order


@dataclass
class TopNSplit:
    item_ids: np.ndarray      # original movie id of each item column
    train_user_ids: np.ndarray
    train: sp.csr_matrix      # training users x items
    train_seqs: list          # per training user, item indices in (timestamp, movie id) order
    validation: HeldOut
    test: HeldOut

    @property
    def n_items(self):
        return len(self.item_ids)


def split_top_n(ratings, seed=98765, min_rating=4, heldout_users=600, holdout="random",
                min_positives=5):
    """Protocol B of PROTOCOLS.md (top-N ranking), deterministic for a seed."""
    if holdout not in ("random", "temporal"):
        raise ValueError(f"holdout must be 'random' or 'temporal', not {holdout!r}")
    if holdout == "temporal" and ratings.timestamps is None:
        raise DataError(f"{ratings.path}: --holdout temporal needs timestamps, but the file "
                        f"has three-field lines (UserID::MovieID::Rating)")
    _check_unique_pairs(ratings)
    users, items = _positives_in_time_order(ratings, min_rating)
    user_ids, counts = np.unique(users, return_counts=True)
    user_ids = user_ids[counts >= min_positives]
    if len(user_ids) <= 2 * heldout_users:
        raise DataError(f"{ratings.path}: {len(user_ids)} users have {min_positives} or more "
                        f"positives, too few for 2 x {heldout_users} held-out users")
    shuffled = np.random.RandomState(seed).permutation(user_ids)
    train_users = np.sort(shuffled[:-2 * heldout_users])
    val_users = np.sort(shuffled[-2 * heldout_users:-heldout_users])
    test_users = np.sort(shuffled[-heldout_users:])

    in_train = np.isin(users, train_users)
    item_ids = np.unique(items[in_train])
    keep = np.isin(items, item_ids)
    users, items = users[keep], np.searchsorted(item_ids, items[keep])
    in_train = in_train[keep]

    train, train_seqs = _user_rows(users[in_train], items[in_train], train_users, len(item_ids))
    return TopNSplit(
        item_ids=item_ids, train_user_ids=train_users, train=train, train_seqs=train_seqs,
        validation=_hold_out(users, items, val_users, len(item_ids), holdout, seed),
        test=_hold_out(users, items, test_users, len(item_ids), holdout, seed))


def _check_unique_pairs(ratings):
    """Two lines for one (user, movie) pair would make one item count twice (or be both
    fold-in and target): refuse them, naming both lines."""
    keys = ratings.users * (int(ratings.items.max()) + 1) + ratings.items
    order = np.argsort(keys, kind="stable")
    repeated = np.flatnonzero(keys[order][1:] == keys[order][:-1])
    if repeated.size:
        first, second = sorted(order[repeated[0]:repeated[0] + 2])
        raise DataError(f"{ratings.path}, line {second + 1}: user {ratings.users[second]} "
                        f"rated movie {ratings.items[second]} already on line {first + 1}")


def _positives_in_time_order(ratings, min_rating):
    """Positive (user, item) rows sorted by user, then timestamp, then movie id."""
    positive = ratings.ratings >= min_rating
    users, items = ratings.users[positive], ratings.items[positive]
    times = (ratings.timestamps[positive] if ratings.timestamps is not None
             else np.zeros(len(users), dtype=np.int64))
    order = np.lexsort((items, times, users))
    return users[order], items[order]


def _user_rows(users, items, user_ids, n_items):
    """CSR over user_ids (rows) and each row's item sequence, keeping the given row order."""
    rows = np.searchsorted(user_ids, users)
    matrix = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, items)),
                           shape=(len(user_ids), n_items))
    starts = np.searchsorted(rows, np.arange(len(user_ids) + 1))
    seqs = [items[starts[r]:starts[r + 1]] for r in range(len(user_ids))]
    return matrix, seqs


def _hold_out(users, items, group_users, n_items, holdout, seed):
    """Split each group user's positives (in time order) into fold-in and target items."""
    _, seqs = _user_rows(users[np.isin(users, group_users)],
                         items[np.isin(users, group_users)], group_users, n_items)
    rng = np.random.RandomState(seed)
    fold_rows, fold_items, target_rows, target_items, fold_in_seqs = [], [], [], [], []
    for row, seq in enumerate(seqs):
        n_target = int(0.2 * len(seq))
        is_target = np.zeros(len(seq), dtype=bool)
        if holdout == "random":
            is_target[rng.choice(len(seq), n_target, replace=False)] = True
        elif n_target:
            is_target[-n_target:] = True
        fold_in_seqs.append(seq[~is_target])
        fold_rows.append(np.full((~is_target).sum(), row))
        fold_items.append(seq[~is_target])
        target_rows.append(np.full(is_target.sum(), row))
        target_items.append(seq[is_target])
    shape = (len(group_users), n_items)
    return HeldOut(user_ids=group_users,
                   fold_in=_binary_csr(fold_rows, fold_items, shape),
                   target=_binary_csr(target_rows, target_items, shape),
                   fold_in_seqs=fold_in_seqs)


def _binary_csr(rows, cols, shape):
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    return sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=shape)
