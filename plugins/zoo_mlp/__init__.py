"""The MLP plugin: deep neural networks trained by backpropagation, on MNIST-like images.

Light on purpose: ``zoo list`` imports this module; the model code is named by reference.
"""

from zoo.plugin import Plugin

plugin = Plugin(
    name="mlp",
    api=(1, 1),  # 1.1: predict
    summary="Multilayer perceptron classifier trained by backpropagation (Rumelhart et al., 1986)",
    config="zoo_mlp.model:MLPConfig",
    variants={
        # Variants are named by their weight layers: 784 -> 800 -> 10 is Simard et al.'s (2003) net.
        "2-layer": {"hidden": (800,)},
        "3-layer": {"hidden": (512, 512), "dropout": 0.2},
        "5-layer": {"hidden": (1024, 1024, 1024, 1024), "dropout": 0.2},
    },
    build="zoo_mlp.model:build",
    train="zoo_mlp.train:train",
    predict="zoo_mlp.train:predict",
    evaluate="zoo_mlp.train:evaluate",
    datasets=("mnist", "fashion-mnist"),
    metric=("accuracy", "max"),
)
