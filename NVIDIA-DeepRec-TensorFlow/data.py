"""MovieLens-1M for this folder: download, parsing with line-exact errors, and the
Protocol A split of PROTOCOLS.md (random 81/9/10 split of all ratings, rating
prediction).

The download and parsing half of this file is kept identical in every model folder;
the split half is identical in both rating folders. tests/test_consistency.py checks both.
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


# ---------------------------------------------------------------- Protocol A split


@dataclass
class Pairs:
    """Evaluated (user, item) pairs as row/column indices of the rating matrix."""
    users: np.ndarray         # row index into user_ids
    items: np.ndarray         # column index into item_ids
    ratings: np.ndarray       # float32, 1..5

    def __len__(self):
        return len(self.ratings)


@dataclass
class RatingSplit:
    user_ids: np.ndarray      # original user id of each row, ascending
    item_ids: np.ndarray      # original movie id of each column, ascending
    train: sp.csr_matrix      # users x items, float32 ratings; the only model input
    validation: Pairs
    test: Pairs

    @property
    def shape(self):
        return self.train.shape


def split_ratings(ratings, seed=1994):
    """Protocol A of PROTOCOLS.md: a random 81/9/10 split of all rows, in file order.

    perm = RandomState(seed).permutation(N); test = perm[:round(0.1 N)], validation = the
    next round(0.1 (N - n_test)) rows, train = the rest. Rows and columns cover every user
    and movie id of the file, so an id seen only in held-out rows gets an empty row.
    """
    _check_unique_pairs(ratings)
    user_ids, users = np.unique(ratings.users, return_inverse=True)
    item_ids, items = np.unique(ratings.items, return_inverse=True)
    values = ratings.ratings.astype(np.float32)
    n = len(values)
    perm = np.random.RandomState(seed).permutation(n)
    n_test = int(round(0.1 * n))
    n_val = int(round(0.1 * (n - n_test)))
    test, val, train = perm[:n_test], perm[n_test:n_test + n_val], perm[n_test + n_val:]
    matrix = sp.csr_matrix((values[train], (users[train], items[train])),
                           shape=(len(user_ids), len(item_ids)), dtype=np.float32)
    return RatingSplit(
        user_ids=user_ids, item_ids=item_ids, train=matrix,
        validation=Pairs(users[val], items[val], values[val]),
        test=Pairs(users[test], items[test], values[test]))


def _check_unique_pairs(ratings):
    """Two ratings of one (user, movie) pair would be summed in the matrix: refuse them."""
    keys = ratings.users * (int(ratings.items.max()) + 1) + ratings.items
    order = np.argsort(keys, kind="stable")
    repeated = np.flatnonzero(keys[order][1:] == keys[order][:-1])
    if repeated.size:
        first, second = sorted(order[repeated[0]:repeated[0] + 2])
        raise DataError(f"{ratings.path}, line {second + 1}: user {ratings.users[second]} "
                        f"rated movie {ratings.items[second]} already on line {first + 1}")
