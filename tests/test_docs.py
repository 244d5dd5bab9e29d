"""Documentation a user can follow: nothing a user reads points at what only the development
machine has (its data folder outside the repository, the design notes kept outside it, a
lock-file wrapper, scratch folders, absolute paths of that machine).

Checked: every Markdown file in the repository (READMEs, PROTOCOLS.md, the benchmark
report), the docstrings of every .py file outside tests/ (the tests are not what a user
runs), and the --help text of each model folder's main.py, of benchmark.py and of
baselines.py where it exists. The protocols are cited as PROTOCOLS.md, which the repository
carries itself.
"""
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import RATING_FOLDERS, REPO, TOP_N_FOLDERS

BANNED = ("../shared", "DESIGN.md", "flock", "/tmp/", "/work/")
SKIP_DIRS = {"runs", "__pycache__", "node_modules", "site-packages"}


def banned_strings():
    """BANNED plus the absolute path of the folder that holds the repository (with a
    trailing separator, so that a longer sibling name does not match)."""
    parent = REPO.resolve().parent
    if parent == Path(parent.anchor):  # the repository sits at the root: nothing to add
        return BANNED
    return tuple(dict.fromkeys(BANNED + (str(parent) + os.sep,)))


def repository_files(suffix):
    """Tracked and untracked-but-not-ignored files ending in suffix, outside hidden folders
    (a user's .venv); without git, a walk that skips hidden folders, run folders and
    virtual environments."""
    try:
        listing = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO, capture_output=True, check=True).stdout.decode()
        paths = [REPO / name for name in listing.split("\0") if name.endswith(suffix)
                 and not any(part.startswith(".") for part in Path(name).parts[:-1])]
    except (OSError, subprocess.CalledProcessError):
        paths = []
        for root, dirs, files in os.walk(REPO):
            dirs[:] = [d for d in dirs if not d.startswith(".") and d not in SKIP_DIRS
                       and not (Path(root) / d / "pyvenv.cfg").exists()]
            paths += [Path(root) / name for name in files if name.endswith(suffix)]
    return sorted({path for path in paths if path.is_file()})


def offending_lines(text, first_line=1):
    """(line number, banned string, line) for each banned string in text."""
    found = []
    for number, line in enumerate(text.splitlines(), start=first_line):
        found += [(number, banned, line.strip()) for banned in banned_strings()
                  if banned in line]
    return found


def relative(path):
    return path.relative_to(REPO).as_posix()


MARKDOWN = repository_files(".md")
PYTHON = [path for path in repository_files(".py") if relative(path).split("/")[0] != "tests"]
HELP_SCRIPTS = ([f"{folder}/main.py" for folder in RATING_FOLDERS + TOP_N_FOLDERS]
                + ["benchmark.py"]
                + (["baselines.py"] if (REPO / "baselines.py").is_file() else []))


def test_the_checks_see_the_documentation():
    names = {relative(path) for path in MARKDOWN}
    assert {"README.md", "PROTOCOLS.md", "ml-1m/README.md"} <= names
    assert {f"{folder}/README.md" for folder in RATING_FOLDERS + TOP_N_FOLDERS} <= names
    assert any(relative(path) == "ESAE-PyTorch/data.py" for path in PYTHON)
    assert len(banned_strings()) >= len(BANNED)


def test_a_development_path_is_caught():
    """The check itself: a line naming any banned string is reported, a clean one is not."""
    for banned in banned_strings():
        found = offending_lines(f"clean line\npython x.py --data-dir {banned}ml-1m\n")
        assert (2, banned, f"python x.py --data-dir {banned}ml-1m") in found
        assert all(number == 2 for number, _, _ in found)
    assert offending_lines("python VAE-PyTorch/main.py --holdout temporal\n") == []


@pytest.mark.parametrize("path", MARKDOWN, ids=relative)
def test_markdown_names_nothing_of_the_development_machine(path):
    found = offending_lines(path.read_text(encoding="utf-8"))
    assert not found, "\n".join(f"{relative(path)}:{number}: {banned!r} in {line!r}"
                                for number, banned, line in found)


def docstrings(tree):
    """(first line, text) of the module's docstring and of every class and function one."""
    nodes = [node for node in ast.walk(tree) if isinstance(
        node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
    for node in nodes:
        text = ast.get_docstring(node, clean=False)
        if text is not None:
            yield node.body[0].lineno, text


@pytest.mark.parametrize("path", PYTHON, ids=relative)
def test_docstrings_name_nothing_of_the_development_machine(path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = [hit for line, text in docstrings(tree) for hit in offending_lines(text, line)]
    assert not found, "\n".join(f"{relative(path)}:{number}: {banned!r} in {line!r}"
                                for number, banned, line in found)


@pytest.mark.parametrize("script", HELP_SCRIPTS)
def test_help_names_nothing_of_the_development_machine(script):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
    env.pop("COMET_API_KEY", None)
    done = subprocess.run([sys.executable, str(REPO / script), "--help"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{script} --help failed:\n{done.stderr[-2000:]}"
    assert "usage:" in done.stdout
    found = offending_lines(done.stdout)
    assert not found, "\n".join(f"{script} --help: {banned!r} in {line!r}"
                                for _, banned, line in found)
