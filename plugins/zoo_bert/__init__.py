"""The BERT plugin: a Transformer encoder pretrained with masked LM and next-sentence prediction, and fill-mask.

Light on purpose: ``zoo list`` imports this module; the model code is named by reference.
"""

from zoo.plugin import Plugin

plugin = Plugin(
    name="bert",
    api=(1, 2),  # 1.2: predict returns ranked candidates (one slot per [MASK])
    summary="Transformer encoder (Devlin et al., 2019): masked LM + next-sentence pretraining, byte-level BPE, fill-mask",
    config="zoo_bert.model:BertConfig",
    variants={
        # BERT-mini's shape (Turc et al., 2019): 4 layers, 256 wide, 4 heads, context 128, a 4096-token
        # byte-level BPE: 4.3M parameters, the CPU-sized default.
        "mini": {"layers": 4, "width": 256, "heads": 4, "context": 128, "vocab_size": 4096},
        # BERT-tiny's shape: 2 layers, 128 wide, 2 heads: 0.85M parameters, for quick experiments.
        "tiny": {"layers": 2, "width": 128, "heads": 2, "context": 128, "vocab_size": 4096},
        # BERT-base: 12 layers, 768 wide, 12 heads, context 512, BERT's 30522-token vocabulary:
        # 110M parameters. Its tokenizer JSON is about 0.8 MB, hence the larger buffer.
        "bert-base": {
            "layers": 12, "width": 768, "heads": 12, "context": 512, "vocab_size": 30522, "tokenizer_capacity": 1 << 21,
        },
    },
    build="zoo_bert.model:build",
    train="zoo_bert.train:train",
    predict="zoo_bert.predict:predict",
    evaluate="zoo_bert.train:evaluate",
    datasets=("shakespeare",),
    metric=("mlm_accuracy", "max"),
)
