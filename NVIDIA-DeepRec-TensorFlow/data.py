"""MovieLens (ML-100K, ML-1M, ML-10M, ML-20M, ML-25M) or a user's own ratings file for this
folder: download, parsing with line-exact errors, and the
Protocol A split of PROTOCOLS.md (random 81/9/10 split of all ratings, rating
prediction).

The download and parsing half of this file is kept identical in every model folder;
the split half is identical in both rating folders. tests/test_consistency.py checks both.
"""
import csv
import hashlib
import io
import math
import os
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp


@dataclass(frozen=True)
class DataSet:
    """One GroupLens MovieLens archive: where it is, its published MD5 and what it holds."""
    url: str
    md5: str            # GroupLens's <name>.zip.md5; None would refuse the download
    size: int           # bytes, for the progress bar when the server sends no length
    prefix: str         # the folder the archive keeps its files in
    members: tuple      # the files extracted (the ratings file first)
    titles: str         # the file with the movie titles


GROUPLENS = "https://files.grouplens.org/datasets/movielens/"
# MD5s as GroupLens publishes them next to each archive (<url>.md5), the same values that
# torchtext, RecBole, TensorFlow Datasets, Microsoft Recommenders and others pin.
DATASETS = {
    "ml-1m": DataSet(GROUPLENS + "ml-1m.zip", "c4d9eecfca2ab87c1945afe126590906", 5917549,
                     "ml-1m/", ("ratings.dat", "movies.dat", "users.dat", "README"),
                     "movies.dat"),
    "ml-100k": DataSet(GROUPLENS + "ml-100k.zip", "0e33842e24a9c977be4e0107933c0723", 4924029,
                       "ml-100k/", ("u.data", "u.item", "u.user", "README"), "u.item"),
    "ml-10m": DataSet(GROUPLENS + "ml-10m.zip", "ce571fd55effeba0271552578f2648bd", 65566137,
                      "ml-10M100K/", ("ratings.dat", "movies.dat", "tags.dat"), "movies.dat"),
    "ml-20m": DataSet(GROUPLENS + "ml-20m.zip", "cd245b17a1ae2cc31bb14903e1204af3", 198702078,
                      "ml-20m/", ("ratings.csv", "movies.csv", "tags.csv", "links.csv"),
                      "movies.csv"),
    "ml-25m": DataSet(GROUPLENS + "ml-25m.zip", "6b51fb2759a8657d3bfcbfc42b592ada", 261978986,
                      "ml-25m/", ("ratings.csv", "movies.csv", "tags.csv", "links.csv"),
                      "movies.csv"),
}
DEFAULT_DATASET = "ml-1m"
# Field separator of each format; dat is MovieLens's `::` (integer ids, no header).
SEPARATORS = {"dat": "::", "tsv": "\t", "csv": ","}
COLUMNS = ("UserID", "MovieID", "Rating", "Timestamp")
RATING_RANGE = (0.5, 5.0)  # MovieLens stars: whole (ML-100K, ML-1M) or half (ML-10M on)


class DataError(Exception):
    """Bad or missing input data; the message names the file (and line) to fix."""


def default_data_dir(dataset=DEFAULT_DATASET):
    """The repository's folder of a data set (`ml-1m/`, ...), found from this file's path."""
    return Path(__file__).resolve().parent.parent / dataset


def ratings_file_name(dataset):
    return DATASETS[dataset].members[0]


# ---------------------------------------------------------------- download


def find_ratings(data_dir, dataset=DEFAULT_DATASET, ratings_file=None, allow_download=True,
                 quiet=False):
    """The ratings file of a run: the user's own (--ratings-file), else the data set's in
    data_dir, downloaded when missing."""
    if ratings_file is None:
        return ensure_ratings_file(data_dir, allow_download, quiet=quiet, dataset=dataset)
    if not Path(ratings_file).is_file():
        raise DataError(f"{ratings_file}: no such file (--ratings-file)")
    return Path(ratings_file)


def ensure_ratings_file(data_dir, allow_download=True, url=None, md5=None, quiet=False,
                        dataset=DEFAULT_DATASET):
    """The path of the data set's ratings file in data_dir, downloading its archive if
    missing (url and md5 default to the DATASETS entry)."""
    data_dir, entry = Path(data_dir), DATASETS[dataset]
    ratings_path = data_dir / entry.members[0]
    if ratings_path.is_file():
        return ratings_path
    if not allow_download:
        raise DataError(_missing_data_message(data_dir, dataset, "--no-download was given"))
    md5 = md5 or entry.md5
    if md5 is None:
        raise DataError(_missing_data_message(
            data_dir, dataset, "no published checksum is known for its archive, so it is "
                               "never downloaded unverified"))
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        download_and_extract(url or entry.url, md5, data_dir, quiet=quiet, dataset=dataset)
    except (OSError, ValueError) as error:  # urllib's URLError is an OSError
        raise DataError(_missing_data_message(data_dir, dataset,
                                              f"the download failed ({error})")) from error
    return ratings_path


def _missing_data_message(data_dir, dataset, reason):
    entry = DATASETS[dataset]
    return (f"{data_dir / entry.members[0]} not found and {reason}.\n"
            f"Download {entry.url} (MD5 {entry.md5}), unzip it and put "
            f"{', '.join(entry.members[:2])} in {data_dir}/ (or pass --data-dir DIR).")


def download_and_extract(url, md5, data_dir, quiet=False, dataset=DEFAULT_DATASET):
    """Fetch the zip into a temporary file, verify its MD5, then extract the expected members.

    Nothing is extracted from an archive whose checksum differs or that holds a member
    outside its own folder; every file is written through a temporary name and renamed.
    """
    data_dir, entry = Path(data_dir), DATASETS[dataset]
    fd, archive_tmp = tempfile.mkstemp(prefix=f".{dataset}-", suffix=".zip.part", dir=data_dir)
    try:
        with os.fdopen(fd, "wb") as archive_file:
            digest = _download(url, archive_file, quiet, f"{dataset}.zip", entry.size)
        if digest != md5:
            raise DataError(f"{url}: MD5 {digest} differs from the expected {md5}; "
                            f"the download was refused and nothing was extracted")
        with zipfile.ZipFile(archive_tmp) as archive:
            _check_members(archive, url, entry)
            for name in entry.members:
                _extract_member(archive, entry.prefix + name, data_dir / name)
    finally:
        if os.path.exists(archive_tmp):
            os.remove(archive_tmp)


def _download(url, out_file, quiet, label, size):
    from tqdm import tqdm
    digest = hashlib.md5()
    with urllib.request.urlopen(url, timeout=60) as response:
        total = int(response.headers.get("Content-Length") or size)
        with tqdm(total=total, unit="B", unit_scale=True, desc=label, disable=quiet) as bar:
            while chunk := response.read(1 << 16):
                out_file.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
    return digest.hexdigest()


def _check_members(archive, url, entry):
    for name in archive.namelist():
        parts = name.replace("\\", "/").split("/")
        if name.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
            raise DataError(f"{url}: archive member {name!r} points outside its folder; "
                            f"the archive was refused and nothing was extracted")
    missing = [n for n in entry.members if entry.prefix + n not in archive.namelist()]
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
    """The rating lines in file order. Ids are int64 when every id of the column is an
    integer, else str (a user's own file); ratings are int64 when all are whole stars, else
    float64; timestamps is None for three-field files. first_line: the line number of the
    first rating (2 after a header line)."""
    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray
    timestamps: np.ndarray
    path: Path
    sha256: str
    first_line: int = 1


def infer_format(path):
    """dat, tsv or csv from the file name: *.dat, *.tsv / *.tab / *.data (ML-100K's u.data),
    *.csv; anything else needs --format."""
    name = Path(path).name.lower()
    for fmt, endings in (("dat", (".dat",)), ("tsv", (".tsv", ".tab", ".data")),
                         ("csv", (".csv",))):
        if name.endswith(endings):
            return fmt
    raise DataError(f"{path}: cannot tell the format from the file name; "
                    f"pass --format csv, tsv or dat")


def load_ratings(path, fmt=None):
    """Parse a ratings file: `user item rating [timestamp]` a line, fields separated by
    `::` (dat), a tab (tsv) or a comma (csv); a csv/tsv may start with a header line (its
    rating field not a number). Any bad line raises DataError naming it."""
    path = Path(path)
    fmt = fmt or infer_format(path)
    sha256 = _sha256(path)
    first = _first_line(path)
    if first is None:
        raise DataError(f"{path}: the file is empty")
    header = fmt != "dat" and _is_header(first, fmt)
    n_fields = len(_fields(first, fmt))
    if n_fields not in (3, 4):
        _raise_first_bad_line(path, fmt, 4, header)
    columns = _parse_fast(path, fmt, n_fields, header)
    if columns is None:
        _raise_first_bad_line(path, fmt, n_fields, header)
    users, items, ratings = columns[:3]
    if fmt == "dat" and ((users <= 0).any() or (items <= 0).any()):
        _raise_first_bad_line(path, fmt, n_fields, header)
    if ((ratings < RATING_RANGE[0]) | (ratings > RATING_RANGE[1])).any():
        _raise_first_bad_line(path, fmt, n_fields, header)
    if (ratings == np.round(ratings)).all():
        ratings = ratings.astype(np.int64)
    timestamps = columns[3] if n_fields == 4 else None
    return Ratings(users, items, ratings, timestamps, path, sha256, 2 if header else 1)


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while chunk := source.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _first_line(path):
    """The first line (decoded), or None when the file holds only blanks."""
    with open(path, "rb") as source:
        line = source.readline()
        if not line.strip() and not source.read(1 << 20).strip():
            return None
    return line.decode("utf-8-sig", "replace").rstrip("\r\n")


def _fields(line, fmt):
    if fmt == "dat":
        return line.split("::")
    return next(csv.reader([line], delimiter=SEPARATORS[fmt]), [""])


def _is_header(line, fmt):
    """A first line of names: no field of it is a number (`userId,movieId,rating,...`)."""
    fields = _fields(line, fmt)
    return len(fields) >= 3 and all(_number(field) is None for field in fields)


def _number(text):
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _parse_fast(path, fmt, n_fields, header):
    """All lines at C speed, or None when any line is off (blank, wrong field count, a
    non-number); id columns are int64, or str when some id is not an integer (csv, tsv)."""
    if fmt == "dat":
        raw = path.read_bytes()
        if b"\t" in raw:
            return None
        source, sep = io.BytesIO(raw.replace(b"::", b"\t")), "\t"
    else:
        source, sep = path, SEPARATORS[fmt]
    frame = _read_frame(source, sep, header, "int64")
    if frame is None and fmt != "dat":
        frame = _read_frame(source, sep, header, str)
    if frame is None or frame.shape[1] != n_fields or frame.isna().any().any():
        return None
    return [_ids(frame[0]), _ids(frame[1]), frame[2].to_numpy(dtype=np.float64)] + (
        [frame[3].to_numpy(dtype=np.int64)] if n_fields == 4 else [])


def _read_frame(source, sep, header, id_dtype):
    if isinstance(source, io.BytesIO):
        source.seek(0)
    try:
        return pd.read_csv(source, sep=sep, header=None, skiprows=1 if header else 0,
                           dtype={0: id_dtype, 1: id_dtype, 2: "float64", 3: "int64"},
                           engine="c", skip_blank_lines=False, encoding="utf-8-sig",
                           keep_default_na=False, na_values=[""])
    except (ValueError, TypeError, pd.errors.ParserError, UnicodeDecodeError):
        return None


def _ids(column):
    """An id column as int64, or as str when some id is not an integer."""
    if pd.api.types.is_integer_dtype(column.dtype):
        return column.to_numpy(dtype=np.int64)
    text = column.astype(str)
    if text.str.fullmatch(r"-?[1-9]\d{0,17}|0").all():  # integers written as such
        return text.astype("int64").to_numpy()
    return np.asarray(text.to_numpy(dtype=object), dtype=str)


def _raise_first_bad_line(path, fmt, n_fields, header):
    """Scan line by line (only once the fast parser has refused the file)."""
    with open(path, "rb") as source:
        for number, raw in enumerate(source, start=1):
            if number == 1 and header:
                continue
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                raise DataError(f"{path}, line {number}: not UTF-8 text: {raw[:80]!r}")
            problem = _line_problem(line, fmt, n_fields)
            if problem:
                raise DataError(f"{path}, line {number}: {problem}: {line[:80]!r}")
    raise DataError(f"{path}: could not be parsed")


def _line_problem(line, fmt, n_fields):
    fields = _fields(line, fmt)
    if len(fields) != n_fields:
        return (f"expected {n_fields} fields separated by {SEPARATORS[fmt]!r}, found "
                f"{len(fields)} ({SEPARATORS[fmt].join(COLUMNS)})")
    for name, value in zip(COLUMNS[:2], fields):
        if fmt == "dat" and not value.strip().isdigit():
            return f"{name} {value!r} is not a non-negative integer"
        if not value.strip():
            return f"{name} is empty"
    if fmt == "dat" and (int(fields[0]) <= 0 or int(fields[1]) <= 0):
        return "ids must be positive"
    rating = _number(fields[2])
    if rating is None:
        return f"Rating {fields[2]!r} is not a number"
    if not RATING_RANGE[0] <= rating <= RATING_RANGE[1]:
        return f"rating {fields[2]} is outside {RATING_RANGE[0]:g}..{RATING_RANGE[1]:g}"
    if n_fields == 4 and not fields[3].strip().lstrip("-").isdigit():
        return f"Timestamp {fields[3]!r} is not an integer"
    return None


def read_titles(data_dir, dataset):
    """MovieID -> (title, genres) of a MovieLens set (genres '' for ML-100K), or None
    without the file or for a user's own file (dataset None)."""
    if dataset is None or not (Path(data_dir) / DATASETS[dataset].titles).is_file():
        return None
    path = Path(data_dir) / DATASETS[dataset].titles
    if path.suffix == ".csv":
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
        return {int(m): (t, g) for m, t, g in zip(frame["movieId"], frame["title"],
                                                   frame["genres"])}
    sep = "|" if dataset == "ml-100k" else "::"
    encoding = "utf-8" if dataset == "ml-10m" else "latin-1"
    titles = {}
    for line in path.read_text(encoding=encoding, errors="replace").splitlines():
        fields = line.split(sep)
        if len(fields) >= 3 and fields[0].isdigit():
            titles[int(fields[0])] = (fields[1], fields[2] if sep == "::" else "")
    return titles


def _check_unique_pairs(ratings):
    """Two lines for one (user, movie) pair would make one item count twice (a summed
    rating; both fold-in and target): refuse them, naming both lines."""
    users, items = _codes(ratings.users), _codes(ratings.items)
    keys = users * (int(items.max()) + 1) + items
    order = np.argsort(keys, kind="stable")
    repeated = np.flatnonzero(keys[order][1:] == keys[order][:-1])
    if repeated.size:
        first, second = sorted(order[repeated[0]:repeated[0] + 2])
        line = ratings.first_line
        raise DataError(f"{ratings.path}, line {second + line}: user {ratings.users[second]} "
                        f"rated movie {ratings.items[second]} already on line {first + line}")


def _codes(ids):
    """Ids as non-negative int64 keys: themselves when they already are, else their ranks."""
    if ids.dtype.kind in "iu" and (len(ids) == 0 or ids.min() >= 0):
        return ids.astype(np.int64)
    return np.unique(ids, return_inverse=True)[1].astype(np.int64)


# ---------------------------------------------------------------- Protocol A split


@dataclass
class Pairs:
    """Evaluated (user, item) pairs as row/column indices of the rating matrix."""
    users: np.ndarray         # row index into user_ids
    items: np.ndarray         # column index into item_ids
    ratings: np.ndarray       # float32, as in the file (0.5..5 on MovieLens)

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
