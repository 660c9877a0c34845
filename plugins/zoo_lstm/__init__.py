"""The LSTM plugin: stacked LSTM character language models.

Light on purpose: ``zoo list`` imports this module; the model code is named by reference.
"""

from zoo.plugin import Plugin

plugin = Plugin(
    name="lstm",
    api=1,
    summary="Stacked LSTM character language model (Hochreiter & Schmidhuber, 1997), scanned over time",
    config="zoo_lstm.model:LSTMConfig",
    variants={
        # 2 layers of 512 units over 64-d byte embeddings, 128 steps of BPTT: 3.4M parameters.
        "char-2x512": {"layers": 2, "hidden": 512, "embed": 64, "context": 128},
        # 1 layer of 256 units: 0.4M parameters, a quick CPU baseline.
        "char-1x256": {"layers": 1, "hidden": 256, "embed": 64, "context": 128},
    },
    build="zoo_lstm.model:build",
    train="zoo_lstm.train:train",
    sample="zoo_lstm.decode:sample",
    evaluate="zoo_lstm.train:evaluate",
    datasets=("shakespeare",),
    metric=("nats_per_char", "min"),
)
