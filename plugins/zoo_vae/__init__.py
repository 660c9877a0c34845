"""The VAE plugin: variational autoencoders on MNIST (Kingma & Welling, 2014).

Light on purpose: ``zoo list`` imports this module, so it names the model code by
reference and imports nothing heavy.
"""

from zoo.plugin import Plugin

plugin = Plugin(
    name="vae",
    api=1,
    summary="Variational autoencoder: Bernoulli decoder, Gaussian latent (Kingma & Welling, 2014)",
    config="zoo_vae.model:VAEConfig",
    variants={
        # The seed's network: 784 -> 128 relu -> 20-d latent -> 128 relu -> 784.
        "dense-20": {"kind": "dense", "hidden": 128, "latent_dim": 20},
        # Two stride-2 convolutions each way around a 16-d latent.
        "conv-16": {"kind": "conv", "channels": (32, 64), "latent_dim": 16},
    },
    build="zoo_vae.model:build",
    train="zoo_vae.train:train",
    sample="zoo_vae.model:sample",
    evaluate="zoo_vae.train:evaluate",
    datasets=("mnist",),
    metric=("neg_elbo", "min"),
)
