"""The ``zoo`` command's contract: exit codes, one-line errors, pure ``--json``, broken plugins, no jax for list/info.

Most tests call ``zoo.cli.main`` in-process (it is the entry that maps errors to
exit codes; anything else escaping it would be a traceback for the user and
fails the test). Subprocesses are used where the process boundary matters: the
real console script's stderr, what ``zoo list`` imports, and PYTHONPATH-installed
plugins seen by a fresh interpreter.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from helpers import (
    assert_one_line_error,
    broken_plugins,
    clean_zoo_env,  # noqa: F401 - autouse fixture
    duplicate_vae,
    entry_toml,
    healthy_plugin,
    run_main,
    run_zoo,
    site,  # noqa: F401 - fixture
    subprocess_env,
    write_catalog,
)

from zoo import registry

SHIPPED = set(registry.catalog().entries)  # the repo's own registry.toml
SHIPPED_VAE = {name for name, entry in registry.catalog().entries.items() if entry.plugin == "vae"}
BUILTIN = {r.name for r in registry.records() if r.builtin}  # the plugins flax-zoo ships


@pytest.fixture
def pretrained(tmp_path, monkeypatch):
    """A catalogue with ``vae-toy`` on ZOO_REGISTRY (its checkpoint is never read here)."""
    path = write_catalog(
        tmp_path / "catalogue" / "registry.toml",
        entry_toml("vae-toy", variant='"dense-20"', description='"VAE on MNIST."'),
    )
    monkeypatch.setenv("ZOO_REGISTRY", str(path))
    return path


@pytest.fixture
def no_training(tmp_path, monkeypatch):
    """Train commands here must fail before any work; if one did not, it would find no data and no network."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    return ["--workdir", str(tmp_path / "run"), "--steps", "1", "--batch-size", "8", "--quiet"]


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def listed(out: str) -> dict[str, str]:
    """``zoo list`` text -> {name: rest of the line}."""
    return {line.split()[0]: line for line in lines(out)}


# --------------------------------------------------------------------------- list and info never import jax

DRIVER = textwrap.dedent(
    """
    import json, sys
    from zoo.cli import main

    HEAVY = ("jax", "jaxlib", "flax", "numpy", "optax", "orbax", "fakeok_pkg_model")
    report = []
    for argv in json.loads(sys.argv[1]):
        code = None
        try:
            main(argv)
        except SystemExit as e:
            code = e.code
        finally:
            report.append({"argv": argv, "code": code, "heavy": [m for m in HEAVY if m in sys.modules]})
    with open(sys.argv[2], "w") as f:
        json.dump(report, f)
    """
)


def test_list_and_info_never_import_jax(tmp_path, site, pretrained):
    healthy_plugin(site)
    broken_plugins(site)
    commands = [
        ["list"],
        ["list", "--json"],
        ["list", "vae*", "--pretrained"],
        ["list", "--plugin", "fakeok"],
        ["info", "vae"],
        ["info", "vae", "--json"],
        ["info", "vae-toy"],
        ["info", "fakeok", "--json"],
        ["info", "importfail"],  # a broken one: exit 1, still no jax
        ["info", "vea"],  # an unknown one: exit 2, still no jax
    ]
    report_path = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(commands), str(report_path)],
        capture_output=True,
        text=True,
        env=subprocess_env(site, ZOO_REGISTRY=str(pretrained)),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(report_path.read_text())
    assert [r["argv"] for r in report] == commands
    assert [r["code"] for r in report] == [0] * 8 + [1, 2], result.stderr
    for r in report:
        assert r["heavy"] == [], r  # checked after each command, so the culprit is named


# --------------------------------------------------------------------------- broken third-party plugins


def test_broken_plugins_through_the_console_script(site):
    reasons = broken_plugins(site)
    healthy_plugin(site)
    result = run_zoo("list", pythonpath=site)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    rows = listed(result.stdout)
    assert set(rows) == {*reasons, *BUILTIN, "fakeok", *SHIPPED}
    for name in reasons:
        assert "BROKEN" in rows[name], rows[name]
    assert "BROKEN" not in rows["vae"] and "BROKEN" not in rows["fakeok"]
    assert "Variational autoencoder" in rows["vae"] and "fake plugin fakeok" in rows["fakeok"]

    result = run_zoo("info", "importfail", pythonpath=site)
    assert result.returncode == 1
    assert_one_line_error(result.stderr, "'importfail'", "broken", "libfoo")

    result = run_zoo("list", pythonpath=site, ZOO_DISABLE_PLUGIN_AUTOLOAD="1")
    assert result.returncode == 0 and set(listed(result.stdout)) == {*BUILTIN, *SHIPPED}


def test_doctor_shows_each_reason_as_json(site):
    reasons = broken_plugins(site)
    healthy_plugin(site)
    result = run_zoo("doctor", "--json", "--quick", pythonpath=site)
    assert result.returncode == 1, result.stderr  # something is broken: CI can gate on it
    assert result.stderr.strip() == f"zoo doctor: {len(reasons)} problem(s)"
    report = json.loads(result.stdout)  # stdout is exactly one JSON document
    plugins = {p["name"]: p for p in report["plugins"]}
    for name, reason in reasons.items():
        assert plugins[name]["ok"] is False and reason in plugins[name]["error"], plugins[name]
        assert plugins[name]["distribution"] == f"fake-{name}"
    assert plugins["vae"]["ok"] and plugins["fakeok"]["ok"]
    assert report["versions"]["jax"] and report["devices"]


def test_doctor_text_names_each_reason(site):
    reasons = broken_plugins(site)
    code, out, err = run_main(["doctor", *reasons, "vae", "--quick"])
    assert code == 1, err
    for name, reason in reasons.items():
        (line,) = [line for line in lines(out) if line.startswith(f"plugin {name} ")]
        assert f"(fake-{name})" in line and "BROKEN" in line and reason in line
    assert "plugin vae (flax-zoo): ok" in out


@pytest.mark.parametrize(
    "name", ["importfail", "oldapi", "notplugin", "nofields", "emptyfields", "badref", "misnamed", "noattr"]
)
def test_info_and_use_of_a_broken_plugin(site, name, no_training):
    reasons = broken_plugins(site)
    healthy_plugin(site)
    code, out, err = run_main(["list"])
    rows = listed(out)
    assert code == 0 and "BROKEN" in rows[name]
    assert "BROKEN" not in rows["fakeok"] and "BROKEN" not in rows["vae"]
    code, out, err = run_main(["info", name])
    assert code == 1
    assert "status: broken" in out
    assert_one_line_error(err, repr(name), "broken", reasons[name])
    code, out, err = run_main(["info", name, "--json"])
    assert code == 1 and json.loads(out)["status"].startswith("broken: ")
    assert_one_line_error(err, repr(name))
    code, out, err = run_main(["train", name, *no_training])
    assert code == 1 and out == ""
    assert_one_line_error(err, f"plugin {name!r} is broken", reasons[name])


def test_a_second_vae_breaks_vae_naming_both(site, no_training):
    duplicate_vae(site, "evil-vae")
    healthy_plugin(site)
    code, out, err = run_main(["list"])
    assert code == 0 and "BROKEN" in listed(out)["vae"] and "BROKEN" not in listed(out)["fakeok"]
    code, out, err = run_main(["info", "vae"])
    assert code == 1
    assert_one_line_error(err, "'vae'", "flax-zoo", "evil-vae")
    code, out, err = run_main(["train", "vae", *no_training])
    assert code == 1
    assert_one_line_error(err, "flax-zoo", "evil-vae")
    code, out, err = run_main(["doctor", "vae", "--json", "--quick"])
    assert code == 1
    (vae,) = [p for p in json.loads(out)["plugins"] if p["name"] == "vae"]
    assert not vae["ok"] and "evil-vae" in vae["error"] and "flax-zoo" in vae["error"]


def test_disable_autoload_in_process(site, monkeypatch):
    broken_plugins(site)
    healthy_plugin(site)
    duplicate_vae(site)
    monkeypatch.setenv("ZOO_DISABLE_PLUGIN_AUTOLOAD", "1")
    code, out, err = run_main(["list", "--json"])
    plugins = [m for m in json.loads(out) if m["kind"] == "plugin"]
    assert code == 0 and [m["name"] for m in plugins] == sorted(BUILTIN)
    assert all(m["status"] == "ok" for m in plugins)
    code, _, err = run_main(["info", "fakeok"])
    assert code == 2 and "unknown" in err


# --------------------------------------------------------------------------- unknown names: exit 2 with "did you mean"


@pytest.mark.parametrize(
    ("argv", "suggestion"),
    [
        (["info", "vea"], "'vae'"),
        (["info", "vae-mnsit"], "'vae-mnist'"),
        (["train", "vea"], "'vae'"),
        (["sample", "vae-mnsit"], "'vae-mnist'"),
        (["eval", "vae-mnsit"], "'vae-mnist'"),
        (["verify", "vae-mnsit"], "'vae-mnist'"),
        (["train", "vae", "--variant", "dense"], "'dense-20'"),
        (["train", "vae", "--set", "latent_dimm=3"], "'latent_dim'"),
        (["train", "vae", "--set", "model.latent_dimm=3"], "'latent_dim'"),
        (["train", "vae", "--set", "train.learning_rat=0.1"], "'learning_rate'"),
        (["train", "vae", "--init-from", "vae-mnsit"], "'vae-mnist'"),
    ],
)
def test_unknown_names_suggest(argv, suggestion, pretrained, no_training):
    extra = no_training if argv[0] == "train" else []
    code, out, err = run_main([*argv, *extra])
    assert code == 2 and out == ""
    assert_one_line_error(err, "unknown", "did you mean", suggestion)


def test_unknown_variant_lists_the_valid_ones(no_training):
    code, out, err = run_main(["train", "vae", "--variant", "big", *no_training])
    assert code == 2
    assert_one_line_error(err, "variant", "'big'", "conv-16", "dense-20")


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        (["--mesh", "foo=2"], "--mesh"),
        (["--mesh", "data=0"], "positive"),
        (["--mesh", "data"], "--mesh"),
        (["--set", "nokey"], "KEY=VALUE"),
        (["--set", "=3"], "KEY=VALUE"),
        (["--set", "latent_dim=abc"], "latent_dim must be int"),
        (["--set", "kind=resnet"], "kind must be one of"),
        (["--set", "train.optimizer=lion"], "optimizer must be one of"),
        (["--set", "train.learning_rate=-1"], "learning_rate must be positive"),
        (["--set", "foo.latent_dim=3"], "prefix"),
        (["--coordinator", "localhost:1234"], "go together"),
        (["--dataset", "cifar10"], "cifar10"),
    ],
)
def test_bad_train_options_exit_2(options, needle, no_training):
    code, out, err = run_main(["train", "vae", *options, *no_training])
    assert code == 2 and out == ""
    assert_one_line_error(err, needle)


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "vae", "--steps", "0"],
        ["train", "vae", "--steps", "many"],
        ["list", "--bogus"],
        ["info"],
        ["bogus-command"],
        ["sample", "vae-mnist", "--n", "0"],
    ],
)
def test_click_usage_errors_exit_2(argv, no_training):
    code, out, err = run_main(argv)
    assert code == 2 and out == ""
    assert_one_line_error(err, "--help")


def test_verify_needs_names():
    code, out, err = run_main(["verify"])
    assert code == 2 and out == ""
    assert_one_line_error(err, "--all")


def test_version_and_help():
    code, out, _ = run_main(["--version"])
    assert code == 0 and "0.1.0" in out
    code, out, _ = run_main(["--help"])
    assert code == 0 and "list" in out and "train" in out


# --------------------------------------------------------------------------- list / info output and --json


def test_list_text_and_filters(site, pretrained):
    healthy_plugin(site)
    code, out, err = run_main(["list"])
    assert code == 0 and err == ""
    rows = listed(out)
    assert set(rows) == {*BUILTIN, "fakeok", "vae-toy", *SHIPPED}
    assert "pretrained" in rows["vae-toy"] and "neg_elbo 98.7" in rows["vae-toy"]
    assert list(rows)[: len(SHIPPED) + 1] == sorted(["vae-toy", *SHIPPED])  # pretrained models first
    code, out, _ = run_main(["list", "vae-t*"])
    assert set(listed(out)) == {"vae-toy"}
    code, out, _ = run_main(["list", "--pretrained"])
    assert set(listed(out)) == {"vae-toy", *SHIPPED}
    code, out, _ = run_main(["list", "--plugin", "fakeok"])
    assert set(listed(out)) == {"fakeok"}
    code, out, err = run_main(["list", "nothing*"])
    assert code == 0 and out == "" and "no models match" in err
    code, out, err = run_main(["list", "nothing*", "--json"])
    assert code == 0 and json.loads(out) == []


@pytest.mark.parametrize(
    "argv", [["list", "--json"], ["list", "--pretrained", "--json"], ["info", "vae", "--json"], ["info", "vae-toy", "--json"]]
)
def test_json_is_one_document(argv, site, pretrained):
    broken_plugins(site)
    code, out, err = run_main(argv)
    assert code == 0, err
    json.loads(out)  # the whole of stdout, nothing before or after


def test_json_contents(pretrained):
    _, out, _ = run_main(["list", "--json"])
    models = {m["name"]: m for m in json.loads(out)}
    assert models["vae"]["kind"] == "plugin" and models["vae"]["status"] == "ok"
    assert models["vae-toy"]["details"]["metrics"] == {"neg_elbo": 98.7}
    _, out, _ = run_main(["info", "vae", "--json"])
    vae = json.loads(out)
    assert vae["details"]["variants"]["conv-16"]["channels"] == [32, 64]
    assert vae["details"]["default_variant"] == "dense-20"
    assert vae["details"]["api"] == 1 and vae["details"]["functions"] == ["sample", "evaluate"]
    assert vae["details"]["pretrained"] == sorted(["vae-toy", *SHIPPED_VAE])
    assert vae["details"]["distribution"] == "flax-zoo" and vae["details"]["builtin"] is True
    _, out, _ = run_main(["info", "vae-toy", "--json"])
    card = json.loads(out)
    assert card["kind"] == "pretrained" and card["details"]["sha256"] == "ab" * 32
    assert card["details"]["source"] == str(pretrained)


def test_info_text(pretrained):
    code, out, _ = run_main(["info", "vae"])
    assert code == 0
    assert out.startswith("vae (plugin, plugin vae)") and "dense-20" in out and "conv-16" in out
    code, out, _ = run_main(["info", "vae-toy"])
    assert code == 0
    assert out.startswith("vae-toy (pretrained, plugin vae)") and "neg_elbo: 98.7" in out and "VAE on MNIST." in out


def test_pretrained_model_of_a_missing_plugin(tmp_path, monkeypatch):
    extra = write_catalog(tmp_path / "extra.toml", entry_toml("gpt-tiny", plugin='"gpt9"'))
    monkeypatch.setenv("ZOO_REGISTRY", str(extra))
    code, out, _ = run_main(["list"])
    assert code == 0 and "plugin 'gpt9' is not available" in listed(out)["gpt-tiny"]
    code, out, err = run_main(["info", "gpt-tiny"])
    assert code == 1 and "gpt-tiny" in out
    assert_one_line_error(err, "gpt9")


def test_doctor_json_is_one_document():
    code, out, err = run_main(["doctor", "vae", "--json", "--quick"])
    assert code == 0, err
    report = json.loads(out)
    assert {"python", "versions", "devices", "backend", "plugins", "datasets", "pretrained", "problems"} <= set(report)
    assert [p["name"] for p in report["plugins"]] == ["vae"] and [d["name"] for d in report["datasets"]] == ["mnist"]
    assert {e["name"] for e in report["pretrained"]} == SHIPPED_VAE and report["ok"] is True and report["problems"] == []


def test_doctor_of_an_unknown_name_suggests():
    code, out, err = run_main(["doctor", "vea"])
    assert code == 2 and out == ""
    assert_one_line_error(err, "unknown plugin or dataset 'vea'", "did you mean 'vae'")


# --------------------------------------------------------------------------- sample options and outputs


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["sample", "vae-mnist", "--option", "foo=1"], "unknown vae sample option 'foo'; known: index, mode"),
        (["sample", "vae-mnist", "--prompt", "hi"], "unknown vae sample option 'prompt'"),
        (["sample", "vae-mnist", "--option", "index=abc"], "index must be int; got 'abc'"),
        (["sample", "vae-mnist", "--out", "x.gif"], "--out must end in .png or .npy (images) or .txt (texts)"),
        (["list", "--plugin", "vea"], "did you mean 'vae'"),
    ],
)
def test_bad_sample_options_and_names_are_usage_errors(argv, needle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_main(argv)
    assert code == 2 and out == ""
    assert_one_line_error(err, needle)
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_output_is_one_line_naming_it(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    target = tmp_path / "a-file" / "x.png"
    code, out, err = run_main(["sample", "vae-mnist", "--n", "2", "--out", str(target)])
    assert code == 1
    assert_one_line_error(err, str(tmp_path / "a-file"))
    assert (tmp_path / "a-file").read_text() == "not a folder"


def test_json_has_no_nan(capsys):
    from zoo.cli import _emit_json

    _emit_json({"loss": float("nan"), "metrics": {"a": float("inf"), "b": 1.5}, "xs": [float("-inf")]})
    assert json.loads(capsys.readouterr().out) == {"loss": None, "metrics": {"a": None, "b": 1.5}, "xs": [None]}
