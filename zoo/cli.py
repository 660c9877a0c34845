"""The ``zoo`` command: parse, call the library, print. Nothing else lives here.

Exit codes: 0 success, 2 bad usage or unknown name, 1 any other failure, 130
interrupted. Errors are one line on stderr; ``--json`` puts exactly one JSON
document on stdout.
"""

from __future__ import annotations

import json
import math
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import click

from zoo import api, registry
from zoo.config import parse_assignments
from zoo.errors import UsageError, ZooError


def _finite_or_none(value: Any) -> Any:
    """NaN and infinities are not JSON: they go out as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_none(v) for v in value]
    return value


def _emit_json(value: Any) -> None:
    click.echo(json.dumps(_finite_or_none(value), indent=2, default=str, allow_nan=False))


def _quiet_jax_logs() -> None:
    """JAX and Orbax log INFO chatter through absl; a CLI user wants results and errors."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import absl.logging

        absl.logging.set_verbosity(absl.logging.WARNING)
    except ImportError:
        pass


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="flax-zoo", prog_name="zoo")
@click.option("--debug", is_flag=True, help="Show the traceback of any error (also ZOO_DEBUG=1).")
def cli(debug: bool) -> None:
    """flax-zoo: pretrained JAX/Flax models by name, and one training loop for all of them."""
    if debug:
        os.environ["ZOO_DEBUG"] = "1"  # read by main's error handler, and by subprocesses we start


def _traceback_if_debugging() -> None:
    """With ``--debug`` or ``ZOO_DEBUG=1``, the handled error's traceback goes to stderr before its one line."""
    if os.environ.get("ZOO_DEBUG", "") not in ("", "0"):
        traceback.print_exc()


# --------------------------------------------------------------------------- list / info


@cli.command("list")
@click.argument("pattern", required=False)
@click.option("--pretrained", is_flag=True, help="Only pretrained checkpoints.")
@click.option("--plugin", "plugin_name", metavar="NAME", help="Only this plugin's entries.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_command(pattern: str | None, pretrained: bool, plugin_name: str | None, as_json: bool) -> None:
    """List plugins and pretrained models (PATTERN: fnmatch, e.g. 'vae*')."""
    models = api.list_models(pattern, pretrained=pretrained, plugin=plugin_name)
    if as_json:
        _emit_json([m.to_dict() for m in models])
        return
    if not models:
        click.echo("no models match", err=True)
        return
    width = max(len(m.name) for m in models)
    for m in models:
        if m.status != "ok":
            text = "BROKEN (run `zoo doctor`)" if m.kind == "plugin" else m.status
        else:
            metrics = ", ".join(f"{k} {v:.4g}" for k, v in m.details.get("metrics", {}).items())
            text = m.summary + (f"  [{metrics}]" if metrics else "")
        click.echo(f"{m.name:<{width}}  {m.kind:<10}  {text}")


@cli.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info(name: str, as_json: bool) -> None:
    """Show a pretrained model's card or a plugin's variants."""
    model = api.info(name)
    if as_json:
        _emit_json(model.to_dict())
    else:
        _print_info(model)
    if model.status != "ok":  # shown above; still a failure for scripts and users
        raise ZooError(f"{model.kind} {model.name!r} is {model.status}")


def _print_info(model: api.ModelInfo) -> None:
    click.echo(f"{model.name} ({model.kind}, plugin {model.plugin})")
    click.echo(f"  {model.summary}" if model.summary else "")
    if model.status != "ok":
        click.echo(f"  status: {model.status}")
    for key, value in model.details.items():
        if key in ("name", "summary", "description"):
            continue
        if isinstance(value, dict) and value:
            click.echo(f"  {key}:")
            for k, v in value.items():
                click.echo(f"    {k}: {v}")
        else:
            click.echo(f"  {key}: {value}")


# --------------------------------------------------------------------------- train


@cli.command()
@click.argument("plugin")
@click.option("--variant", help="Named preset of the model config (default: the plugin's first).")
@click.option("--dataset", help="Dataset to train on (default: the plugin's first).")
@click.option("--steps", type=click.IntRange(min=1), help="Total steps (a resumed run continues to this).")
@click.option("--batch-size", type=click.IntRange(min=1), help="Global batch size.")
@click.option("--seed", type=int, help="Seed for initialisation, shuffling and sampling.")
@click.option("--workdir", type=click.Path(file_okay=False), help="Run folder [runs/PLUGIN-VARIANT].")  # str: "" stays refusable
@click.option("--checkpoint-every", type=click.IntRange(min=1), help="Save every N steps (and at the end).")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE", help="Model config field, or train.FIELD.")
@click.option("--mesh", metavar="AXIS=N[,AXIS=N]", help="Device mesh over data, fsdp, tensor [all on data].")
@click.option("--init-from", metavar="NAME", help="Start from a pretrained model's weights.")
@click.option("--coordinator", metavar="HOST:PORT", help="Multi-process: the coordinator's address.")
@click.option("--num-processes", type=click.IntRange(min=1), help="Multi-process: how many processes.")
@click.option("--process-id", type=click.IntRange(min=0), help="Multi-process: this process's index.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@click.option("--quiet", is_flag=True, help="No progress output.")
def train(plugin: str, settings: tuple[str, ...], coordinator, num_processes, process_id, as_json, quiet, **options) -> None:
    """Train PLUGIN with the shared loop (resumes an existing --workdir)."""
    from zoo import distributed, stopping

    # Ctrl-C and SIGTERM are recorded from here on (before JAX loads), and the loop stops on them
    # at a step every process agrees on: exit 130 / 143 with a checkpoint, never a lost signal.
    try:
        with stopping.catching() as requests:
            _quiet_jax_logs()
            distributed.initialize(coordinator, num_processes, process_id)
            named = {k: options.pop(k) for k in ("variant", "dataset", "workdir", "mesh", "init_from")}
            train_options = {k: v for k, v in options.items() if v is not None}
            result = api.train(plugin, settings=parse_assignments(settings), progress=not quiet, **named, **train_options)
            if requests.flags:  # arrived after the loop's last look: the run is complete and saved, still say so
                raise stopping.Interrupted("interrupted after training finished; everything was saved", requests.exit_code(requests.flags))
    except stopping.Interrupted:
        stopping.ignore_from_now_on()  # the exit code is decided; a late signal must not turn it into a kill
        raise
    if as_json:
        keys = ("step", "loss", "params_digest", "workdir", "resumed_from")  # resumed_from: the step it resumed at, or null
        _emit_json({k: result.to_json()[k] for k in keys} | {"metrics": dict(result.metrics)})
    else:
        click.echo(f"trained {plugin} to step {result.step}: loss {result.loss:.4f} ({result.seconds:.1f}s); workdir {result.workdir}")


# --------------------------------------------------------------------------- sample / eval / verify


OUT_SUFFIXES = {"images": (".png", ".npy"), "texts": (".txt",)}
"""What ``zoo sample --out`` can write, by what the plugin samples."""


def _write_samples(samples: Any, out: Path | None) -> None:
    import numpy as np

    from zoo import images
    from zoo.download import atomic_write_bytes

    kind = "texts" if isinstance(samples, list) else "images"
    if out is not None and out.suffix.lower() not in OUT_SUFFIXES[kind]:
        raise UsageError(f"--out must end in {' or '.join(OUT_SUFFIXES[kind])} for {kind}; got {out.name}")
    if kind == "texts":
        text = "\n\n".join(samples) + "\n"
        if out is None:
            click.echo(text, nl=False)
        else:
            atomic_write_bytes(out, text.encode())
            click.echo(f"wrote {len(samples)} samples to {out}", err=True)
        return
    samples = np.asarray(samples)
    if out is None:
        for image in samples[:3]:
            click.echo(images.ascii_preview(image) + "\n")
        click.echo(f"{len(samples)} images {samples.shape[1:]}; write them with --out FILE.png (or .npy)", err=True)
        return
    if out.suffix.lower() == ".png":
        images.save_grid(samples, out)
    else:
        import io

        buffer = io.BytesIO()
        np.save(buffer, samples, allow_pickle=False)
        atomic_write_bytes(out, buffer.getvalue())
    click.echo(f"wrote {len(samples)} samples to {out}", err=True)


@cli.command()
@click.argument("name")
@click.option("--n", "n", type=click.IntRange(min=1), default=16, show_default=True, help="How many samples.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="PNG grid / .npy for images, text file for texts.")
@click.option("--prompt", help="Text to continue (language models).")
@click.option("--option", "sample_options", multiple=True, metavar="KEY=VALUE", help="Plugin sample option, e.g. mode=interpolate.")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE", help="Override a config field.")
def sample(name: str, n: int, seed: int, out: Path | None, prompt: str | None, sample_options, settings) -> None:
    """Sample from a pretrained model NAME or a training WORKDIR."""
    _quiet_jax_logs()
    options: dict[str, Any] = dict(parse_assignments(sample_options))  # parsed by the plugin's annotations
    if prompt is not None:
        options["prompt"] = prompt
    if out is not None and out.suffix.lower() not in {s for kind in OUT_SUFFIXES.values() for s in kind}:
        raise UsageError(f"--out must end in .png or .npy (images) or .txt (texts); got {out.name}")
    model = api.load(name, **parse_assignments(settings))
    _write_samples(model.sample(n, seed=seed, **options), out)


def _attack_options(command: Any) -> Any:
    """--attack/--eps/--steps/--step-size/--random-start, shared by eval and predict."""
    options = [
        click.option("--attack", type=click.Choice(["fgsm", "pgd"]), help="Adversarial attack (classifiers): L-inf FGSM or PGD."),
        click.option("--eps", type=click.FloatRange(0.0, 1.0), default=0.1, show_default=True, help="Attack radius, a fraction of the input range."),
        click.option("--steps", "attack_steps", type=click.IntRange(min=1), default=40, show_default=True, help="PGD iterations."),
        click.option("--step-size", type=click.FloatRange(min=0.0, min_open=True), help="PGD step [2.5 * eps / steps]."),
        click.option("--random-start/--no-random-start", default=True, show_default=True, help="Start from a random point of the eps ball."),
    ]  # fmt: skip
    for option in reversed(options):
        command = option(command)
    return command


def _attack(attack: str | None, eps: float, attack_steps: int, step_size: float | None, random_start: bool) -> Any:
    """The ``zoo.attacks.Attack`` the options describe, or None without --attack."""
    if attack is None:
        return None
    from zoo.attacks import Attack

    return Attack(attack, eps, attack_steps, step_size, random_start)


@cli.command()
@click.argument("name")
@click.option(
    "--input", "inputs", multiple=True, required=True, metavar="FILE",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="An image (PNG, JPEG...), a .npy array (one example or a batch) or a .txt text; repeatable.",
)  # fmt: skip
@click.option("--top", type=click.IntRange(min=1), default=3, show_default=True, help="How many classes per input (candidates per slot).")
@click.option("--option", "predict_options", multiple=True, metavar="KEY=VALUE", help="Plugin predict option.")
@_attack_options
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="With --attack: PNG of original | adversarial | perturbation.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def predict(name: str, inputs: tuple[Path, ...], top: int, predict_options, out: Path | None, as_json: bool, **attack_settings) -> None:
    """Classify input files (or fill masks in texts) with a pretrained model NAME or a training WORKDIR."""
    from zoo import prediction

    attack = _attack(**attack_settings)
    if out is not None and (attack is None or out.suffix.lower() != ".png"):
        raise UsageError("--out writes the adversarial triptych: it needs --attack and a .png name")
    prediction.check_paths(inputs)  # a file it cannot read fails before the model loads
    _quiet_jax_logs()
    model = api.load(name)
    declared = model.dataset_declaration
    batch, labels = prediction.read_files(inputs, declared and declared.image_shape)
    options = parse_assignments(predict_options)
    result = model.predict(batch, **options)
    if prediction.is_ranked(result):  # per input, slots of candidates (a fill-mask model: one slot per [MASK])
        if attack is not None:
            raise UsageError("--attack perturbs images and ranks classes; this model answers with ranked candidates")
        slots = prediction.top_candidates(result, top)
        rows = [{"input": label, "slots": found} for label, found in zip(labels, slots, strict=True)]
        if as_json:
            _emit_json(rows)
            return
        for row in rows:
            for i, candidates in enumerate(row["slots"]):
                click.echo(f"{row['input']} #{i + 1}: {prediction.describe_slot(candidates)}")
        return
    ranked = prediction.top_classes(result, model.classes, top)
    rows = [{"input": label, "top": best} for label, best in zip(labels, ranked, strict=True)]
    if attack is not None:
        adversarial = _attacked_inputs(model, batch, attack)
        for row, best in zip(rows, prediction.top_classes(model.predict(adversarial, **options), model.classes, top)):
            row["adversarial_top"] = best
        if out is not None:
            from zoo import classify, images

            images.save_grid(classify.triptychs(batch, adversarial, attack.eps), out, columns=3)
            click.echo(f"wrote original | adversarial | perturbation ({attack.describe()}) to {out}", err=True)
    if as_json:
        _emit_json(rows)
        return
    for row in rows:
        text = ", ".join(f"{c['class']} {c['probability']:.3f}" for c in row["top"])
        if "adversarial_top" in row:
            text += "  -> attacked: " + ", ".join(f"{c['class']} {c['probability']:.3f}" for c in row["adversarial_top"])
        click.echo(f"{row['input']}: {text}")


def _attacked_inputs(model: Any, batch: Any, attack: Any) -> Any:
    """Adversarial versions of image inputs, attacked away from the model's own predictions."""
    from zoo import classify

    if isinstance(batch, list):
        raise UsageError("--attack perturbs images; these inputs are texts")
    try:
        adversarial, _ = classify.attack_images(model.model, batch, attack)
    except (TypeError, ValueError) as e:
        raise ZooError(f"plugin {model.plugin.name!r}: --attack needs a model mapping images to logits (zoo.classify): {e}") from None
    return adversarial


@cli.command("eval")
@click.argument("name")
@_attack_options
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Save the confusion matrix as a PNG (classifiers).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def eval_command(name: str, out: Path | None, as_json: bool, **attack_settings) -> None:
    """Evaluate a pretrained model NAME or a training WORKDIR on its test split."""
    attack = _attack(**attack_settings)
    if out is not None and out.suffix.lower() != ".png":
        raise UsageError(f"--out writes the confusion matrix as a PNG: name it .png; got {out.name}")
    _quiet_jax_logs()
    model = api.load(name)
    metrics = model.evaluate(**({"attack": attack} if attack is not None else {}))
    from zoo import classify

    matrix = classify.confusion_matrix(metrics)
    if out is not None:
        if matrix is None:
            raise UsageError(f"{name}: its evaluate reports no confusion matrix to draw")
        classify.confusion_png(matrix, out, model.classes)
        click.echo(f"wrote the confusion matrix to {out}", err=True)
    if as_json:
        _emit_json(metrics)
        return
    per_class = {k.partition("/")[2]: v for k, v in metrics.items() if k.startswith("accuracy/")}
    for key, value in metrics.items():
        if not key.startswith(("accuracy/", "confusion/")):
            click.echo(f"{key}: {value:.4f}" + (f"  ({attack.describe()})" if key == "robust_accuracy" and attack else ""))
    if per_class:
        names = model.classes
        click.echo("per-class accuracy: " + ", ".join(f"{names[int(k)] if len(names) > int(k) else k} {v:.4f}" for k, v in per_class.items()))
    if matrix is not None:
        click.echo(classify.format_confusion(matrix, model.classes))


@cli.command()
@click.argument("names", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Every pretrained model in the catalogues.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--reproduce", is_flag=True, help="Rerun each recipe in a temporary workdir and compare params_digest.")
def verify(names: tuple[str, ...], everything: bool, as_json: bool, reproduce: bool) -> None:
    """Check checksums, then re-measure metrics against the card."""
    _quiet_jax_logs()
    if everything:
        names = tuple(registry.catalog().entries)
    if not names:
        raise UsageError("name at least one pretrained model, or pass --all")
    for name in names:
        registry.get_pretrained(name)  # every name checked before the slow part
    if reproduce:
        _reproduce(names)
        return
    results = [api.verify(name) for name in names]
    if as_json:
        _emit_json([r.to_dict() for r in results])
    else:
        for r in results:
            click.echo(f"{r.name}: {'ok' if r.ok else 'FAILED'}")
            for line in r.checks:
                click.echo(f"  {line}")
    if not all(r.ok for r in results):
        sys.exit(1)


def _reproduce(names: tuple[str, ...]) -> None:
    """Train each entry's recipe afresh (this CLI parses it) and compare the weights' params_digest, bitwise.

    The rerun's weights are rounded as the entry's checkpoint stores them (its meta's
    ``weights_dtype``), as the export that made the card did.
    """
    import tempfile

    from zoo import publish

    failed = []
    for name in names:
        entry = registry.get_pretrained(name)
        if entry.params_digest is None:
            raise UsageError(f"{name} has no params_digest in {entry.source}: nothing to compare a rerun with")
        args = publish.recipe_arguments(entry.recipe, f"{entry.source}: [models.{name}]")
        weights_dtype = publish.card_weights_dtype(entry)  # a bfloat16 export's digest is of the rounded weights
        with tempfile.TemporaryDirectory(prefix="zoo-reproduce-") as tmp:
            click.echo(f"{name}: running {entry.recipe}", err=True)
            train.main(args=[*args, "--workdir", str(Path(tmp) / "run"), "--quiet"], prog_name="zoo train", standalone_mode=False)
            digest = publish.weights_digest(Path(tmp) / "run", weights_dtype)
        same = digest == entry.params_digest
        click.echo(f"{name}: {'reproduced' if same else 'NOT REPRODUCED'} (params_digest {digest}, card {entry.params_digest})")
        if not same:
            failed.append(name)
    if failed:
        sys.exit(1)


@cli.command()
@click.argument("workdir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("destination", metavar="NAME", type=click.Path(path_type=Path))
@click.option("--archive", is_flag=True, help="Write NAME.zip (for hosting) instead of a folder.")
@click.option("--license", "license_", default="unknown", show_default=True, help="The entry's license field.")
@click.option("--description", help="The entry's one-line description.")
@click.option("--json", "as_json", is_flag=True, help="Print the entry as JSON.")
@click.option(
    "--weights-dtype",
    metavar="DTYPE",
    help="Store float32/float64 weights as DTYPE (bfloat16: half the bytes); loading casts them back. "
    "Default: the model's own dtypes.",
)
def export(
    workdir: Path, destination: Path, archive: bool, license_: str, description: str | None, as_json: bool, weights_dtype: str | None
) -> None:
    """Write WORKDIR's weights as checkpoint NAME (a folder path; its last part names the entry).

    The bytes depend only on the weights. Prints a complete catalogue entry:
    sha256, params_digest, metrics measured now by the plugin's evaluate, and the recipe.

    With --weights-dtype bfloat16 the float weights are stored in bfloat16 (integer
    and byte variables as they are) and loaded back as float32, exactly; the metrics
    and params_digest are those of the weights as loaded.
    """
    from zoo import publish

    publish.check_weights_dtype(weights_dtype)  # before JAX loads: a typo costs nothing
    _quiet_jax_logs()
    exported = publish.export(workdir, destination, archive=archive, weights_dtype=weights_dtype)
    if as_json:
        _emit_json(exported.entry(license_, description) | {"name": exported.name})
    else:
        click.echo(exported.entry_toml(license_, description), nl=False)
    where = "host it and put its https:// URL in `checkpoint`" if archive else "paste the entry into a catalogue"
    click.echo(f"wrote {exported.path} (MANIFEST sha256 {exported.sha256}); {where}", err=True)


# --------------------------------------------------------------------------- data / doctor


@cli.group()
def data() -> None:
    """Datasets: list them, fetch, verify and cache."""


@data.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def data_list(as_json: bool) -> None:
    """Every discovered dataset: splits, cached or not, size, license, source."""
    from zoo import data as datasets

    rows = datasets.describe()
    if as_json:
        _emit_json(rows)
        return
    width = max((len(r["name"]) for r in rows), default=0)
    for r in rows:
        if not r["ok"]:
            click.echo(f"{r['name']:<{width}}  BROKEN (run `zoo doctor`): {r['error']}")
            continue
        cached = "cached" if r["cached"] else "not cached"
        click.echo(f"{r['name']:<{width}}  {'/'.join(r['splits'])}  {cached}  {r['size'] or '?'}  {r['license'] or '?'}  {r['source']}")


@data.command("fetch")
@click.argument("dataset")
def data_fetch(dataset: str) -> None:
    """Fetch, verify and cache DATASET (any discovered one)."""
    from zoo import data as datasets

    click.echo(f"{dataset}: cached in {datasets.fetch(dataset)}")


@cli.command()
@click.argument("names", nargs=-1)
@click.option("--quick", is_flag=True, help="References and abstract builds only; no evaluate/sample/predict calls.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def doctor(names: tuple[str, ...], quick: bool, as_json: bool) -> None:
    """Devices, versions, and every plugin, dataset and catalogue entry checked (or those NAMES); exit 1 if any is broken."""
    from importlib import metadata

    from zoo import doctor as checks

    _quiet_jax_logs()
    import jax

    report: dict[str, Any] = {
        "python": sys.version.split()[0],
        "versions": {},
        "devices": [str(d) for d in jax.devices()],
        "backend": jax.default_backend(),
        "process": f"{jax.process_index()} of {jax.process_count()}",
    }
    for package in ("flax-zoo", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "pillow"):
        try:
            report["versions"][package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            report["versions"][package] = None
    found = checks.examine(names, quick=quick)
    report |= {kind: [c.to_dict() for c in checkups] for kind, checkups in found.items()}
    problems = [line for checkups in found.values() for c in checkups if not c.ok for line in c.lines()]
    report |= {"ok": not problems, "problems": problems}
    if as_json:
        _emit_json(report)
    else:
        click.echo(f"python {report['python']}; " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()))
        click.echo(f"backend {report['backend']}: {len(report['devices'])} device(s), process {report['process']}")
        for checkup in found["datasets"] + found["plugins"] + [c for c in found["pretrained"] if not c.ok]:
            for line in checkup.lines():
                click.echo(line)
        click.echo(f"catalogue: {sum(c.kind == 'pretrained' for c in found['pretrained'])} pretrained model(s)")
    if problems:
        click.echo(f"zoo doctor: {len(problems)} problem(s)", err=True)
        sys.exit(1)


# --------------------------------------------------------------------------- new-plugin


@cli.command("new-plugin")
@click.argument("name")
@click.option("--dir", "directory", type=click.Path(path_type=Path), help="Folder to write [./zoo-NAME]; missing or empty.")
@click.option("--kind", type=click.Choice(["generative", "classifier"]), default="generative", show_default=True,
              help="generative: a VAE with sample; classifier: an MLP with predict.")
@click.option("--with-dataset", is_flag=True, help="Also a dataset plugin (generated data, works offline).")
def new_plugin(name: str, directory: Path | None, kind: str, with_dataset: bool) -> None:
    """Write a publishable plugin package NAME: model, training, tests, catalogue, README."""
    from zoo import scaffold

    target = scaffold.new_plugin(name, directory, kind=kind, with_dataset=with_dataset)
    click.echo(f"wrote {target}; next: cd {target} && pip install -e '.[test]' && python -m pytest")


# --------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> None:
    """Console entry: run the group, turning ZooErrors into one line and an exit code."""
    try:
        cli.main(args=argv, prog_name="zoo", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.UsageError as e:  # one line, with where to look, instead of click's three
        command = e.ctx.command_path if e.ctx else "zoo"
        click.echo(f"zoo: error: {e.format_message()} (see `{command} --help`)", err=True)
        sys.exit(e.exit_code)
    except click.ClickException as e:
        click.echo(f"zoo: error: {e.format_message()}", err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        _traceback_if_debugging()
        click.echo("zoo: interrupted", err=True)
        sys.exit(130)
    except ZooError as e:
        _traceback_if_debugging()
        label = "zoo:" if e.exit_code in (130, 143) else "zoo: error:"  # an interruption is not a failure
        click.echo(f"{label} {e}", err=True)
        sys.exit(e.exit_code)
    except OSError as e:  # an unwritable --out or --workdir, a full disk, a missing folder
        _traceback_if_debugging()
        where = f"{e.filename}: " if e.filename else ""
        click.echo(f"zoo: error: {where}{e.strerror or e}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        _traceback_if_debugging()
        click.echo("zoo: interrupted", err=True)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(1)
    sys.exit(0)


if __name__ == "__main__":
    main()
