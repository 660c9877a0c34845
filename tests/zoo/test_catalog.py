"""zoo.catalog: registry.toml parsing and strict validation, plus catalogues as the registry and CLI merge them.

The promise under test: a catalogue either yields well-formed entries or raises
one ``CatalogError`` naming the file (and the entry); never any other exception,
whatever the file holds.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import tomllib
from pathlib import Path

import pytest
from helpers import (
    ENTRY_FIELDS,
    SHA,
    assert_one_line_error,
    catalog_toml,
    clean_zoo_env,  # noqa: F401 - autouse fixture
    entry_toml,
    run_main,
    run_zoo,
    write_catalog,
)
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from zoo import registry
from zoo.catalog import DEFAULT_TOLERANCE, NAME, CatalogError, load_catalog, parse_catalog

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture
def cat_path(tmp_path) -> Path:
    """Where the catalogue under test lives; its folder holds a symlink loop (``loop``) to trip over."""
    folder = tmp_path / "cat"
    folder.mkdir()
    os.symlink("loop", folder / "loop")
    return folder / "registry.toml"


def parse(text: str, path: Path):
    return parse_catalog(text, path)


def parse_error(text: str, path: Path) -> str:
    with pytest.raises(CatalogError) as e:
        parse_catalog(text, path)
    message = str(e.value)
    assert str(path) in message, message
    assert "\n" not in message.strip(), message
    return message


# --------------------------------------------------------------------------- valid catalogues


def test_full_entry_parses_every_field(cat_path):
    text = catalog_toml(
        entry_toml(
            "vae-mnist",
            variant='"dense-20"',
            config="{ latent_dim = 16, channels = [8, 16] }",
            metrics="{ neg_elbo = 98, kl = 25.5 }",
            tolerance="{ neg_elbo = 0.5 }",
            seed="7",
        )
    )
    (entry,) = parse(text, cat_path)
    assert entry.name == "vae-mnist"
    assert entry.plugin == "vae" and entry.dataset == "mnist" and entry.variant == "dense-20"
    assert dict(entry.config) == {"latent_dim": 16, "channels": [8, 16]}
    assert entry.checkpoint == "checkpoints/m" and not entry.remote
    assert entry.local_path == cat_path.parent / "checkpoints" / "m"
    assert entry.sha256 == SHA
    assert dict(entry.metrics) == {"neg_elbo": 98.0, "kl": 25.5}
    assert all(type(v) is float for v in entry.metrics.values())
    assert dict(entry.tolerance) == {"neg_elbo": 0.5}
    assert entry.recipe == "zoo train vae --steps 10" and entry.seed == 7
    assert entry.license == "CC0-1.0" and entry.description == "A test entry."
    assert entry.source == cat_path
    # explicit tolerance is absolute; the default is relative with a floor of 1
    assert entry.allowed_error("neg_elbo") == 0.5
    assert entry.allowed_error("kl") == pytest.approx(DEFAULT_TOLERANCE * 25.5)
    # entries are read-only, and their dict form is plain JSON
    with pytest.raises(TypeError):
        entry.metrics["neg_elbo"] = 0.0  # type: ignore[index]
    assert json.loads(json.dumps(entry.to_dict()))["source"] == str(cat_path)


def test_optional_fields_default(cat_path):
    (entry,) = parse(catalog_toml(entry_toml()), cat_path)
    assert entry.variant is None
    assert dict(entry.config) == {} and dict(entry.tolerance) == {}
    assert entry.allowed_error("neg_elbo") == pytest.approx(DEFAULT_TOLERANCE * 98.7)


def test_small_metric_tolerance_has_a_floor(cat_path):
    (entry,) = parse(catalog_toml(entry_toml(metrics="{ acc = 0.0 }")), cat_path)
    assert entry.allowed_error("acc") == pytest.approx(DEFAULT_TOLERANCE)


def test_several_entries_and_an_empty_catalogue(cat_path):
    entries = parse(catalog_toml(entry_toml("a"), entry_toml("b", plugin='"gan"')), cat_path)
    assert [(e.name, e.plugin) for e in entries] == [("a", "vae"), ("b", "gan")]
    assert parse("schema = 1\n", cat_path) == []
    assert parse("schema = 1\n[models]\n", cat_path) == []


def test_shipped_catalogue_is_valid():
    path = registry.builtin_catalog_path()
    if not path.exists():
        pytest.skip("no shipped registry.toml")
    for entry in load_catalog(path):
        assert entry.source == path.absolute()


@pytest.mark.parametrize("name", ["vae-mnist", "a", "0", "a.b_c-1", "x" * 64])
def test_valid_names(cat_path, name):
    (entry,) = parse(catalog_toml(entry_toml(json.dumps(name))), cat_path)
    assert entry.name == name


# --------------------------------------------------------------------------- invalid catalogues


@pytest.mark.parametrize("field", sorted(ENTRY_FIELDS))
def test_each_required_field_missing(cat_path, field):
    message = parse_error(catalog_toml(entry_toml("m", drop=(field,))), cat_path)
    assert "[models.m]" in message and repr(field) in message


WRONG = [
    ("plugin", "1"),
    ("plugin", '""'),
    ("plugin", '["vae"]'),
    ("dataset", "true"),
    ("dataset", "{ name = 'mnist' }"),
    ("checkpoint", "1"),
    ("checkpoint", '""'),
    ("sha256", f'"{SHA.upper()}"'),
    ("sha256", f'"{SHA[:-1]}"'),
    ("sha256", f'"{SHA}0"'),
    ("sha256", f'"{SHA[:-1]}g"'),
    ("sha256", f'"{SHA}\\n"'),
    ("sha256", f'"sha256:{SHA}"'),
    ("sha256", "1"),
    ("metrics", '"98.7"'),
    ("metrics", "[98.7]"),
    ("metrics", '{ neg_elbo = "98.7" }'),
    ("metrics", "{ neg_elbo = true }"),
    ("metrics", "{ neg_elbo = nan }"),
    ("metrics", "{ neg_elbo = -inf }"),
    ("metrics", "{ neg_elbo = { mean = 1.0 } }"),
    ("metrics", "{ neg_elbo = 1" + "0" * 400 + " }"),  # an integer no float can hold
    ("metrics", "{ neg_elbo = 2020-01-01 }"),
    ("recipe", "[]"),
    ("seed", '"0"'),
    ("seed", "true"),
    ("seed", "1.5"),
    ("seed", "1979-05-27"),
    ("license", "false"),
    ("description", '""'),
    ("description", "07:32:00"),
    ("variant", "1"),
    ("variant", '""'),
    ("config", '"latent_dim=16"'),
    ("config", "[1, 2]"),
    ("tolerance", "{ neg_elbo = -0.1 }"),
    ("tolerance", '"0.5"'),
    ("tolerance", "{ neg_elbo = inf }"),
]


@pytest.mark.parametrize(("field", "value"), WRONG, ids=[f"{f}={v[:20]}" for f, v in WRONG])
def test_each_wrong_type(cat_path, field, value):
    message = parse_error(catalog_toml(entry_toml("m", **{field: value})), cat_path)
    assert "[models.m]" in message and repr(field) in message


def test_tolerance_for_an_unmeasured_metric(cat_path):
    message = parse_error(catalog_toml(entry_toml(tolerance="{ fid = 1.0 }")), cat_path)
    assert "fid" in message


def test_unknown_entry_field(cat_path):
    message = parse_error(catalog_toml(entry_toml(checksum=f'"{SHA}"')), cat_path)
    assert "'checksum'" in message and "unknown" in message


def test_unknown_top_level_key(cat_path):
    message = parse_error("schema = 1\nversion = 2\n" + entry_toml(), cat_path)
    assert "'version'" in message


@pytest.mark.parametrize("schema", [None, "2", "0", '"1"', "true", "1.0", "[1]"])
def test_schema_missing_or_wrong(cat_path, schema):
    message = parse_error(catalog_toml(entry_toml(), schema=schema), cat_path)
    assert "schema = 1" in message


@pytest.mark.parametrize("models", ["models = 1", 'models = "vae"', "[[models]]\nplugin = 'vae'"])
def test_models_not_a_table(cat_path, models):
    parse_error(f"schema = 1\n{models}\n", cat_path)


def test_entry_not_a_table(cat_path):
    message = parse_error('schema = 1\n[models]\nm = "vae"\n', cat_path)
    assert "models.m" in message


@pytest.mark.parametrize("name", ["Vae", "-vae", ".vae", "vae mnist", "a/b", "..", "", "x" * 65, "vae\n", "vaé"])
def test_invalid_model_names(cat_path, name):
    message = parse_error(catalog_toml(entry_toml(json.dumps(name))), cat_path)
    assert "model name" in message


@pytest.mark.parametrize("text", ["schema = 1\n[models.m\n", "schema = = 1", "\x00", "[models.a]\nx=1\n[models.a]\nx=2"])
def test_invalid_toml(cat_path, text):
    assert "invalid TOML" in parse_error(text, cat_path)


def test_deeply_nested_toml(cat_path):
    parse_error("x = " + "[" * 5000 + "]" * 5000, cat_path)


# --------------------------------------------------------------------------- checkpoint locations


@pytest.mark.parametrize(
    "checkpoint",
    ["../x", "/abs", "/", "a/../../b", "..", "a/..", "..\\x", "a\\..\\..\\b", "C:/x", "c:x", "ckpt\x00"],
)
def test_checkpoint_path_may_not_escape(cat_path, checkpoint):
    message = parse_error(catalog_toml(entry_toml(checkpoint=json.dumps(checkpoint))), cat_path)
    assert "checkpoint" in message


@pytest.mark.parametrize("checkpoint", ["ckpt", "checkpoints/vae-mnist", "./ckpt", "a/b/c", "."])
def test_checkpoint_paths_inside_the_folder(cat_path, checkpoint):
    (entry,) = parse(catalog_toml(entry_toml(checkpoint=json.dumps(checkpoint))), cat_path)
    assert not entry.remote
    assert entry.local_path.resolve().is_relative_to(cat_path.parent.resolve())


def test_symlink_pointing_outside_is_refused(cat_path, tmp_path):
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    os.symlink(outside, cat_path.parent / "link")
    for checkpoint in ("link", "link/sub", "link/missing"):
        message = parse_error(catalog_toml(entry_toml(checkpoint=json.dumps(checkpoint))), cat_path)
        assert "escapes" in message


def test_symlink_pointing_inside_is_accepted(cat_path):
    (cat_path.parent / "real").mkdir()
    os.symlink(cat_path.parent / "real", cat_path.parent / "alias")
    (entry,) = parse(catalog_toml(entry_toml(checkpoint='"alias"')), cat_path)
    assert entry.checkpoint == "alias"


def test_symlink_loop_is_a_catalog_error(cat_path):
    parse_error(catalog_toml(entry_toml(checkpoint='"loop/x"')), cat_path)


@pytest.mark.parametrize(
    "url", ["https://example.com/zoo/vae-mnist.zip", "file:///srv/zoo/vae-mnist.zip", "https://h/a%20b.zip?x=1"]
)
def test_https_and_file_urls_accepted(cat_path, url):
    (entry,) = parse(catalog_toml(entry_toml(checkpoint=json.dumps(url))), cat_path)
    assert entry.remote and entry.checkpoint == url


@pytest.mark.parametrize(
    "url", ["ftp://example.com/x.zip", "http://example.com/x.zip", "HTTPS://example.com/x.zip", "s3://b/x.zip", "gs://b/x"]
)
def test_other_url_schemes_rejected(cat_path, url):
    message = parse_error(catalog_toml(entry_toml(checkpoint=json.dumps(url))), cat_path)
    assert "https://" in message


def test_https_url_without_a_host_rejected(cat_path):
    message = parse_error(catalog_toml(entry_toml(checkpoint='"https:///x.zip"')), cat_path)
    assert "names no host" in message


# --------------------------------------------------------------------------- reading files


def test_load_catalog_reads_and_names_the_file(tmp_path, monkeypatch):
    path = write_catalog(tmp_path / "c" / "extra.toml", entry_toml("m"))
    monkeypatch.chdir(tmp_path)
    (entry,) = load_catalog(Path("c/extra.toml"))
    assert entry.source == path  # made absolute, so checkpoints resolve from anywhere
    assert entry.local_path == path.parent / "checkpoints" / "m"


@pytest.mark.parametrize("problem", ["missing", "directory", "not-utf8"])
def test_unreadable_catalogue(tmp_path, problem):
    path = tmp_path / "bad.toml"
    if problem == "directory":
        path.mkdir()
    elif problem == "not-utf8":
        path.write_bytes(b"schema = 1\n# \xff\xfe\n")
    with pytest.raises(CatalogError) as e:
        load_catalog(path)
    assert str(path) in str(e.value)


# --------------------------------------------------------------------------- fuzzing


def check_parse(text: str, path: Path) -> list:
    """The contract: entries, or a CatalogError naming the file; nothing else."""
    try:
        entries = parse_catalog(text, path)
    except CatalogError as e:
        assert str(path) in str(e)
        return []
    for e in entries:  # whatever parses is well-formed
        assert NAME.fullmatch(e.name), e.name
        assert isinstance(e.plugin, str) and e.plugin
        assert isinstance(e.seed, int) and not isinstance(e.seed, bool)
        assert len(e.sha256) == 64 and set(e.sha256) <= set("0123456789abcdef")
        assert all(math.isfinite(v) for v in (*e.metrics.values(), *e.tolerance.values()))
        assert e.remote or e.local_path.resolve().is_relative_to(path.parent.resolve())
    return entries


@FUZZ
@given(text=st.text(max_size=400))
@example(text="schema = 1\n[models.a]\n")
@example(text="schema = 1\nmodels = 5")
def test_fuzz_random_text(cat_path, text):
    check_parse(text, cat_path)


def toml_string(s: str) -> str:
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return toml_string(v)
    if isinstance(v, dt.date | dt.time):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(map(toml_value, v)) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{toml_string(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(v)


text_ = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20)
scalars = (
    st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from([10**400, -(10**400), 2**64])  # TOML integers are unbounded
    | st.floats()
    | text_
    | st.sampled_from(["vae", "mnist", SHA, SHA + "\n", "checkpoints/m", "../m", "loop/x", "https://h/x.zip", "ftp://h/x"])
    | st.dates()
    | st.times()
    | st.datetimes(timezones=st.none() | st.just(dt.timezone.utc))
)
toml_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text_, inner, max_size=3), max_leaves=8
)
field_names = st.sampled_from([*ENTRY_FIELDS, "variant", "config", "tolerance"]) | text_
model_names = st.sampled_from(["m", "vae-mnist", "m\n", "M", "a b", "x" * 65]) | text_


def render(schema, models) -> str:
    lines = [] if schema is None else [f"schema = {toml_value(schema)}"]
    if not isinstance(models, dict):
        return "\n".join([*lines, f"models = {toml_value(models)}"])
    lines.append("[models]")  # entries that are not tables first, as plain keys of [models]
    lines += [f"{toml_string(n)} = {toml_value(v)}" for n, v in models.items() if not isinstance(v, dict)]
    for name, table in models.items():
        if isinstance(table, dict):
            lines.append(f"[models.{toml_string(name)}]")
            lines += [f"{toml_string(k)} = {toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


@FUZZ
@given(
    schema=st.none() | st.just(1) | toml_values,
    models=st.dictionaries(model_names, st.dictionaries(field_names, toml_values, max_size=12), max_size=3)
    | toml_values,
)
def test_fuzz_structured_toml(cat_path, schema, models):
    text = render(schema, models)
    tomllib.loads(text)  # the generator writes valid TOML, so validation (not the TOML parser) is exercised
    check_parse(text, cat_path)


VALID = {k: tomllib.loads(f"v = {v}")["v"] for k, v in ENTRY_FIELDS.items()}


@FUZZ
@given(
    field=st.sampled_from([*ENTRY_FIELDS, "variant", "config", "tolerance"]),
    value=toml_values,
    drop=st.sets(st.sampled_from(sorted(ENTRY_FIELDS)), max_size=2),
)
def test_fuzz_each_field(cat_path, field, value, drop):
    table = {k: v for k, v in VALID.items() if k not in drop} | {field: value}
    text = render(1, {"m": table})
    entries = check_parse(text, cat_path)
    if drop - {field}:
        assert entries == []  # a required field is missing


# --------------------------------------------------------------------------- through the registry and the CLI


def test_zoo_registry_adds_models(tmp_path, monkeypatch):
    extra = write_catalog(tmp_path / "extra" / "registry.toml", entry_toml("extra-vae", description='"An extra VAE."'))
    more = write_catalog(tmp_path / "more.toml", entry_toml("more-vae"))
    monkeypatch.setenv("ZOO_REGISTRY", os.pathsep.join([str(extra), "", str(more)]))
    assert {"extra-vae", "more-vae"} <= set(registry.catalog().entries)
    assert registry.get_pretrained("extra-vae").source == extra
    code, out, err = run_main(["list", "--pretrained"])
    assert code == 0, err
    names = [line.split()[0] for line in out.splitlines()]
    assert "extra-vae" in names and "more-vae" in names and "vae" not in names  # plugins are not pretrained
    assert "An extra VAE." in out
    code, out, _ = run_main(["list", "--pretrained", "--json"])
    listed = {m["name"]: m for m in json.loads(out)}
    assert listed["extra-vae"]["kind"] == "pretrained" and listed["extra-vae"]["status"] == "ok"
    code, out, _ = run_main(["info", "extra-vae", "--json"])
    assert code == 0 and json.loads(out)["details"]["source"] == str(extra)


def test_same_model_in_two_catalogues_names_both(tmp_path, monkeypatch):
    a = write_catalog(tmp_path / "a.toml", entry_toml("twin"))
    b = write_catalog(tmp_path / "b.toml", entry_toml("twin"))
    monkeypatch.setenv("ZOO_REGISTRY", f"{a}{os.pathsep}{b}")
    code, out, err = run_main(["list"])
    assert code == 1 and out == ""
    assert_one_line_error(err, "'twin'", str(a), str(b))


def test_malformed_zoo_registry_fails_zoo_list(tmp_path, monkeypatch):
    bad = tmp_path / "bad.toml"
    bad.write_text(catalog_toml(entry_toml("m", drop=("sha256",))))
    result = run_zoo("list", ZOO_REGISTRY=str(bad))  # the real console script: no traceback reaches the user
    assert result.returncode == 1, result
    assert result.stdout == ""
    assert_one_line_error(result.stderr, str(bad), "sha256")


@pytest.mark.parametrize("problem", ["missing", "invalid-toml", "schema"])
def test_unusable_zoo_registry_file(tmp_path, monkeypatch, problem):
    path = tmp_path / "extra.toml"
    if problem == "invalid-toml":
        path.write_text("schema = 1\n[models.m\n")
    elif problem == "schema":
        path.write_text("[models]\n")
    monkeypatch.setenv("ZOO_REGISTRY", str(path))
    for argv in (["list"], ["info", "vae"], ["list", "--pretrained", "--json"]):
        registry.reset()
        code, out, err = run_main(argv)
        assert code == 1 and out == "", (argv, out)
        assert_one_line_error(err, str(path))


# --------------------------------------------------------------------------- params_digest, size, names of plugins


def test_params_digest_and_size_are_read_and_checked(cat_path):
    digest = "ab" * 32
    entry = parse(catalog_toml(entry_toml(params_digest=json.dumps(digest))), cat_path)[0]
    assert entry.params_digest == digest and entry.size is None
    remote = entry_toml(checkpoint='"https://example.org/m.zip"', size="1234")
    assert parse(catalog_toml(remote), cat_path)[0].size == 1234
    for bad, needle in (
        (entry_toml(params_digest='"xyz"'), "'params_digest' must be 64 lowercase hex digits"),
        (entry_toml(checkpoint='"https://example.org/m.zip"', size="0"), "'size' must be a positive integer"),
        (entry_toml(checkpoint='"https://example.org/m.zip"', size="1.5"), "'size' must be a positive integer"),
        (entry_toml(size="100"), "'size' is for remote checkpoints"),
    ):
        assert needle in parse_error(catalog_toml(bad), cat_path)


def test_an_entry_named_like_a_plugin_is_refused(tmp_path, monkeypatch):
    """Issue 10 §8: a pretrained `vae` shadowed the plugin `vae` in `zoo info`."""
    catalog = write_catalog(tmp_path / "cat" / "registry.toml", entry_toml("vae"))
    monkeypatch.setenv("ZOO_REGISTRY", str(catalog))
    registry.reset()
    code, out, err = run_main(["info", "vae"])
    assert code == 1
    assert_one_line_error(err, "'vae'", str(catalog), "name of a plugin")
