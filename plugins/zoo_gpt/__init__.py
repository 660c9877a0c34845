"""The GPT plugin: decoder-only Transformer language models, from a CPU-sized char model to GPT-2 small.

Light on purpose: ``zoo list`` imports this module; the model code is named by reference.
"""

from zoo.plugin import Plugin

plugin = Plugin(
    name="gpt",
    api=1,
    summary="Decoder-only Transformer language model (Radford et al., 2019): pre-norm, causal attention, KV-cache sampling",
    config="zoo_gpt.model:GPTConfig",
    variants={
        # 4 layers, 256 wide, 4 heads, context 128: 3.25M parameters, the CPU-sized char model.
        "char-4x256": {"layers": 4, "width": 256, "heads": 4, "context": 128},
        # 6 layers, 384 wide, 6 heads, context 256: 10.8M parameters, for the <= 1.25 nats/char target.
        "char-6x384": {"layers": 6, "width": 384, "heads": 6, "context": 256},
        # GPT-2 small: 12 layers, 768 wide, 12 heads, context 1024, GPT-2's 50257-token vocabulary
        # (50304 embedding rows): 124M parameters. What the GPU benchmark trains.
        "gpt2-124m": {"layers": 12, "width": 768, "heads": 12, "context": 1024, "vocab_size": 50257},
    },
    build="zoo_gpt.model:build",
    train="zoo_gpt.train:train",
    sample="zoo_gpt.decode:sample",
    evaluate="zoo_gpt.train:evaluate",
    datasets=("shakespeare",),
    metric=("nats_per_char", "min"),
)
