"""flax-zoo: pretrained JAX/Flax models by name, and one sharded training loop for every plugin.

    import zoo
    zoo.list_models("vae*")
    images = zoo.load("vae-mnist").sample(16)          # (16, 28, 28, 1) in [0, 1]
    probs = zoo.load("cnn-mnist").predict(images)      # (16, 10) class probabilities
    model = zoo.build("vae", variant="dense-20")
    result = zoo.train("vae", steps=1000, workdir="runs/vae")

Importing ``zoo`` is light (no jax): heavy modules load on first use.
"""

from zoo.api import ModelInfo as ModelInfo
from zoo.api import build as build
from zoo.api import info as info
from zoo.api import list_models as list_models
from zoo.api import load as load
from zoo.api import predict as predict
from zoo.api import sample as sample
from zoo.api import train as train
from zoo.api import verify as verify
from zoo.errors import UsageError as UsageError
from zoo.errors import ZooError as ZooError
from zoo.plugin import API_MINOR as API_MINOR
from zoo.plugin import API_VERSION as API_VERSION
from zoo.plugin import Plugin as Plugin

__version__ = "0.1.0"
