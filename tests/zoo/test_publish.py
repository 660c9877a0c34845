"""zoo export / zoo verify --reproduce (issue 7 §5): same weights, same bytes; a complete entry; a recipe that reruns.

The data is the fixtures' 64 random images, served as "mnist" for both splits,
so the metrics, the recipe rerun and the export all see the same arrays.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest
from fixtures_checkpoints import NAME, files_of, isolated_env, tiny_images, tiny_zoo, use_catalog  # noqa: F401

import zoo
import zoo.data
from zoo import checkpoint, cli, publish
from zoo.catalog import parse_catalog
from zoo.errors import IntegrityError, UsageError


@pytest.fixture
def tiny_mnist_everywhere(monkeypatch):
    """``zoo.data.load("mnist", split)`` gives the fixtures' tiny images (no cache needed)."""
    data = tiny_images()
    monkeypatch.setattr(zoo.data, "load", lambda name, split="train": data)
    return data


def entry_of(exported: publish.Exported, folder: Path, **card):
    """The printed entry, parsed by the real catalogue parser as if pasted into ``folder``/registry.toml."""
    return parse_catalog("schema = 1\n\n" + exported.entry_toml(**card), folder / "registry.toml")[0]


def catalogue_of(exported: publish.Exported, folder: Path, monkeypatch) -> Path:
    """The printed entry as the one catalogue in use, ``folder``/registry.toml."""
    catalog = folder / "registry.toml"
    catalog.write_text("schema = 1\n\n" + exported.entry_toml())
    use_catalog(monkeypatch, catalog)
    return catalog


def test_exporting_one_workdir_twice_gives_identical_bytes(tmp_path, tiny_zoo):
    first = publish.export(tiny_zoo.run, tmp_path / "a" / "tiny", measure=False)
    second = publish.export(tiny_zoo.run, tmp_path / "b" / "elsewhere" / "tiny", measure=False)
    assert first.sha256 == second.sha256 == checkpoint.manifest_sha256(first.path)
    assert files_of(first.path) == files_of(second.path)
    for name in files_of(first.path):
        assert (first.path / name).read_bytes() == (second.path / name).read_bytes(), name
        assert str(tmp_path).encode() not in (first.path / name).read_bytes(), name
    archive_a = publish.export(tiny_zoo.run, tmp_path / "a" / "tiny-archive", archive=True, measure=False)
    archive_b = publish.export(tiny_zoo.run, tmp_path / "b" / "tiny-archive", archive=True, measure=False)
    assert archive_a.path.name == "tiny-archive.zip"
    assert archive_a.path.read_bytes() == archive_b.path.read_bytes()
    assert str(tmp_path).encode() not in archive_a.path.read_bytes()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["tiny", "tiny-archive.zip"]  # no temporaries


def test_the_printed_entry_is_complete_and_measured_now(tmp_path, tiny_zoo, tiny_mnist_everywhere, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where the catalogue will live: the checkpoint path is relative to it
    exported = publish.export(tiny_zoo.run, tmp_path / "checkpoints" / "tiny-e", measure=True)
    entry = entry_of(exported, tmp_path, license="CC0-1.0")
    assert (entry.plugin, entry.variant, entry.dataset, entry.license) == ("vae", "dense-20", "mnist", "CC0-1.0")
    assert entry.checkpoint == "checkpoints/tiny-e" and entry.sha256 == checkpoint.manifest_sha256(exported.path)
    assert entry.params_digest == tiny_zoo.digest  # the trained parameters, bit for bit (no EMA in this run)
    independent = zoo.load(tiny_zoo.run).evaluate(tiny_mnist_everywhere)
    assert dict(entry.metrics) == pytest.approx(independent, rel=1e-6) and set(independent) <= set(entry.metrics)
    assert entry.seed == 0 and "4 steps" in entry.description


def test_an_archive_entry_loads_as_printed(tmp_path, tiny_zoo, monkeypatch):
    exported = publish.export(tiny_zoo.run, tmp_path / "tiny-zip", archive=True, measure=False)
    catalog = catalogue_of(exported, tmp_path, monkeypatch)
    entry = parse_catalog(catalog.read_text(), catalog)[0]
    assert entry.remote and entry.size == exported.path.stat().st_size
    with zipfile.ZipFile(exported.path) as zf:
        assert all(n.startswith("tiny-zip/") for n in zf.namelist())
    loaded = zoo.load("tiny-zip")
    assert publish.weights_digest(loaded.checkpoint) == tiny_zoo.digest


def test_the_recipe_parses_back_to_the_run(tiny_zoo):
    """The recipe, read by the real `zoo train` parser, names the run's plugin, variant and settings."""
    meta = checkpoint.read_meta(tiny_zoo.run / "checkpoints" / "4")
    text = publish.recipe(meta, {"latent_dim": 8})
    ctx = cli.train.make_context("train", publish.recipe_arguments(text, "test"))
    params = ctx.params
    assert (params["plugin"], params["variant"], params["dataset"]) == ("vae", "dense-20", "mnist")
    assert (params["steps"], params["batch_size"], params["seed"], params["checkpoint_every"]) == (4, 8, 0, 2)
    assert "latent_dim=8" in params["settings"]


@pytest.mark.parametrize("text", ["python train.py", "zoo sample vae", "zoo train", "zoo train 'unclosed"])
def test_a_recipe_that_is_not_zoo_train_is_refused(text):
    with pytest.raises(UsageError, match="recipe"):
        publish.recipe_arguments(text, "cat.toml: [models.x]")


@pytest.mark.parametrize("name", ["Bad Name", "UPPER", "a/b/../../x y"])
def test_export_refuses_a_name_a_catalogue_cannot_hold(tmp_path, tiny_zoo, name):
    with pytest.raises(UsageError, match="cannot name a catalogue entry"):
        publish.export(tiny_zoo.run, tmp_path / name, measure=False)


def run_cli(*args: str) -> int:
    try:
        cli.main(list(args))
    except SystemExit as e:
        return int(e.code or 0)
    return 0


@pytest.mark.slow
def test_verify_reproduce_reruns_the_recipe_and_compares_the_digest(tmp_path, monkeypatch, tiny_mnist_everywhere, capsys):
    """A tiny entry built here: trained, exported, catalogued; the rerun must give the same params_digest."""
    monkeypatch.chdir(tmp_path)
    zoo.train("vae", workdir=tmp_path / "run", steps=3, batch_size=8, seed=1, progress=False)
    exported = publish.export(tmp_path / "run", tmp_path / "tiny-repro", measure=True)
    catalog = catalogue_of(exported, tmp_path, monkeypatch)
    assert run_cli("verify", "--reproduce", "tiny-repro") == 0
    out = capsys.readouterr().out
    assert f"tiny-repro: reproduced (params_digest {exported.params_digest}" in out

    catalog.write_text(catalog.read_text().replace(exported.params_digest, "0" * 64))  # a card that lies
    use_catalog(monkeypatch, catalog)
    assert run_cli("verify", "--reproduce", "tiny-repro") == 1
    assert "NOT REPRODUCED" in capsys.readouterr().out


def test_verify_reproduce_needs_a_digest_on_the_card(tmp_path, monkeypatch, tiny_zoo, capsys):
    shutil.copytree(tiny_zoo.root, tmp_path / "cat")
    use_catalog(monkeypatch, tmp_path / "cat" / "registry.toml")  # the fixture's card has no params_digest
    assert run_cli("verify", "--reproduce", NAME) == 2
    assert "no params_digest" in capsys.readouterr().err


def test_cli_export_prints_an_entry_a_catalogue_accepts(tmp_path, tiny_zoo, tiny_mnist_everywhere, monkeypatch):
    from helpers import run_main

    monkeypatch.chdir(tmp_path)
    code, out, err = run_main(["export", str(tiny_zoo.run), "checkpoints/tiny-cli", "--license", "CC0-1.0"])
    assert code == 0, err
    entry = parse_catalog("schema = 1\n\n" + out, tmp_path / "registry.toml")[0]
    assert entry.name == "tiny-cli" and entry.checkpoint == "checkpoints/tiny-cli" and entry.license == "CC0-1.0"
    assert entry.sha256 == checkpoint.manifest_sha256(tmp_path / "checkpoints" / "tiny-cli") and entry.metrics
    assert err.strip().startswith("wrote checkpoints/tiny-cli (MANIFEST sha256")


def test_verify_compares_the_cards_params_digest_with_the_restored_weights(tmp_path, tiny_zoo, monkeypatch):
    """A tiny entry in ZOO_REGISTRY: the card's digest is checked against the training's own digest, then a lying one."""
    monkeypatch.chdir(tmp_path)  # where the catalogue lives: the checkpoint path is relative to it
    exported = publish.export(tiny_zoo.run, tmp_path / "tiny-digest", measure=False)
    catalog = catalogue_of(exported, tmp_path, monkeypatch)
    good = zoo.verify("tiny-digest")
    assert good.ok and f"params_digest: ok ({tiny_zoo.digest[:12]}...)" in good.checks

    lie = "0" * 64
    catalog.write_text(catalog.read_text().replace(exported.params_digest, lie))  # same bytes, a card that lies
    use_catalog(monkeypatch, catalog)
    bad = zoo.verify("tiny-digest")
    assert not bad.ok
    assert bad.checks[0].startswith("checksums: ok")  # the MANIFEST still matches: only the digest differs
    assert tiny_zoo.digest in bad.checks[-1] and lie in bad.checks[-1]


def test_a_digest_mismatch_is_an_integrity_error_naming_both(tiny_zoo):
    loaded = zoo.load(tiny_zoo.run)
    assert publish.check_digest(loaded.model, tiny_zoo.digest, "run") == tiny_zoo.digest
    with pytest.raises(IntegrityError) as error:
        publish.check_digest(loaded.model, "f" * 64, "run")
    assert tiny_zoo.digest in str(error.value) and "f" * 64 in str(error.value)
