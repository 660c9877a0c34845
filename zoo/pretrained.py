"""Loading trained models by name or folder: verify, build abstractly, restore onto the devices.

Three things can be loaded:

- a catalogue name (``"vae-mnist"``): its checkpoint is verified against the
  sha256 the catalogue pins (fetched first if remote);
- a training workdir: the newest verified step, EMA weights if the run kept them;
- an exported checkpoint folder (what ``zoo.publish.export`` writes, with its ``meta``).

A checkpoint exported with ``weights_dtype="bfloat16"`` loads (and ``init_from``
restores) in the model's own dtypes: its bfloat16 weights come back as float32,
exactly, so nothing downstream can tell, except by the values' rounding.

Verification comes before any byte is restored, and the stored tree is compared
with the model before Orbax sees it, so a corrupt or mismatched checkpoint is one
clear error and nothing half-loaded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from zoo import checkpoint, memory, paths, registry, remote
from zoo.catalog import PretrainedEntry
from zoo.config import call_options, config_from_dict, make_config
from zoo.errors import UsageError, ZooError
from zoo.plugin import Plugin


@dataclasses.dataclass
class LoadedModel:
    """A model ready to use.

    Attributes:
      name: catalogue name or the folder it came from.
      plugin: its plugin; config: its config dataclass; model: the ``nnx.Module``.
      card: the catalogue entry (None for workdirs and folders).
      checkpoint: the verified folder the weights came from.
      dataset: the dataset it was trained on (evaluate uses its test split).
    """

    name: str
    plugin: Plugin
    config: Any
    model: Any
    card: PretrainedEntry | None
    checkpoint: Path
    dataset: str

    def sample(self, n: int = 16, seed: int = 0, **options: Any) -> Any:
        """``n`` samples: images ``(n, H, W, C)`` in [0, 1] or a list of texts (plugin-defined options)."""
        import jax

        from zoo import sharding

        if n < 1:
            raise UsageError(f"n must be at least 1; got {n}")
        if self.plugin.sample is None:
            raise UsageError(f"plugin {self.plugin.name!r} has no sample: it predicts (`zoo predict`, `.predict(inputs)`)")
        sample = self.plugin.resolve("sample")
        options = call_options(sample, options, f"{self.plugin.name} sample option")
        model = sharding.on_one_device(self.model)  # replicas would each repeat the whole generation
        memory.check_sample(sample, model, jax.random.key(seed), n, options, self.name)  # not a native abort
        return sample(model, jax.random.key(seed), n, **options)

    def predict(self, inputs: Any, **options: Any) -> Any:
        """Class probabilities ``np.ndarray (N, K)``; column ``k`` is ``self.classes[k]`` when the dataset names it.

        Or, from a plugin of API 1.2 that answers so, ranked candidates: per input a list
        of slots, each a list of ``{"label", "probability", ...}`` best first.

        ``inputs``: images ``(N, H, W, C)`` or one ``(H, W, C)``, float in [0, 1] or
        uint8 (the shape the training dataset declares), or a list of texts.
        """
        from zoo import prediction, sharding

        if self.plugin.predict is None:
            raise UsageError(f"plugin {self.plugin.name!r} has no predict: it generates (`zoo sample`, `.sample(n)`)")
        predict = self.plugin.resolve("predict")
        options = call_options(predict, options, f"{self.plugin.name} predict option")
        declared = self.dataset_declaration
        model = sharding.on_one_device(self.model)  # replicas would each repeat the whole prediction
        return predict(model, prediction.prepare(inputs, declared and declared.image_shape), **options)

    @property
    def dataset_declaration(self) -> Any:
        """The training dataset's ``zoo.data.Dataset`` (its classes, image shape), or None if it is not installed."""
        from zoo import data as datasets

        try:
            return datasets.get(self.dataset)
        except ZooError:  # unknown or broken here: predict still works on arrays and texts
            return None

    @property
    def classes(self) -> tuple[str, ...]:
        """Names of the classes ``predict``'s columns stand for (empty if the dataset names none)."""
        declared = self.dataset_declaration
        return tuple(declared.classes) if declared else ()

    def evaluate(self, data: Mapping[str, Any] | None = None, **options: Any) -> dict[str, float]:
        """The plugin's metrics on ``data`` (default: the test split of the training dataset).

        ``options`` are the plugin's evaluate options (a classifier's ``attack=zoo.attacks.Attack(...)``).
        """
        from zoo import data as datasets

        evaluate = self.plugin.resolve("evaluate")  # guarded: its metrics come back checked, as floats
        options = call_options(evaluate, options, f"{self.plugin.name} evaluate option")
        arrays = data if data is not None else datasets.load(self.dataset, "test")
        return evaluate(self.model, arrays, **options)


@dataclasses.dataclass(frozen=True)
class _Source:
    """Where weights are and how to interpret them."""

    name: str
    plugin: Plugin
    config: Any
    folder: Path  # a verified checkpoint folder
    item: str  # "model" or "ema"
    dataset: str
    card: PretrainedEntry | None = None


def checkpoint_folder(entry: PretrainedEntry) -> Path:
    """The verified local folder of a catalogue entry (fetched once if remote)."""
    if entry.remote:
        return remote.fetch_remote(entry.checkpoint, entry.sha256, entry.name, size=entry.size)
    folder = entry.local_path
    if not folder.is_dir():
        raise ZooError(f"checkpoint of {entry.name} is missing: {folder} (named in {entry.source})")
    checkpoint.verify(folder, entry.sha256)
    return folder


def _items(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.is_dir()}


def _resolve(name_or_path: str | Path, overrides: Mapping[str, Any] | None) -> _Source:
    path = Path(name_or_path)
    # A catalogue name wins over a same-named folder in the working directory, so a
    # stray ./vae-mnist can never stand in for the pinned checkpoint; "./x" forces a folder.
    explicit_path = isinstance(name_or_path, Path) or "/" in str(name_or_path) or str(name_or_path).startswith(".")
    if not explicit_path and (str(name_or_path) in registry.catalog().entries or not path.is_dir()):
        entry = registry.get_pretrained(str(name_or_path))
        plugin = registry.get_plugin(entry.plugin)
        folder = checkpoint_folder(entry)  # verified before the model is even built
        config = make_config(plugin, entry.variant, {**entry.config, **(overrides or {})})
        return _Source(entry.name, plugin, config, folder, "model", entry.dataset, entry)
    if not path.is_dir():
        raise UsageError(f"{name_or_path} is neither a pretrained model name nor a folder")
    if (path / "checkpoints").is_dir():  # a training workdir
        store = checkpoint.StepDirectory(path / "checkpoints")
        step = store.latest()
        if step is None:
            raise ZooError(f"{path} has no complete checkpoint yet")
        folder = store.path(step)
    else:
        folder = path
        checkpoint.verify(folder)
    meta = checkpoint.read_meta(folder)
    try:
        plugin = registry.get_plugin(meta["plugin"])
        config = config_from_dict(plugin, {**meta["config"], **(overrides or {})})
        dataset = meta["dataset"]
    except KeyError as e:
        raise ZooError(f"{folder}: checkpoint metadata lacks {e}") from None
    item = "ema" if "ema" in _items(folder) else "model"
    return _Source(str(name_or_path), plugin, config, folder, item, dataset)


def _restore_model(source: _Source) -> Any:
    from flax import nnx

    from zoo import sharding

    mesh = sharding.make_mesh()
    with nnx.use_eager_sharding(False):
        graphdef, state = nnx.split(nnx.eval_shape(lambda: source.plugin.resolve("build")(source.config, nnx.Rngs(0))))
    memory.check_parameters(state, source.name)
    targets = sharding.abstract(nnx.to_pure_dict(state), sharding.state_shardings(state, mesh))
    restored = checkpoint.restore(source.folder, {source.item: targets}, verified=True)[source.item]
    return nnx.merge(graphdef, restored)


def load(name_or_path: str | Path, *, overrides: Mapping[str, Any] | None = None) -> LoadedModel:
    """Load a pretrained model (catalogue name), a workdir, or a checkpoint folder.

    ``overrides`` changes config fields (a mismatch with the stored shapes is an
    error listing each differing parameter).
    """
    source = _resolve(name_or_path, overrides)
    model = _restore_model(source)
    return LoadedModel(source.name, source.plugin, source.config, model, source.card, source.folder, source.dataset)


def _init_from_plan(name_or_path: str | Path, plugin: Plugin, fresh: Mapping[str, Any]):
    """Which fresh variables (``{"a/b": array or ShapeDtypeStruct}``) a pretrained source restores.

    A stored variable is restored when its path and shape match and its dtype fits
    (``checkpoint.dtype_fits``: the same, or the bfloat16 weights of a checkpoint
    exported with ``weights_dtype="bfloat16"`` into float32 ones).
    Returns ``(source, stored tree, kept paths, re-initialised paths)``; a variable that
    neither matches nor is declared replaceable by ``plugin`` is a UsageError listing all.
    """
    source = _resolve(name_or_path, None)
    stored = checkpoint.stored_tree(source.folder, source.item)
    narrowed = checkpoint.stored_weights_dtype(source.folder)

    def difference(path: str) -> str | None:
        want, have = fresh[path], stored.get(path)
        if have is None or tuple(have.shape) != tuple(want.shape):
            return f"model {tuple(want.shape)}, checkpoint {tuple(have.shape) if have is not None else 'nothing'}"
        if not checkpoint.dtype_fits(want.dtype, have.dtype, narrowed):
            return f"model {want.dtype}, checkpoint {have.dtype}"
        return None

    differences = {path: difference(path) for path in sorted(fresh)}
    kept = {path for path, why in differences.items() if why is None}
    replaced, refused = [], []
    for path in sorted(set(fresh) - kept):
        if plugin.replaces(path):
            replaced.append(path)
        else:
            refused.append(f"  {path}: {differences[path]}")
    if refused:
        raise UsageError(
            f"--init-from {name_or_path}: plugin {plugin.name!r} does not declare these replaceable:\n" + "\n".join(refused)
        )
    return source, stored, kept, replaced


def check_init_from(name_or_path: str | Path, plugin: Plugin, abstract_variables: Mapping) -> None:
    """Refuse, from shapes alone (before anything is built), an ``--init-from`` that cannot apply."""
    from flax import traverse_util

    flat = traverse_util.flatten_dict(dict(abstract_variables))
    _init_from_plan(name_or_path, plugin, {paths.name(k): v for k, v in flat.items()})


def init_from(name_or_path: str | Path, plugin: Plugin, variables: Mapping) -> dict:
    """``variables`` (a fresh model's, pure nested dict) started from a pretrained model or a workdir.

    Each stored variable whose path, shape and dtype match is restored straight into the
    sharding of the fresh one it replaces (no full copy per device), in the fresh
    variable's dtype (stored bfloat16 weights widened back, exactly); the others
    must be ones ``plugin.replaceable`` declares, which keep their fresh values.
    Says on stderr what was re-initialised.
    """
    import sys

    import jax
    from flax import traverse_util

    from zoo import sharding

    fresh_by_key = traverse_util.flatten_dict(dict(variables))  # keys keep their types (list indices are ints)
    fresh = {paths.name(key): value for key, value in fresh_by_key.items()}  # Orbax's paths: strings
    source, stored, kept, replaced = _init_from_plan(name_or_path, plugin, fresh)
    replicated = sharding.replicated(sharding.make_mesh())
    target: dict = {}
    for path, meta in stored.items():  # mismatched ones are read too (Orbax restores whole trees), replicated
        *parents, leaf = path.split("/")
        node = target
        for part in parents:  # Orbax keeps every key as a string, so the target does too
            node = node.setdefault(part, {})
        where = fresh[path].sharding if path in kept else replicated
        node[leaf] = jax.ShapeDtypeStruct(tuple(meta.shape), meta.dtype, sharding=where)
    old = checkpoint.tree_paths(checkpoint.restore(source.folder, {source.item: target}, verified=True)[source.item])
    if replaced:
        print(f"init-from {name_or_path}: restored {len(kept)} variables, re-initialised {', '.join(replaced)}", file=sys.stderr)
    started = {
        key: old[name].astype(value.dtype) if name in kept else value
        for (key, value), name in zip(fresh_by_key.items(), fresh)
    }
    return traverse_util.unflatten_dict(started)
