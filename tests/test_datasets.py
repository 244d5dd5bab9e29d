"""The MovieLens sets beyond ML-1M and one's own ratings file (issue #15, items 1 and 2).

Parsing of each native format (u.data, ratings.dat, ratings.csv) and of own csv/tsv files
with a header, half stars and string ids; line-numbered errors; the download of every set
against local archives (good, wrong checksum, path traversal); the per-set defaults of the
command line; and whole runs on an own file with string ids, whose outputs keep the ids.
"""
import dataclasses
import hashlib
import io
import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from conftest import (REPO, RATING_FOLDERS, TOP_N_FOLDERS, load_main, load_module,
                      planted_top_n_rows, read_results, run_main, run_script)

ALL_FOLDERS = TOP_N_FOLDERS + RATING_FOLDERS
DATASETS = ("ml-100k", "ml-1m", "ml-10m", "ml-20m", "ml-25m")


@pytest.fixture(scope="module")
def data():
    return load_module("ESAE-PyTorch", "data")  # the loading part is one file: consistency


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ---------------------------------------------------------------- native formats


def test_ml_100k_u_data_is_tab_separated(data, tmp_path):
    path = write(tmp_path / "u.data", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n")
    ratings = data.load_ratings(path)
    assert ratings.users.tolist() == [196, 186] and ratings.items.tolist() == [242, 302]
    assert ratings.ratings.dtype == np.int64 and ratings.ratings.tolist() == [3, 3]
    assert ratings.timestamps.tolist() == [881250949, 891717742]


def test_ml_10m_ratings_dat_has_half_stars(data, tmp_path):
    path = write(tmp_path / "ratings.dat", "1::122::5::838985046\n1::185::4.5::838983525\n"
                                           "2::231::0.5::838983392\n")
    ratings = data.load_ratings(path)
    assert ratings.ratings.dtype == np.float64
    assert ratings.ratings.tolist() == [5.0, 4.5, 0.5]
    assert ratings.users.dtype == np.int64 and ratings.first_line == 1


def test_ml_20m_ratings_csv_skips_its_header(data, tmp_path):
    path = write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n"
                                           "1,2,3.5,1112486027\n1,29,3.5,1112484676\n"
                                           "2,32,4.0,1112484819\n")
    ratings = data.load_ratings(path)
    assert ratings.users.tolist() == [1, 1, 2] and ratings.items.tolist() == [2, 29, 32]
    assert ratings.ratings.tolist() == [3.5, 3.5, 4.0] and ratings.first_line == 2
    assert ratings.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_own_file_with_string_ids_keeps_them(data, tmp_path):
    path = write(tmp_path / "mine.csv", 'user,item,rating\nann,"The Thing, 1982",5\n'
                                        "bob,Alien,4.5\nann,007,1\n")
    ratings = data.load_ratings(path)
    assert ratings.users.dtype.kind == "U" and ratings.users.tolist() == ["ann", "bob", "ann"]
    assert ratings.items.tolist() == ["The Thing, 1982", "Alien", "007"]  # "007" stays text
    assert ratings.timestamps is None and ratings.ratings.tolist() == [5.0, 4.5, 1.0]


def test_a_byte_order_mark_is_not_part_of_the_first_id(data, tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbf" + b"1,10,4\n2,10,5\n")
    assert data.load_ratings(path).users.tolist() == [1, 2]
    path.write_bytes(b"\xef\xbb\xbf" + b"user,item,rating\nann,x,4\n")
    ratings = data.load_ratings(path)
    assert ratings.users.tolist() == ["ann"] and ratings.first_line == 2


def test_each_id_column_is_integer_only_when_all_its_ids_are(data, tmp_path):
    path = write(tmp_path / "mine.tsv", "7\tx1\t4\t10\n-3\tx2\t5\t11\n")
    ratings = data.load_ratings(path)
    assert ratings.users.dtype == np.int64 and ratings.users.tolist() == [7, -3]
    assert ratings.items.tolist() == ["x1", "x2"]


def test_format_from_the_name_or_given(data, tmp_path):
    path = write(tmp_path / "mine.txt", "a;b\n")
    with pytest.raises(data.DataError, match="pass --format csv, tsv or dat"):
        data.load_ratings(path)
    path = write(tmp_path / "mine.txt", "u1,i1,4\nu2,i1,5\n")
    assert data.load_ratings(path, "csv").users.tolist() == ["u1", "u2"]
    assert [data.infer_format(name) for name in ("u.data", "x.TSV", "r.dat", "r.csv")] == [
        "tsv", "tsv", "dat", "csv"]


@pytest.mark.parametrize("name, text, line, reason", [
    ("r.csv", "user,item,rating\nu1,i1,4\nu2,i2\n", 3, "expected 3 fields separated by ','"),
    ("r.csv", "user,item,rating\nu1,i1,4\nu2,i2,five\n", 3, "Rating 'five' is not a number"),
    ("r.csv", "u1,i1,4\nu2,i2,5.5\n", 2, "rating 5.5 is outside 0.5..5"),
    ("r.csv", "u1,i1,4\nu2,i2,0\n", 2, "rating 0 is outside 0.5..5"),
    ("r.csv", "u1,i1,4,1\n\nu2,i2,3,2\n", 2, "expected 4 fields"),
    ("r.csv", "u1,i1,4,1\nu2,,3,2\n", 2, "MovieID is empty"),
    ("r.tsv", "u1\ti1\t4\t1\nu2\ti2\t3\tnoon\n", 2, "Timestamp 'noon' is not an integer"),
    ("r.tsv", "u1\ti1\t4\nu2,i2,3\n", 2, "expected 3 fields separated by '\\t'"),
    ("r.dat", "1::10::4.5::1\n2::x::3::2\n", 2, "MovieID 'x' is not a non-negative integer"),
])
def test_bad_lines_are_named(data, tmp_path, name, text, line, reason):
    path = write(tmp_path / name, text)
    with pytest.raises(data.DataError) as error:
        data.load_ratings(path)
    assert str(error.value).startswith(f"{path}, line {line}: {reason}")


def test_repeated_pair_is_named_by_file_lines_after_a_header(data, tmp_path):
    path = write(tmp_path / "r.csv", "user,item,rating\nann,x,4\nbob,x,4\nann,x,5\n")
    ratings = data.load_ratings(path)
    with pytest.raises(data.DataError) as error:
        data.split_top_n(ratings, heldout_users=1, min_positives=1)
    assert str(error.value) == f"{path}, line 4: user ann rated movie x already on line 2"
    rating_data = load_module("AutoRec-TensorFlow", "data")
    with pytest.raises(rating_data.DataError, match="line 4: user ann rated movie x"):
        rating_data.split_ratings(rating_data.load_ratings(path))


def test_empty_file_and_header_only(data, tmp_path):
    with pytest.raises(data.DataError, match="empty"):
        data.load_ratings(write(tmp_path / "r.csv", "\n\n"))
    with pytest.raises(data.DataError, match="line 2"):
        data.load_ratings(write(tmp_path / "h.csv", "user,item,rating\n\n"))


def test_half_star_positives_are_those_above_3_5(data, tmp_path):
    """--min-rating 4 on half stars keeps 4, 4.5 and 5: Liang et al.'s rating > 3.5."""
    lines = [f"u{u},i{i},{r}" for u in range(12) for i, r in
             enumerate([3.5, 4, 4.5, 5, 3, 4, 4.5, 5, 3.5, 4])]
    path = write(tmp_path / "r.csv", "\n".join(lines) + "\n")
    split = data.split_top_n(data.load_ratings(path), heldout_users=2, min_positives=5)
    per_user = np.diff(split.train.indptr)
    assert per_user.tolist() == [7] * 8  # 7 of 10 ratings are >= 4 (> 3.5)
    assert sorted(split.item_ids.tolist()) == ["i1", "i2", "i3", "i5", "i6", "i7", "i9"]


# ---------------------------------------------------------------- download of every set


ML_20M_CSV = "userId,movieId,rating,timestamp\n1,10,4.5,100\n"
NATIVE = {"ml-100k": "1\t10\t5\t100\n", "ml-1m": "1::10::5::100\n",
          "ml-10m": "1::10::4.5::100\n", "ml-20m": ML_20M_CSV, "ml-25m": ML_20M_CSV}


def archive_of(entry, ratings_text, extra=None):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for n, name in enumerate(entry.members):
            archive.writestr(entry.prefix + name, ratings_text if n == 0 else f"{name}\n")
        for name, text in (extra or {}).items():
            archive.writestr(name, text)
    return buffer.getvalue()


def serve(tmp_path, name, payload):
    path = tmp_path / "served" / f"{name}.zip"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(payload)
    return path.as_uri(), hashlib.md5(payload).hexdigest()


@pytest.fixture
def table(data, monkeypatch):
    """data.DATASETS, restored after the test (an entry may be pointed at a local file)."""
    monkeypatch.setattr(data, "DATASETS", dict(data.DATASETS))
    return data.DATASETS


@pytest.mark.parametrize("name", DATASETS)
def test_download_extracts_the_sets_files_and_they_parse(data, table, tmp_path, name):
    url, md5 = serve(tmp_path, name, archive_of(table[name], NATIVE[name]))
    table[name] = dataclasses.replace(table[name], url=url, md5=md5)  # the table is used
    target = tmp_path / name
    path = data.find_ratings(target, name, quiet=True)
    assert path == target / table[name].members[0]
    assert sorted(p.name for p in target.iterdir()) == sorted(table[name].members)
    ratings = data.load_ratings(path)
    assert ratings.users.tolist() == [1] and ratings.items.tolist() == [10]
    assert data.find_ratings(target, name, allow_download=False) == path  # no second fetch


@pytest.mark.parametrize("name", DATASETS)
def test_download_with_a_wrong_checksum_extracts_nothing(data, table, tmp_path, name):
    url, md5 = serve(tmp_path, name, archive_of(table[name], NATIVE[name]))
    target = tmp_path / name
    with pytest.raises(data.DataError, match="MD5"):
        data.ensure_ratings_file(target, url=url, md5="0" * 32, quiet=True, dataset=name)
    assert list(target.iterdir()) == []


@pytest.mark.parametrize("name", DATASETS)
def test_download_refuses_path_traversal(data, table, tmp_path, name):
    payload = archive_of(table[name], NATIVE[name],
                         {table[name].prefix + "../../escaped.txt": "gotcha\n"})
    url, md5 = serve(tmp_path, name, payload)
    target = tmp_path / "deep" / name
    with pytest.raises(data.DataError, match="outside"):
        data.ensure_ratings_file(target, url=url, md5=md5, quiet=True, dataset=name)
    assert list(target.iterdir()) == [] and not list(tmp_path.rglob("escaped.txt"))


def test_archive_of_another_set_is_refused(data, table, tmp_path):
    url, md5 = serve(tmp_path, "ml-1m", archive_of(table["ml-1m"], NATIVE["ml-1m"]))
    with pytest.raises(data.DataError, match="archive lacks u.data"):
        data.ensure_ratings_file(tmp_path / "x", url=url, md5=md5, quiet=True,
                                 dataset="ml-100k")


def test_a_set_without_a_known_checksum_is_never_downloaded(data, table, tmp_path):
    url, _ = serve(tmp_path, "ml-25m", archive_of(table["ml-25m"], NATIVE["ml-25m"]))
    table["ml-25m"] = dataclasses.replace(table["ml-25m"], url=url, md5=None)
    with pytest.raises(data.DataError, match="no published checksum"):
        data.find_ratings(tmp_path / "ml-25m", "ml-25m", quiet=True)
    assert not (tmp_path / "ml-25m" / "ratings.csv").exists()


def test_missing_set_without_download_names_its_file_and_archive(data, tmp_path):
    with pytest.raises(data.DataError) as error:
        data.find_ratings(tmp_path / "ml-20m", "ml-20m", allow_download=False)
    assert str(tmp_path / "ml-20m" / "ratings.csv") in str(error.value)
    assert "ml-20m.zip (MD5 cd245b17a1ae2cc31bb14903e1204af3)" in str(error.value)
    with pytest.raises(data.DataError, match="no such file"):
        data.find_ratings(tmp_path, ratings_file=tmp_path / "absent.csv")


def test_titles_of_each_set(data, tmp_path):
    write(tmp_path / "u.item", "1|Toy Story (1995)|01-Jan-1995||http://x|0|0\n")
    assert data.read_titles(tmp_path, "ml-100k") == {1: ("Toy Story (1995)", "")}
    write(tmp_path / "movies.csv", 'movieId,title,genres\n2,"Jumanji, The (1995)",Adventure\n')
    assert data.read_titles(tmp_path, "ml-20m") == {2: ("Jumanji, The (1995)", "Adventure")}
    assert data.read_titles(tmp_path, "ml-10m") is None  # no movies.dat
    assert data.read_titles(tmp_path, None) is None  # one's own file: ids only


# ---------------------------------------------------------------- command line


def test_the_sets_agree_everywhere(data):
    runs = load_module("ESAE-PyTorch", "runs")
    spec = __import__("importlib.util").util.spec_from_file_location("bench15",
                                                                      REPO / "benchmark.py")
    benchmark = __import__("importlib.util").util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    assert set(runs.HELDOUT_USERS) == set(data.DATASETS) == set(benchmark.DATASETS)


@pytest.mark.parametrize("argv, dataset, heldout, folder", [
    ([], "ml-1m", 600, "ml-1m"),
    (["--dataset", "ml-100k"], "ml-100k", 100, "ml-100k"),
    (["--dataset", "ml-10m"], "ml-10m", 7000, "ml-10m"),
    (["--dataset", "ml-20m"], "ml-20m", 10000, "ml-20m"),
    (["--dataset", "ml-25m"], "ml-25m", 10000, "ml-25m"),
    (["--dataset", "ml-20m", "--heldout-users", "50"], "ml-20m", 50, "ml-20m"),
])
def test_per_set_defaults(argv, dataset, heldout, folder):
    args = load_main("ESAE-PyTorch").parse_args(argv)
    assert (args.dataset, args.heldout_users, args.min_rating) == (dataset, heldout, 4)
    assert args.data_dir == REPO / folder and args.ratings_file is None
    runs = load_module("ESAE-PyTorch", "runs")
    assert runs.dataset_label(args) == "movielens-" + dataset[3:]
    assert runs.run_labels("EASE", "x", "B", "random", 1, runs.dataset_label(args))[2][
        "dataset"] == "movielens-" + dataset[3:]


def test_own_file_defaults_and_refusals(tmp_path, capsys):
    main = load_main("VAE-PyTorch")
    path = write(tmp_path / "mine.txt", "u,i,4\n")
    args = main.parse_args(["--ratings-file", str(path), "--format", "csv"])
    assert (args.dataset, args.heldout_users, args.format) == (None, 600, "csv")
    assert args.data_dir == tmp_path
    assert load_module("VAE-PyTorch", "runs").dataset_label(args) == "file-mine.txt"
    for argv, message in ((["--format", "csv"], "--format applies to --ratings-file only"),
                          (["--dataset", "ml-1m", "--ratings-file", str(path)],
                           "not allowed with argument"),
                          (["--dataset", "ml-2m"], "invalid choice")):
        with pytest.raises(SystemExit):
            main.parse_args(argv)
        assert message in capsys.readouterr().err


# ---------------------------------------------------------------- whole runs on an own file


@pytest.fixture(scope="module")
def own_file(tmp_path_factory):
    """Planted clusters (conftest) as a csv with a header, string ids and half stars."""
    users, items, ratings, times = planted_top_n_rows(n_users=600)
    lines = ["user,item,rating,time"] + [
        f"user-{u:04d},film {i},{r - 0.5 if r in (2, 5) else r},{t}"
        for u, i, r, t in zip(users, items, ratings, times)]
    return write(tmp_path_factory.mktemp("own") / "interactions.csv", "\n".join(lines) + "\n")


def test_ease_on_an_own_file_learns_and_keeps_the_string_ids(own_file, tmp_path):
    run_dir = tmp_path / "run"
    done = run_main("ESAE-PyTorch", "--ratings-file", own_file, "--heldout-users", 60,
                    "--comet", "off", "--quiet", "--out-dir", run_dir, "--lam", 200)
    assert done.returncode == 0, done.stderr
    results = read_results(run_dir)
    assert results["test"]["ndcg@100"] > 0.5  # the planted clusters (popularity: 0.23)
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["ratings_file"], config["dataset"]) == (str(own_file), None)
    rows = (run_dir / "test_per_user.csv").read_text().splitlines()[1:]
    ids = [row.split(",")[0] for row in rows]
    assert len(ids) == 60 and all(i.startswith("user-") for i in ids)
    done = run_script(REPO / "ESAE-PyTorch" / "recommend.py", run_dir, "--user", ids[0],
                      "-k", 3, "--json")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["query"]["user"] == ids[0]
    assert [r["movie_id"].startswith("film ") for r in document["recommendations"]] == [True] * 3
    assert document["recommendations"][0]["title"] is None  # no titles for an own file


def test_vae_on_an_own_file_resumes_with_the_same_data(own_file, tmp_path):
    run_dir = tmp_path / "run"
    first = run_main("VAE-PyTorch", "--ratings-file", own_file, "--heldout-users", 60,
                     "--epochs", 1, "--comet", "off", "--quiet", "--out-dir", run_dir)
    assert first.returncode == 0, first.stderr
    refused = run_main("VAE-PyTorch", "--resume", run_dir, "--format", "tsv")
    assert refused.returncode == 2 and "--format cannot change" in refused.stderr
    again = run_main("VAE-PyTorch", "--resume", run_dir, "--epochs", 2, "--comet", "off",
                     "--quiet")
    assert again.returncode == 0, again.stderr
    assert read_results(run_dir)["best_epoch"] in (1, 2)
    assert json.loads((run_dir / "config.json").read_text())["heldout_users"] == 60


def test_baseline_and_benchmark_flags_on_an_own_file(own_file, tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "baselines.py"), "popularity",
                           "--ratings-file", str(own_file), "--heldout-users", "60",
                           "--quiet", "--out-dir", str(tmp_path / "pop")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    spec = __import__("importlib.util").util.spec_from_file_location("bench15b",
                                                                      REPO / "benchmark.py")
    benchmark = __import__("importlib.util").util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    args = benchmark.parse_args(["--dataset", str(own_file), "--epochs", "1", "--seeds", "1"])
    for model in benchmark.MODELS + benchmark.BASELINES:
        command = benchmark.child_command(model, "random", 101, args, tmp_path / "r")
        at = command.index("--ratings-file")
        assert command[at + 1] == str(own_file.resolve()) and "--dataset" not in command
    assert benchmark.data_name(args) == "`interactions.csv`"  # no path in the report
    named = benchmark.parse_args(["--dataset", "ml-20m"])
    command = benchmark.child_command(benchmark.MODELS[0], "random", 101, named, tmp_path)
    assert command[command.index("--dataset") + 1] == "ml-20m"
    default = benchmark.parse_args([])
    command = benchmark.child_command(benchmark.MODELS[0], "random", 101, default, tmp_path)
    assert "--dataset" not in command and "--ratings-file" not in command
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--dataset", str(tmp_path / "absent.csv")])
