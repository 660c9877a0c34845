"""The CNN plugin: LeNet-style and small residual convolutional classifiers.

Light on purpose: ``zoo list`` imports this module; the model code is named by reference.
"""

from zoo.plugin import Plugin

plugin = Plugin(
    name="cnn",
    api=(1, 1),  # 1.1: predict
    summary="Convolutional classifiers: LeNet-style (LeCun et al., 1998) and a small ResNet with BatchNorm (He et al., 2016)",
    config="zoo_cnn.model:CNNConfig",
    variants={
        # Caffe's LeNet (20 and 50 5x5 filters, 500 hidden units), with dropout.
        "lenet": {"kind": "lenet", "channels": (20, 50), "dense": 500, "dropout": 0.3},
        # Stem and pool to 14x14, a 32-wide block, a 64-wide block at 7x7: 0.08M parameters,
        # 6.6M multiply-adds per 28x28 image.
        "resnet": {"kind": "resnet", "channels": (32, 64), "blocks": 1},
    },
    build="zoo_cnn.model:build",
    train="zoo_cnn.train:train",
    predict="zoo_cnn.train:predict",
    evaluate="zoo_cnn.train:evaluate",
    datasets=("mnist", "fashion-mnist"),
    metric=("accuracy", "max"),
)
