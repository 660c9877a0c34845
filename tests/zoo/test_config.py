"""zoo.config: ``--set KEY=VALUE`` parsing and conversion by each field's declared type."""

from __future__ import annotations

import dataclasses
import json
from typing import Literal, Optional

import pytest
from fixtures_checkpoints import tiny_zoo  # noqa: F401 - fixture used by name
from helpers import clean_zoo_env  # noqa: F401 - autouse fixture

from zoo import registry
from zoo.config import config_from_dict, config_to_dict, fill_dataclass, make_config, parse_assignments
from zoo.errors import UnknownName, UsageError
from zoo.plugin import Plugin


@dataclasses.dataclass(frozen=True)
class Cfg:
    n: int = 1
    rate: float = 0.1
    flag: bool = False
    label: str = "x"
    kind: Literal["dense", "conv"] = "dense"
    patch: Literal[2, 4, 8] = 4
    channels: tuple[int, ...] = (32, 64)
    names: tuple[str, ...] = ()
    clip: float | None = None
    limit: Optional[int] = None  # noqa: UP045 - the typing spelling must work too
    extra: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.n < 0:
            raise ValueError(f"n must be >= 0, got {self.n}")


def fill(**overrides):
    return fill_dataclass(Cfg, {}, overrides, "test config")


# --------------------------------------------------------------------------- parse_assignments


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        ([], {}),
        (["a=1"], {"a": "1"}),
        (["a=1", "b=x"], {"a": "1", "b": "x"}),
        (["a="], {"a": ""}),
        (["a=b=c"], {"a": "b=c"}),  # only the first '=' splits
        ([" a = 1 "], {"a": "1"}),
        (["train.lr=0.1"], {"train.lr": "0.1"}),
        (["a=1", "a=2"], {"a": "2"}),  # the last one wins, as on most command lines
    ],
)
def test_parse_assignments(items, expected):
    assert parse_assignments(items) == expected


@pytest.mark.parametrize("item", ["nokey", "=1", " =1", ""])
def test_parse_assignments_rejects(item):
    with pytest.raises(UsageError) as e:
        parse_assignments(["ok=1", item])
    assert "KEY=VALUE" in str(e.value) and repr(item) in str(e.value)


# --------------------------------------------------------------------------- coercion


@pytest.mark.parametrize(
    ("field", "text", "expected"),
    [
        ("n", "3", 3),
        ("n", "0", 0),
        ("n", "1_000", 1000),
        ("rate", "1e-3", 1e-3),
        ("rate", "2", 2.0),
        ("flag", "true", True),
        ("flag", "True", True),
        ("flag", "1", True),
        ("flag", "yes", True),
        ("flag", "on", True),
        ("flag", "false", False),
        ("flag", "0", False),
        ("flag", "No", False),
        ("flag", "off", False),
        ("label", "hello world", "hello world"),
        ("label", "42", "42"),
        ("kind", "conv", "conv"),
        ("patch", "8", 8),
        ("channels", "16,32", (16, 32)),
        ("channels", "(16, 32, 64)", (16, 32, 64)),
        ("channels", "[8]", (8,)),
        ("channels", "()", ()),
        ("names", "a,b", ("a", "b")),
        ("clip", "1.5", 1.5),
        ("clip", "none", None),
        ("clip", "None", None),
        ("clip", "null", None),
        ("limit", "7", 7),
        ("limit", "none", None),
    ],
)
def test_coercion_by_declared_type(field, text, expected):
    value = getattr(fill(**{field: text}), field)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(
    ("field", "text", "needle"),
    [
        ("n", "abc", "n must be int"),
        ("n", "1.5", "n must be int"),
        ("n", "", "n must be int"),
        ("rate", "fast", "rate must be float"),
        ("flag", "maybe", "flag must be bool"),
        ("kind", "Dense", "kind must be one of dense, conv"),
        ("patch", "3", "patch must be one of 2, 4, 8"),
        ("channels", "16,x", "channels must be int"),
        ("clip", "big", "clip: cannot read 'big'"),
        ("limit", "1.5", "limit: cannot read '1.5'"),
        ("extra", "{}", "cannot be set from the command line"),
    ],
)
def test_coercion_errors(field, text, needle):
    with pytest.raises(UsageError) as e:
        fill(**{field: text})
    assert needle in str(e.value)


def test_unknown_field_suggests_the_closest():
    with pytest.raises(UnknownName) as e:
        fill(chanels="8")
    assert "did you mean 'channels'" in str(e.value) and "test config" in str(e.value)
    with pytest.raises(UnknownName) as e:
        fill(zzzzzz="8")
    assert "known:" in str(e.value) and "channels" in str(e.value)


def test_dataclass_validation_is_a_usage_error():
    with pytest.raises(UsageError) as e:
        fill(n="-1")
    assert "invalid test config" in str(e.value) and "n must be >= 0" in str(e.value)


def test_values_that_are_not_text_pass_lightly():
    cfg = fill(n=5, channels=[1, 2], flag=True, clip=None)  # as TOML or the Python API give them
    assert cfg.n == 5 and cfg.channels == (1, 2) and cfg.flag is True and cfg.clip is None


def test_base_values_and_overrides():
    cfg = fill_dataclass(Cfg, {"n": 2, "label": "base"}, {"label": "over"}, "test config")
    assert (cfg.n, cfg.label) == (2, "over")
    assert fill_dataclass(Cfg, {"n": 2}, None, "test config").n == 2


# --------------------------------------------------------------------------- variants and the plugin's config

PLUGIN = Plugin(
    name="toy",
    api=1,
    summary="toy",
    config=Cfg,
    variants={"small-8": {"n": 8}, "conv-16": {"kind": "conv", "n": 16}},
    build="m:build",
    train="m:train",
    sample="m:sample",
)


def test_make_config_variants_and_overrides():
    assert make_config(PLUGIN).n == 8  # the first variant is the default
    cfg = make_config(PLUGIN, "conv-16", {"n": "3", "rate": "0.5"})
    assert (cfg.kind, cfg.n, cfg.rate) == ("conv", 3, 0.5)


def test_unknown_variant_lists_the_valid_ones():
    with pytest.raises(UnknownName) as e:
        make_config(PLUGIN, "large")
    assert "'large'" in str(e.value) and "conv-16" in str(e.value) and "small-8" in str(e.value)
    with pytest.raises(UnknownName) as e:
        make_config(PLUGIN, "small")
    assert "did you mean 'small-8'" in str(e.value)


def test_config_dict_round_trip():
    cfg = make_config(PLUGIN, "conv-16", {"channels": "1,2,3", "clip": "0.5"})
    saved = config_to_dict(cfg)
    assert saved["channels"] == [1, 2, 3]
    assert json.loads(json.dumps(saved)) == saved
    assert config_from_dict(PLUGIN, saved) == cfg


def test_vae_config_from_text():
    vae = registry.get_plugin("vae")
    cfg = make_config(vae, "conv-16", {"latent_dim": "8", "channels": "16,32"})
    assert (cfg.kind, cfg.latent_dim, cfg.channels) == ("conv", 8, (16, 32))
    with pytest.raises(UsageError):
        make_config(vae, None, {"latent_dim": "abc"})
    with pytest.raises(UsageError):
        make_config(vae, None, {"kind": "resnet"})


# --------------------------------------------------------------------------- values that are not of the field's type (issue 10 §5, §8)


@pytest.mark.parametrize(
    "field, value, wanted",
    [
        ("n", 1.5, "int"),
        ("n", True, "int"),  # a bool is an int to Python, not to a config
        ("rate", "fast", "float"),
        ("flag", 1, "bool"),
        ("label", 5, "str"),
        ("kind", 5, "one of dense, conv"),
        ("kind", "Dense", "one of dense, conv"),
        ("patch", 4.0, "one of 2, 4, 8"),  # 4.0 == 4, but a patch size is an int
        ("channels", (32, "64"), "tuple"),
        ("channels", 32, "tuple"),
        ("clip", "none please", "float | None"),
        ("limit", 2.5, "int"),
    ],
)
def test_a_value_not_of_the_declared_type_is_one_usage_error(field, value, wanted):
    """Values that arrive typed (a catalogue's TOML, a saved config, Python callers) are checked too."""
    with pytest.raises(UsageError) as error:
        fill(**{field: value})
    message = str(error.value)
    assert field in message and wanted in message and repr(value) in message and "\n" not in message


def test_typed_values_that_fit_are_kept_and_ints_widen_to_float():
    cfg = fill(n=3, rate=1, clip=2, limit=None, channels=[8, 16], patch=8, kind="conv")
    assert (cfg.n, cfg.rate, cfg.clip, cfg.channels, cfg.patch, cfg.kind) == (3, 1.0, 2.0, (8, 16), 8, "conv")
    assert type(cfg.rate) is float and type(cfg.clip) is float


def test_a_fixed_length_tuple_checks_its_length():
    @dataclasses.dataclass(frozen=True)
    class Shaped:
        shape: tuple[int, int, int] = (28, 28, 1)

    assert fill_dataclass(Shaped, {}, {"shape": [1, 2, 3]}, "shaped").shape == (1, 2, 3)
    with pytest.raises(UsageError, match=r"shape must be tuple\[int, int, int\]"):
        fill_dataclass(Shaped, {}, {"shape": [1, 2]}, "shaped")


@pytest.mark.parametrize(
    "config, needle", [("{ latent_dim = 1.5 }", "latent_dim must be int; got 1.5"), ("{ kind = 5 }", "kind must be")]
)
def test_a_catalogue_config_of_the_wrong_type_is_one_line(tmp_path, monkeypatch, tiny_zoo, config, needle):
    """Issue 10: `config = { latent_dim = 1.5 }` or `{ kind = 5 }` in a catalogue gave tracebacks."""
    from fixtures_checkpoints import NAME
    from helpers import assert_one_line_error, run_main

    root = tiny_zoo.copy(tmp_path / "cat").root
    catalog = root / "registry.toml"
    catalog.write_text(catalog.read_text().replace('variant = "dense-20"', f'variant = "dense-20"\nconfig = {config}'))
    monkeypatch.setenv("ZOO_REGISTRY", str(catalog))
    registry.reset()
    code, out, err = run_main(["sample", NAME, "--n", "1"])
    assert code == 2 and out == ""
    assert_one_line_error(err, needle)
