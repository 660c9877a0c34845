"""The GAN plugin: a DCGAN generator and discriminator (Radford et al., 2016).

Light on purpose: ``zoo list`` imports this module, so it names the model code by
reference and imports nothing heavy.
"""

from zoo.plugin import Plugin

plugin = Plugin(
    name="gan",
    api=1,
    summary="DCGAN: transposed-conv generator with BatchNorm, strided-conv discriminator (Radford et al., 2016)",
    config="zoo_gan.model:GANConfig",
    variants={
        # Far narrower than the paper's 64x64 DCGAN (1024 down to 128 channels): a step costs
        # about 0.8 GFLOP at batch 64, what this shared 2-core CPU could afford.
        "dcgan": {"latent_dim": 64, "generator_channels": (32, 16), "discriminator_channels": (16, 32)},
        # For tests: a few thousand parameters.
        "tiny": {"latent_dim": 8, "generator_channels": (8, 4), "discriminator_channels": (4, 8)},
    },
    build="zoo_gan.model:build",
    train="zoo_gan.train:train",
    sample="zoo_gan.model:sample",
    evaluate="zoo_gan.train:evaluate",
    datasets=("mnist",),
    metric=("fid_mnist", "min"),
)
