"""The ViT plugin: a Vision Transformer classifier (Dosovitskiy et al., 2021).

Light on purpose: ``zoo list`` imports this module, so it names the model code by
reference and imports nothing heavy.
"""

from zoo.plugin import Plugin

plugin = Plugin(
    name="vit",
    api=(1, 1),  # 1.1: predict
    summary="Vision Transformer classifier: patch tokens, class token, pre-norm blocks (Dosovitskiy et al., 2021)",
    config="zoo_vit.model:ViTConfig",
    variants={
        # 16 patches of 7x7 + a class token, 3 blocks of width 64: 0.11M parameters, sized to
        # the CPU time this machine had for it (see the card's recipe).
        "mnist": {"patch": 7, "width": 64, "depth": 3, "heads": 4, "mlp_ratio": 2},
        # For tests: one block, 16 tokens.
        "tiny": {"patch": 7, "width": 16, "depth": 1, "heads": 2, "mlp_ratio": 2},
    },
    build="zoo_vit.model:build",
    train="zoo_vit.train:train",
    evaluate="zoo_vit.train:evaluate",
    predict="zoo_vit.train:predict",
    datasets=("mnist",),
    metric=("accuracy", "max"),
)
