"""The broken-plugin matrix: each way third-party code breaks gives one line from train, eval and doctor.

One healthy classifier ``clf`` (``helpers.CLASSIFIER_SOURCE``) on the dataset
``tiny`` is trained once; then, per case, another installation of the same
names replaces it: a reference typo, a ``build`` that raises, an ``evaluate``
that returns a string, a dataset plugin that fails to import. ``zoo eval`` loads
the healthy run's workdir with the broken code, as a user upgrading into a
broken release would.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import (
    assert_one_line_error,
    classifier_plugin,
    clean_zoo_env,  # noqa: F401 - autouse fixture
    on_sys_path,
    run_main,
    tiny_dataset,
    trained_tiny_classifier,
    write_distribution,
)

from zoo import registry


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A workdir of the healthy ``clf``, trained 2 steps on ``tiny``."""
    with trained_tiny_classifier(tmp_path_factory.mktemp("healthy"), steps=2, batch_size=8) as run:
        return run


def typo(site: Path) -> None:
    tiny_dataset(site)
    classifier_plugin(site, build="'clf_pkg_model:biuld'")


def build_raises(site: Path) -> None:
    tiny_dataset(site)
    classifier_plugin(site)
    model = site / "clf_pkg_model.py"
    model.write_text(model.read_text().replace("def build(config, rngs):", "def build(config, rngs):\n    raise ValueError('width 16 is not supported\\nmore detail')"))


def evaluate_returns_text(site: Path) -> None:
    tiny_dataset(site)
    classifier_plugin(site, evaluate="return {'accuracy': 'high'}")


def dataset_broken(site: Path) -> None:
    write_distribution(
        site, "fake-tiny-data", {"tiny": "tiny_data:dataset"}, {"tiny_data": "raise ImportError('needs libtiny')\n"},
        group="zoo.datasets",
    )  # fmt: skip
    classifier_plugin(site)


DEBUG_HINT = "(run with --debug for the traceback)"

# case -> (installs it, the line's needles, extra train options that reach the broken code)
CASES = {
    "typo": (typo, ("plugin 'clf'", "clf_pkg_model:biuld does not exist (build)"), []),
    "build": (build_raises, ("plugin 'clf' build raised ValueError: width 16 is not supported ...", DEBUG_HINT), []),
    "evaluate": (
        evaluate_returns_text,
        ("plugin 'clf' evaluate returned metric 'accuracy' = 'high' (str), not a number",),
        ["--set", "train.eval_every=1"],  # the loop evaluates only when asked to
    ),
    "dataset": (dataset_broken, ("dataset 'tiny' is broken: import failed: ImportError: needs libtiny",), []),
}


@pytest.fixture(params=list(CASES))
def case(request, tmp_path, workdir):
    install, needles, train_options = CASES[request.param]
    install(tmp_path / "broken-site")
    with on_sys_path(tmp_path / "broken-site"):
        registry.reset()
        yield request.param, needles, train_options
    registry.reset()


def test_train_eval_and_doctor_each_say_it_in_one_line(case, workdir, tmp_path):
    name, needles, train_options = case
    argv = ["train", "clf", "--workdir", str(tmp_path / "new"), "--steps", "2", "--batch-size", "8", "--quiet"]
    code, out, err = run_main([*argv, *train_options])
    assert code == 1 and out == "", err
    assert_one_line_error(err, *needles)

    code, out, err = run_main(["eval", str(workdir)])
    assert code == 1 and out == "", err
    assert_one_line_error(err, *needles)

    code, out, err = run_main(["doctor", "clf", "tiny", "--json"])
    assert code == 1
    report = json.loads(out)
    assert len(report["problems"]) == 1, report["problems"]
    (problem,) = report["problems"]
    kind = "dataset tiny (fake-tiny-data)" if name == "dataset" else "plugin clf (fake-clf)"
    reason = [n.removeprefix("dataset 'tiny' is broken: ") for n in needles]  # its own line says whose it is
    assert problem.startswith(f"{kind}: BROKEN: ") and all(n in problem for n in reason), problem
    assert err.strip() == "zoo doctor: 1 problem(s)"

    code, out, err = run_main(["doctor", "clf", "tiny"])
    assert code == 1
    broken = [line for line in out.splitlines() if "BROKEN" in line]
    assert broken == [problem]  # the text shows the same single line
    if name == "dataset":
        assert "plugin clf (fake-clf): not checked: its dataset 'tiny' is broken" in out


def test_the_healthy_installation_passes_the_doctor(workdir, tmp_path):
    tiny_dataset(tmp_path / "site")
    classifier_plugin(tmp_path / "site")
    with on_sys_path(tmp_path / "site"):
        registry.reset()
        code, out, err = run_main(["doctor", "clf", "--json"])
    assert code == 0, out
    report = json.loads(out)
    assert report["problems"] == [] and [p["name"] for p in report["plugins"]] == ["clf"]
    assert [d["name"] for d in report["datasets"]] == ["tiny"]  # brought along: clf trains on it


@pytest.mark.parametrize(
    ("error", "code", "message"),
    [
        ("zoo.errors.UsageError('width must be even')", 2, "plugin 'clf' build: width must be even"),
        ("zoo.errors.ZooError('no accelerator')", 1, "plugin 'clf' build: no accelerator"),
    ],
)
def test_a_zoo_error_a_plugin_raises_keeps_its_message_and_exit_code(tmp_path, error, code, message):
    tiny_dataset(tmp_path / "site")
    classifier_plugin(tmp_path / "site")
    model = tmp_path / "site" / "clf_pkg_model.py"
    model.write_text(model.read_text().replace("def build(config, rngs):", f"def build(config, rngs):\n    import zoo.errors\n    raise {error}"))
    with on_sys_path(tmp_path / "site"):
        registry.reset()
        exit_code, out, err = run_main(["train", "clf", "--workdir", str(tmp_path / "run"), "--steps", "1", "--quiet"])
    assert exit_code == code
    assert_one_line_error(err, message)
    assert DEBUG_HINT not in err  # meant for the user as it is


def test_debug_shows_the_plugins_own_traceback(tmp_path, monkeypatch):
    build_raises(tmp_path / "site")
    monkeypatch.setenv("ZOO_DEBUG", "0")  # restored after the test, though --debug sets it in this process
    with on_sys_path(tmp_path / "site"):
        registry.reset()
        code, out, err = run_main(["--debug", "train", "clf", "--workdir", str(tmp_path / "run"), "--steps", "1", "--quiet"])
    assert code == 1
    assert "Traceback" in err and 'clf_pkg_model.py", line' in err  # the frame in the plugin's own file
    assert "ValueError: width 16 is not supported" in err  # the original, chained under the one line
    assert err.splitlines()[-1].startswith("zoo: error: plugin 'clf' build raised ValueError: width 16")
