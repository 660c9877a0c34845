"""Shared test helpers: fake plugin distributions on disk, catalogues, running the CLI.

A fake distribution is what pip would leave in site-packages: a
``<name>-<version>.dist-info`` folder with ``METADATA`` and ``entry_points.txt``
next to the module the entry point names. Putting the folder on ``sys.path`` (or
``PYTHONPATH`` for a subprocess) makes ``importlib.metadata`` find it exactly as
it finds an installed package.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ZOO_SCRIPT = Path(sys.executable).parent / "zoo"
SHA = "ab" * 32  # a well-formed sha256

# --------------------------------------------------------------------------- fake distributions


def write_distribution(
    root: Path,
    name: str,
    entry_points: Mapping[str, str],
    modules: Mapping[str, str] = (),
    version: str = "1.0",
    group: str = "zoo.plugins",
) -> Path:
    """Write distribution ``name`` (``{ep_name: "module:attr"}`` in ``group``) and its modules under ``root``.

    ``modules`` maps a module name (``"pkg.sub"`` allowed) to its source.
    """
    root.mkdir(parents=True, exist_ok=True)
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = [f"[{group}]", *(f"{ep} = {target}" for ep, target in entry_points.items())]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    for module, source in dict(modules).items():
        *packages, leaf = module.split(".")
        folder = root.joinpath(*packages)
        for i in range(len(packages)):
            init = root.joinpath(*packages[: i + 1], "__init__.py")
            init.parent.mkdir(parents=True, exist_ok=True)
            if not init.exists():
                init.write_text("")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{leaf}.py").write_text(textwrap.dedent(source))
    return root


def plugin_source(name: str, module: str, *, api: int | tuple[int, int] = 1, extra: str = "", **fields: str) -> str:
    """Source of a light plugin module whose refs point into ``module`` (see ``model_source``).

    ``fields`` replace a keyword of the ``Plugin(...)`` call by raw Python source
    (``build="'nocolon'"``); ``extra`` is inserted before it.
    """
    kwargs = {
        "name": repr(name),
        "api": repr(api),
        "summary": repr(f"fake plugin {name}"),
        "config": repr(f"{module}:Config"),
        "variants": "{'small': {'features': 3}, 'large': {'features': 5}}",
        "build": repr(f"{module}:build"),
        "train": repr(f"{module}:train"),
        "sample": repr(f"{module}:sample"),
        "datasets": "('mnist',)",
    }
    kwargs.update(fields)
    body = ",\n    ".join(f"{k}={v}" for k, v in kwargs.items() if v is not None)
    return f"from zoo.plugin import Plugin\n{extra}\nplugin = Plugin(\n    {body},\n)\n"


MODEL_SOURCE = """
import dataclasses
from flax import nnx

@dataclasses.dataclass(frozen=True)
class Config:
    features: int = 3
    scale: float = 1.0

def build(config, rngs):
    return nnx.Linear(2, config.features, rngs=rngs)

def train(run):
    raise NotImplementedError

def sample(model, key, n):
    return [f"text {i}" for i in range(n)]
"""


def healthy_plugin(root: Path, name: str = "fakeok", dist: str = "fake-ok") -> Path:
    """A working third-party plugin ``name`` from distribution ``dist``."""
    pkg = name.replace("-", "_") + "_pkg"
    return write_distribution(
        root,
        dist,
        {name: f"{pkg}:plugin"},
        {pkg: plugin_source(name, f"{pkg}_model"), f"{pkg}_model": MODEL_SOURCE},
    )


def broken_plugins(root: Path) -> dict[str, str]:
    """Install one distribution per way a plugin can be broken; returns ``{plugin name: expected reason}``.

    Every one of them is a separate distribution under ``root`` (so they can be
    installed together); a second distribution claiming ``vae`` is *not* among
    them (it breaks ``vae`` itself; see ``duplicate_vae``).
    """
    cases = {
        # module raises ImportError on import
        "importfail": (
            {"importfail_pkg": "raise ImportError('needs libfoo, which is not installed')\n"},
            "importfail_pkg:plugin",
            "libfoo",
        ),
        # targets the next API major
        "oldapi": ({"oldapi_pkg": plugin_source("oldapi", "oldapi_model", api=2)}, "oldapi_pkg:plugin", "API 2"),
        # the entry point names something that is not a Plugin
        "notplugin": ({"notplugin_pkg": "plugin = {'name': 'notplugin'}\n"}, "notplugin_pkg:plugin", "not a zoo.Plugin"),
        # Plugin(...) without its required fields fails when the module is imported
        "nofields": (
            {"nofields_pkg": "from zoo.plugin import Plugin\nplugin = Plugin(name='nofields', api=1)\n"},
            "nofields_pkg:plugin",
            "missing",
        ),
        # fields present but empty / wrongly typed
        "emptyfields": (
            {"emptyfields_pkg": plugin_source("emptyfields", "m", summary="''", variants="{}")},
            "emptyfields_pkg:plugin",
            "summary must be a non-empty string",
        ),
        # a ref that is not "module:attribute"
        "badref": ({"badref_pkg": plugin_source("badref", "m", build="'nocolon'")}, "badref_pkg:plugin", "nocolon"),
        # the object calls itself something else than its entry point
        "misnamed": ({"misnamed_pkg": plugin_source("othername", "m")}, "misnamed_pkg:plugin", "othername"),
        # the entry point's attribute does not exist
        "noattr": ({"noattr_pkg": "x = 1\n"}, "noattr_pkg:plugin", "AttributeError"),
    }
    for name, (modules, target, _) in cases.items():
        write_distribution(root, f"fake-{name}", {name: target}, modules)
    return {name: reason for name, (_, _, reason) in cases.items()}


def duplicate_vae(root: Path, dist: str = "evil-vae") -> Path:
    """A third-party distribution whose plugin is also called ``vae``."""
    return write_distribution(root, dist, {"vae": "evil_vae:plugin"}, {"evil_vae": plugin_source("vae", "evil_vae_model")})


# --------------------------------------------------------------------------- fake datasets and a tiny classifier


def dataset_source(name: str, module: str, **fields: str) -> str:
    """Source of a light dataset module declaring ``dataset``, refs into ``module`` (see ``TINY_DATA_SOURCE``).

    ``fields`` replace a keyword of the ``Dataset(...)`` call by raw Python source.
    """
    kwargs = {
        "name": repr(name),
        "api": "1",
        "splits": "('train', 'test')",
        **{f: repr(f"{module}:{f}") for f in ("fetch", "load", "is_cached", "synthetic")},
        "size": "'1 kB'",
        "license": "'CC0-1.0'",
        "source": f"'https://example.org/{name}'",
        "classes": "('dark', 'grey', 'bright')",
        "image_shape": "(4, 4, 1)",
    }
    kwargs.update(fields)
    body = ",\n    ".join(f"{k}={v}" for k, v in kwargs.items() if v is not None)
    return f"from zoo.data import Dataset\n\ndataset = Dataset(\n    {body},\n)\n"


TINY_DATA_SOURCE = """
import numpy as np
from zoo.data import cache_dir

NAME = {name!r}
SIZES = {{"train": 48, "test": 24}}


def _arrays(n, seed):
    # 4x4 grey images whose brightness is the class: 0 dark, 1 grey, 2 bright (plus noise).
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 3, n).astype(np.int32)
    image = label[:, None, None, None] * 100 + rng.integers(0, 40, (n, 4, 4, 1))
    return {{"image": image.astype(np.uint8), "label": label}}


def fetch():
    folder = cache_dir(NAME)
    folder.mkdir(parents=True, exist_ok=True)
    for seed, (split, n) in enumerate(SIZES.items()):
        np.savez(folder / f"{{split}}.npz", **_arrays(n, seed))
    return folder


def load(split):
    with np.load(cache_dir(NAME) / f"{{split}}.npz") as arrays:
        return dict(arrays)


def synthetic(n, seed):
    return _arrays(n, 1000 + seed)
"""


TINY_IS_CACHED_SOURCE = """
from zoo.data import cache_dir


def is_cached():
    return all((cache_dir({name!r}) / f"{{split}}.npz").is_file() for split in ("train", "test"))
"""


def tiny_dataset(root: Path, name: str = "tiny", dist: str | None = None, **fields: str) -> Path:
    """A working third-party dataset ``name`` (4x4 images of 3 brightness classes) from its own distribution."""
    pkg = name.replace("-", "_") + "_data"
    light = dataset_source(name, f"{pkg}_impl", **{"is_cached": repr(f"{pkg}:is_cached"), **fields})
    light += TINY_IS_CACHED_SOURCE.format(name=name)  # in the light module: `zoo data list` calls it
    return write_distribution(
        root,
        dist or f"fake-{name}-data",
        {name: f"{pkg}:dataset"},
        {pkg: light, f"{pkg}_impl": TINY_DATA_SOURCE.format(name=name)},
        group="zoo.datasets",
    )


CLASSIFIER_SOURCE = """
import dataclasses
import jax, jax.numpy as jnp, numpy as np, optax
from flax import nnx
from zoo import training


@dataclasses.dataclass(frozen=True)
class Config:
    pixels: int = 16
    classes: int = 3


def build(config, rngs):
    return nnx.Linear(config.pixels, config.classes, rngs=rngs)


def _logits(model, images):
    return model(images.reshape(images.shape[0], -1).astype(jnp.float32))


def loss(model, batch, key):
    images = batch["image"].astype(jnp.float32) / 255.0
    return optax.softmax_cross_entropy_with_integer_labels(_logits(model, images), batch["label"]).mean(), {{}}


def train(run):
    return run.fit(training.Loss(loss))


def predict(model, inputs, *, temperature: float = 1.0):
    CALLS.append(np.array(inputs))
    return jax.nn.softmax(_logits(model, jnp.asarray(inputs)) / temperature)


def evaluate(model, data):
    {evaluate}


CALLS = []  # what predict received, for tests
"""

GOOD_EVALUATE = (
    "return {'accuracy': float((np.argmax(_logits(model, data['image'] / 255.0), -1) == data['label']).mean())}"
)


def classifier_plugin(
    root: Path, name: str = "clf", dataset: str = "tiny", *, evaluate: str = GOOD_EVALUATE, **fields: str
) -> Path:
    """A tiny linear classifier plugin with ``predict`` (api 1.1) training on ``dataset``; ``fields`` as in ``plugin_source``."""
    pkg = f"{name}_pkg"
    fields = {"sample": None, "predict": repr(f"{pkg}_model:predict"), "evaluate": repr(f"{pkg}_model:evaluate"),
              "datasets": repr((dataset,)), "variants": "{'linear': {}}", **fields}  # fmt: skip
    source = plugin_source(name, f"{pkg}_model", api=(1, 1), **fields)
    return write_distribution(
        root, f"fake-{name}", {name: f"{pkg}:plugin"},
        {pkg: source, f"{pkg}_model": CLASSIFIER_SOURCE.format(evaluate=evaluate)},
    )  # fmt: skip


@pytest.fixture(autouse=True)
def clean_zoo_env(monkeypatch, tmp_path):
    """No ZOO_* setting of the caller's shell leaks in; the cache is an empty folder."""
    for name in ("ZOO_REGISTRY", "ZOO_DISABLE_PLUGIN_AUTOLOAD", "ZOO_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "zoo-home"))


@pytest.fixture
def site(tmp_path, monkeypatch):
    """An empty 'site-packages' on sys.path; modules imported from it are forgotten afterwards."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    before = set(sys.modules)
    yield root
    for name in set(sys.modules) - before:
        module = sys.modules.get(name)
        origin = getattr(module, "__file__", None) or ""
        if origin.startswith(str(root)):
            del sys.modules[name]


@contextlib.contextmanager
def on_sys_path(root: Path):
    """``root`` on sys.path, for fixtures wider than one test; modules imported from it are forgotten after."""
    sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    before = set(sys.modules)
    try:
        yield root
    finally:
        sys.path.remove(str(root))
        for name in set(sys.modules) - before:
            if (getattr(sys.modules.get(name), "__file__", None) or "").startswith(str(root)):
                del sys.modules[name]


@contextlib.contextmanager
def trained_tiny_classifier(root: Path, **train_options):
    """``clf`` (``CLASSIFIER_SOURCE``) trained on ``tiny``, both installed under ``root/site``.

    Yields the workdir ``root/run`` while both distributions stay importable, with
    ``ZOO_HOME`` in ``root``; discovery is reset on the way in and out.
    """
    import zoo
    from zoo import registry

    tiny_dataset(root / "site")
    classifier_plugin(root / "site")
    with on_sys_path(root / "site"), pytest.MonkeyPatch.context() as mp:
        mp.setenv("ZOO_HOME", str(root / "zoo-home"))
        registry.reset()
        zoo.train("clf", workdir=root / "run", progress=False, **train_options)
        yield root / "run"
    registry.reset()


# --------------------------------------------------------------------------- catalogues

ENTRY_FIELDS = {
    "plugin": '"vae"',
    "dataset": '"mnist"',
    "checkpoint": '"checkpoints/m"',
    "sha256": f'"{SHA}"',
    "metrics": "{ neg_elbo = 98.7 }",
    "recipe": '"zoo train vae --steps 10"',
    "seed": "0",
    "license": '"CC0-1.0"',
    "description": '"A test entry."',
}


def entry_toml(name: str = "m", drop: tuple[str, ...] = (), **fields: str) -> str:
    """One ``[models.NAME]`` table; ``fields`` are raw TOML values (``seed="1"``) replacing or adding fields."""
    values = {k: v for k, v in {**ENTRY_FIELDS, **fields}.items() if k not in drop}
    return f"[models.{name}]\n" + "".join(f"{k} = {v}\n" for k, v in values.items())


def catalog_toml(*entries: str, schema: str = "1") -> str:
    return (f"schema = {schema}\n\n" if schema is not None else "") + "\n".join(entries)


def write_catalog(path: Path, *entries: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(catalog_toml(*entries))
    return path


# --------------------------------------------------------------------------- running the CLI


def run_main(argv: list[str]) -> tuple[int, str, str]:
    """Run ``zoo.cli.main(argv)`` in-process; returns (exit code, stdout, stderr).

    Anything but SystemExit escaping ``main`` (a traceback for the user) fails the test.
    """
    from zoo.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
    code = exit_info.value.code
    return (0 if code is None else code), out.getvalue(), err.getvalue()


def subprocess_env(pythonpath: Path | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZOO_")}
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), *filter(None, [os.environ.get("PYTHONPATH")])])
    env.update(extra)
    return env


def run_zoo(*args: str, pythonpath: Path | None = None, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    """The installed ``zoo`` console script in a fresh process."""
    return subprocess.run(
        [str(ZOO_SCRIPT), *args],
        capture_output=True,
        text=True,
        env=subprocess_env(pythonpath, **env),
        timeout=timeout,
        cwd=pythonpath or REPO,
    )


def assert_one_line_error(stderr: str, *needles: str) -> None:
    """stderr is one ``zoo: error: ...`` line (no traceback) containing every needle."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("zoo: error: "), stderr
    for needle in needles:
        assert needle in lines[0], (needle, stderr)
