"""``zoo new-plugin``: the package it writes is complete, installs, works with every command, passes its own tests.

The end-to-end test builds each generated package into a wheel and installs it
into a fresh virtual environment that sees this environment's packages (flax-zoo
included) through a site .pth file, as ``--system-site-packages`` would for a
system Python; everything runs offline.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    assert_one_line_error,
    clean_zoo_env,  # noqa: F401 - autouse fixture
    run_main,
    site,  # noqa: F401 - fixture
    tiny_dataset,
)

from zoo import catalog, registry, scaffold

COMMON_FILES = {
    ".gitignore", "README.md", "pyproject.toml", "tests/conftest.py", "tests/test_conformance.py",
    "tests/test_model.py", "src/zoo_mymodel/__init__.py", "src/zoo_mymodel/model.py",
    "src/zoo_mymodel/train.py", "src/zoo_mymodel/catalog.toml",
}  # fmt: skip


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("kind,with_dataset", [("generative", False), ("generative", True), ("classifier", True)])
def test_writes_a_complete_package(tmp_path, kind, with_dataset):
    folder = scaffold.new_plugin("mymodel", tmp_path / "pkg", kind=kind, with_dataset=with_dataset)
    assert _files(folder) == COMMON_FILES | ({"src/zoo_mymodel/data.py"} if with_dataset else set())
    for path in folder.rglob("*"):
        if path.is_file():
            assert "${" not in path.read_text(), f"{path} has an unfilled template field"
        if path.suffix == ".py":
            ast.parse(path.read_text(), filename=str(path))
    project = tomllib.loads((folder / "pyproject.toml").read_text())
    assert project["project"]["name"] == "zoo-mymodel"
    entry_points = project["project"]["entry-points"]
    assert entry_points["zoo.plugins"] == {"mymodel": "zoo_mymodel:plugin"}
    assert entry_points.get("zoo.datasets") == ({"mymodel-shapes": "zoo_mymodel:dataset"} if with_dataset else None)
    assert project["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"] == ["src/zoo_mymodel"]
    assert catalog.parse_catalog((folder / "src/zoo_mymodel/catalog.toml").read_text(), folder / "c.toml") == []
    light = (folder / "src/zoo_mymodel/__init__.py").read_text()
    assert "api=(1, 1)" in light if kind == "classifier" else "api=1," in light
    assert 'datasets=("mymodel-shapes", "mnist")' in light if with_dataset else 'datasets=("mnist",)' in light


def test_the_default_folder_is_the_distribution_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_main(["new-plugin", "my_model", "--kind", "classifier"])
    assert code == 0, err
    assert _files(tmp_path / "zoo-my-model") == {f.replace("zoo_mymodel", "zoo_my_model") for f in COMMON_FILES}
    assert 'name = "zoo-my-model"' in (tmp_path / "zoo-my-model" / "pyproject.toml").read_text()


def test_an_existing_empty_folder_is_filled(tmp_path):
    (tmp_path / "empty").mkdir()
    code, out, err = run_main(["new-plugin", "mymodel", "--dir", str(tmp_path / "empty")])
    assert code == 0, err
    assert _files(tmp_path / "empty") == COMMON_FILES and "wrote" in out


@pytest.mark.parametrize(
    "name,needle",
    [
        ("My-Model", "lowercase Python identifier"),
        ("1model", "lowercase Python identifier"),
        ("x" * 41, "at most 40"),
        ("class", "Python keyword"),
        ("vae", "plugin named 'vae' is already installed (from flax-zoo)"),
    ],
)
def test_bad_names_are_one_line_exit_2_and_write_nothing(tmp_path, name, needle):
    code, _, err = run_main(["new-plugin", name, "--dir", str(tmp_path / "pkg")])
    assert code == 2
    assert_one_line_error(err, needle)
    assert not (tmp_path / "pkg").exists()


def test_clashes_with_installed_modules_datasets_and_folders(site, tmp_path):
    (site / "zoo_taken.py").write_text("")
    tiny_dataset(site, name="clash-shapes")
    registry.reset()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    cases = {
        ("taken",): "module named zoo_taken is already importable",
        ("clash", "--with-dataset"): "dataset named 'clash-shapes' is already installed",
        ("fresh", "--dir", str(tmp_path / "full")): "exists and is not an empty folder",
        ("fresh", "--kind", "regression"): "'regression' is not one of 'generative', 'classifier'",
    }
    for args, needle in cases.items():
        code, _, err = run_main(["new-plugin", *args] + ([] if "--dir" in args else ["--dir", str(tmp_path / "new")]))
        assert code == 2, (args, err)
        assert_one_line_error(err, needle)
    assert not (tmp_path / "new").exists() and _files(tmp_path / "full") == {"keep.txt"}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging folder left


def _zoo_commands(text: str) -> list[list[str]]:
    """Every ``zoo ...`` command of a Markdown text (code blocks, indented code, inline code), split into arguments."""
    import shlex

    commands, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif (fenced or line.startswith("    ")) and line.strip().startswith("zoo "):
            commands.append(shlex.split(line.split("#")[0])[1:])
    inline = re.findall(r"(?<!`)`(zoo [^`]+)`", text)  # `zoo verify NAME` in the prose
    return commands + [shlex.split(span)[1:] for span in inline]


@pytest.mark.parametrize("document", ["docs/plugins.md", "README.md", "generative", "classifier"])
def test_every_zoo_command_in_the_guides_is_a_real_command_and_options(document):
    from helpers import REPO

    if document in scaffold.KINDS:  # the README of a generated package
        text = scaffold.render("mymodel", document, with_dataset=True)[Path("README.md")]
    else:
        text = (REPO / document).read_text()
    commands = _zoo_commands(text)
    assert len(commands) >= 3
    for args in commands:  # --help is eager: click checks the command and option names, then stops
        args = [a for a in args if a != "..."]  # `zoo --debug ...`: any command
        code, out, err = run_main([*args, "--help"])
        assert code == 0 and "Usage:" in out, (args, err)


@pytest.mark.slow
def test_the_zoo_wheel_carries_every_template_and_the_pytest_plugin(tmp_path):
    import zipfile

    from helpers import REPO

    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "-w", tmp_path, REPO], capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("flax_zoo-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    templates = {f"zoo/{p.relative_to(REPO / 'zoo').as_posix()}" for p in scaffold.TEMPLATES.rglob("*") if p.is_file()}
    assert templates and templates <= names, sorted(templates - names)
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "[pytest11]\nzoo = zoo.pytest_plugin" in zipfile.ZipFile(wheel).read(entry_points).decode()


# --------------------------------------------------------------------------- end to end, in a fresh environment


def _run(*args: str | Path, cwd: Path, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(map(str, args))} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory) -> Path:
    """A new virtual environment whose site-packages also holds this one's (flax-zoo, jax, pytest, hatchling)."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    python = venv / "bin" / "python"
    venv_site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True, check=True
    ).stdout.strip()
    ours = sysconfig.get_paths()["purelib"]  # addsitedir also runs its .pth files: the editable flax-zoo, plugins/
    (Path(venv_site) / "parent_site.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    return python


def _install(python: Path, package: Path, wheels: Path, env: dict[str, str]) -> None:
    """Build the package's wheel offline, as `python -m build` would, and install it (not editable)."""
    pip = [sys.executable, "-m", "pip"]
    _run(*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", wheels, package, cwd=package, env=env)
    (wheel,) = wheels.glob(f"{package.name.replace('-', '_')}-*.whl")
    _run(*pip, "--python", python, "install", "--no-deps", "--no-index", wheel, cwd=package, env=env)


@pytest.mark.slow
@pytest.mark.parametrize("kind,with_dataset", [("classifier", True), ("generative", True), ("generative", False)])
def test_generated_package_installs_and_works_with_every_command(fresh_venv, tmp_path, kind, with_dataset):
    name = f"{kind[:3]}{'data' if with_dataset else 'plain'}"
    package = tmp_path / f"zoo-{name}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZOO_", "PYTHONPATH", "XLA_FLAGS"))}
    env["ZOO_HOME"] = str(tmp_path / "home")
    _run(sys.executable, "-m", "zoo.cli", "new-plugin", name, "--dir", package, "--kind", kind,
         *(["--with-dataset"] if with_dataset else []), cwd=tmp_path, env=env)  # fmt: skip
    _install(fresh_venv, package, tmp_path / "wheels", env)
    zoo = (fresh_venv, "-m", "zoo.cli")
    work = tmp_path / "work"  # not the package folder: only the installed copy can be imported
    work.mkdir()

    listed = json.loads(_run(*zoo, "list", "--json", cwd=work, env=env).stdout)
    assert {m["name"]: m["status"] for m in listed}.get(name) == "ok"
    where = _run(fresh_venv, "-c", f"import zoo_{name}; print(zoo_{name}.__file__)", cwd=work, env=env).stdout
    assert str(fresh_venv.parents[1]) in where  # the wheel's copy in the fresh environment
    if with_dataset:
        _run(*zoo, "data", "fetch", f"{name}-shapes", cwd=work, env=env)
        rows = {row["name"]: row for row in json.loads(_run(*zoo, "data", "list", "--json", cwd=work, env=env).stdout)}
        assert rows[f"{name}-shapes"]["cached"] and rows[f"{name}-shapes"]["ok"]

        result = json.loads(_run(*zoo, "train", name, "--steps", "6", "--batch-size", "16", "--workdir", "run",
                                 "--quiet", "--json", cwd=work, env=env).stdout)  # fmt: skip
        assert result["step"] == 6 and np.isfinite(result["loss"])
        if kind == "classifier":
            np.save(work / "x.npy", np.random.default_rng(0).random((2, 28, 28, 1), dtype=np.float32))
            rows = json.loads(_run(*zoo, "predict", "run", "--input", "x.npy", "--json", cwd=work, env=env).stdout)
            assert [row["input"] for row in rows] == ["x.npy[0]", "x.npy[1]"], rows
            assert {top["class"] for row in rows for top in row["top"]} <= {"horizontal bar", "vertical bar", "diagonal", "box"}
        else:
            _run(*zoo, "sample", "run", "--n", "4", "--out", "s.png", cwd=work, env=env)
            assert (work / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        entry = _run(*zoo, "export", "run", f"{name}-small", cwd=work, env=env).stdout
        (work / "catalog.toml").write_text(entry if entry.startswith("schema") else "schema = 1\n\n" + entry)
        (parsed,) = catalog.load_catalog(work / "catalog.toml")  # the printed entry is a valid catalogue
        assert parsed.plugin == name and parsed.dataset == f"{name}-shapes" and parsed.metrics

    tests = _run(fresh_venv, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error::zoo.testing.SourceTreeWarning",
                 cwd=package, env=env)  # fmt: skip
    assert " passed" in tests.stdout and "failed" not in tests.stdout, tests.stdout
    # Run from the checkout with src/ on the path: the kit warns that it is not testing the installed package.
    shadowed = subprocess.run(
        [fresh_venv, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "discovery", "tests/test_conformance.py"],
        cwd=package, env=env | {"PYTHONPATH": str(package / "src")}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert shadowed.returncode == 0 and "SourceTreeWarning" in shadowed.stdout, shadowed.stdout
