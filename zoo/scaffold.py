"""``zoo new-plugin``: write a complete, installable plugin package from templates.

The templates are package data in ``zoo/templates/plugin/``: ``common/`` for every
package, one folder per kind (``generative``, ``classifier``) and ``dataset/`` for
``--with-dataset``. A template's path loses its ``.tmpl`` suffix, ``PACKAGE`` in it
becomes the import package and ``gitignore`` becomes ``.gitignore``; its text is a
``string.Template`` (``${name}``; ``$$`` for a dollar). ``*.snippet`` files are
pieces of other templates, not files of their own.

The package written (for ``zoo new-plugin mymodel``)::

    zoo-mymodel/
      pyproject.toml            hatchling; entry points zoo.plugins (and zoo.datasets)
      README.md                 develop, test, train, export, host, publish
      src/zoo_mymodel/          __init__.py (the light Plugin), model.py, train.py,
                                catalog.toml, data.py (with --with-dataset)
      tests/                    conftest.py (8 CPU devices), the conformance kit, model tests
"""

from __future__ import annotations

import importlib.util
import keyword
import os
import re
import shutil
import string
import tempfile
from pathlib import Path

from zoo import registry
from zoo.download import current_umask
from zoo.errors import UsageError

KINDS = ("generative", "classifier")
NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
TEMPLATES = Path(__file__).parent / "templates" / "plugin"

_SUMMARIES = {
    "generative": "Small variational autoencoder for 28x28 grey images",
    "classifier": "Small MLP classifier for 28x28 grey images",
}
_USE = {
    "generative": "    zoo sample runs/{name}-small --n 16 --out samples.png",
    "classifier": "    zoo predict runs/{name}-small --input picture.png   # PNG, JPEG or .npy; --json for scripts",
}
_API = {"generative": ("1", "1"), "classifier": ("(1, 1)", "1.1")}  # predict arrived in contract 1.1


def names_for(name: str) -> dict[str, str]:
    """The names one plugin name implies: import package, distribution, its dataset."""
    return {
        "name": name,
        "package": f"zoo_{name}",
        "distribution": f"zoo-{name.replace('_', '-')}",
        "dataset": f"{name.replace('_', '-')}-shapes",
    }


def check_name(name: str, with_dataset: bool = False) -> None:
    """Refuse a name that is not a lowercase identifier or that something installed already uses."""
    if keyword.iskeyword(name):
        raise UsageError(f"plugin name {name!r} is a Python keyword; choose another name")
    if not NAME.fullmatch(name):
        raise UsageError(
            f"plugin name {name!r} must be a lowercase Python identifier of at most 40 characters "
            "(letters, digits, _; starting with a letter), e.g. 'my_model'"
        )
    names = names_for(name)
    taken = {r.name: r.distribution for r in registry.records()}
    if name in taken:
        raise UsageError(f"a plugin named {name!r} is already installed (from {taken[name]}); choose another name")
    if importlib.util.find_spec(names["package"]) is not None:
        raise UsageError(f"a module named {names['package']} is already importable; choose another name")
    if with_dataset:
        from zoo import data

        if names["dataset"] in data.names():
            raise UsageError(f"a dataset named {names['dataset']!r} is already installed; choose another name")


def _substitutions(name: str, kind: str, with_dataset: bool) -> dict[str, str]:
    from zoo import __version__

    names = names_for(name)
    datasets = (names["dataset"], "mnist") if with_dataset else ("mnist",)
    api, api_text = _API[kind]
    values = names | {
        "summary": _SUMMARIES[kind],
        "api": api,
        "api_text": api_text,
        "zoo_version": __version__,
        "datasets": "(" + ", ".join(f'"{d}"' for d in datasets) + ("," if len(datasets) == 1 else "") + ")",
        "num_classes": "4" if with_dataset else "10",
        "dataset_import": "from zoo.data import Dataset, cache_dir\n" if with_dataset else "",
        "dataset_object": "",
        "dataset_entry_point": "",
        "data_commands": "",
        "data_file": "",
        "use_command": _USE[kind].format(**names),
    }
    if with_dataset:
        snippet = (TEMPLATES / "dataset" / "dataset_object.py.snippet").read_text(encoding="utf-8")
        values["dataset_object"] = string.Template(snippet).substitute(values)
        values["data_file"] = ", `data.py` the dataset"
        values["data_commands"] = (
            f"    zoo data list                      # {names['dataset']} among them\n"
            f"    zoo data fetch {names['dataset']}   # generated into the cache; train fetches it too\n"
        )
        values["dataset_entry_point"] = (
            f'\n# The dataset, discovered the same way; the name is the dataset\'s name.\n'
            f'[project.entry-points."zoo.datasets"]\n{names["dataset"]} = "{names["package"]}:dataset"\n'
        )
    return values


def render(name: str, kind: str = "generative", with_dataset: bool = False) -> dict[Path, str]:
    """Every file of the package: relative path -> text."""
    if kind not in KINDS:
        raise UsageError(f"--kind must be one of {', '.join(KINDS)}; got {kind!r}")
    values = _substitutions(name, kind, with_dataset)
    folders = ["common", kind] + (["dataset"] if with_dataset else [])
    files: dict[Path, str] = {}
    for folder in folders:
        for template in sorted((TEMPLATES / folder).rglob("*.tmpl")):
            relative = template.relative_to(TEMPLATES / folder).with_suffix("")
            parts = [values["package"] if p == "PACKAGE" else ".gitignore" if p == "gitignore" else p for p in relative.parts]
            text = string.Template(template.read_text(encoding="utf-8")).substitute(values)
            files[Path(*parts)] = text
    return files


def new_plugin(name: str, directory: str | Path | None = None, *, kind: str = "generative", with_dataset: bool = False) -> Path:
    """Write the package for plugin ``name`` into ``directory`` (default ``./zoo-NAME``); return it.

    The folder must not exist or be empty. Everything is written into a temporary
    folder beside it first, then renamed: a failure leaves nothing half-written.
    """
    check_name(name, with_dataset)
    files = render(name, kind, with_dataset)
    target = Path(directory if directory is not None else names_for(name)["distribution"]).absolute()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UsageError(f"{target} exists and is not an empty folder; choose another --dir")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for relative, text in files.items():
            (staging / relative).parent.mkdir(parents=True, exist_ok=True)
            (staging / relative).write_text(text, encoding="utf-8")
        staging.chmod(0o777 & ~current_umask())  # mkdtemp makes it 0700; give it the mode mkdir would
        os.replace(staging, target)  # onto a missing or empty folder: atomic
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target

