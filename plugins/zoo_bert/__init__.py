"""The BERT plugin: a Transformer encoder pretrained with masked LM and next-sentence prediction, and fill-mask.

Light on purpose: ``zoo list`` imports this module; the model code is named by reference.
"""

from zoo.plugin import Plugin

SHAPES = {
    # BERT-mini's shape (Turc et al., 2019): 4 layers, 256 wide, 4 heads, context 128, a 4096-token
    # byte-level BPE, rotary positions: 4.3M parameters, the CPU-sized default.
    "mini": {"layers": 4, "width": 256, "heads": 4, "context": 128, "vocab_size": 4096, "positions": "rotary"},
    # BERT-tiny's shape: 2 layers, 128 wide, 2 heads, rotary positions: 0.96M parameters (half are
    # embeddings), quick experiments.
    "tiny": {"layers": 2, "width": 128, "heads": 2, "context": 128, "vocab_size": 4096, "positions": "rotary"},
    # BERT-base: 12 layers, 768 wide, 12 heads, context 512, BERT's 30522-token vocabulary and learned
    # positions: 110M parameters, BERT's count. Its tokenizer JSON is about 0.8 MB, hence the larger buffer.
    "bert-base": {
        "layers": 12, "width": 768, "heads": 12, "context": 512, "vocab_size": 30522, "tokenizer_capacity": 1 << 21,
    },
}

plugin = Plugin(
    name="bert",
    api=(1, 2),  # 1.2: predict returns ranked candidates (one slot per [MASK])
    summary="Transformer encoder (Devlin et al., 2019): masked LM + next-sentence pretraining, byte-level BPE, fill-mask",
    config="zoo_bert.model:BertConfig",
    variants=SHAPES,
    build="zoo_bert.model:build",
    train="zoo_bert.train:train",
    predict="zoo_bert.predict:predict",
    evaluate="zoo_bert.train:evaluate",
    datasets=("shakespeare",),
    metric=("mlm_accuracy", "max"),
)

classifier_plugin = Plugin(
    name="bert-classifier",
    api=1,
    summary="BERT encoder fine-tuned to classify texts: --init-from a pretrained bert model, or from scratch",
    config="zoo_bert.model:BertConfig",
    # The shapes of bert's variants, with a 4-way head (shakespeare-genre's classes; --set num_classes=K otherwise).
    variants={name: shape | {"num_classes": 4} for name, shape in SHAPES.items()},
    build="zoo_bert.model:build",
    train="zoo_bert.classifier:train",
    predict="zoo_bert.classifier:predict",
    evaluate="zoo_bert.classifier:evaluate",
    datasets=("shakespeare-genre",),
    metric=("accuracy", "max"),
    replaceable=("classifier",),  # the task head: --init-from a pretrained bert model starts it afresh
)
