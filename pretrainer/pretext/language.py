"""Language-model pretexts on the transformer backbone: causal_lm and masked_lm."""

from __future__ import annotations

import keras
from keras import ops

from pretrainer.config import PretextConfig, TransformerConfig


def token_loss(y_true, logits):
    """Mean cross-entropy over the real targets of each example (targets < 0 are ignored).

    A pure function: per-example losses, so padding never dilutes the mean and
    exp(loss) is the per-token perplexity.
    """
    y_true = ops.cast(y_true, "int32")
    mask = ops.cast(y_true >= 0, "float32")
    ce = keras.losses.sparse_categorical_crossentropy(ops.maximum(y_true, 0),
                                                      ops.cast(logits, "float32"),
                                                      from_logits=True)
    return ops.sum(ce * mask, axis=-1) / ops.maximum(ops.sum(mask, axis=-1), 1.0)


class Perplexity(keras.metrics.Mean):
    """exp of the mean token loss over the epoch (the number the closing line prints).
    A plain metric function would average exp(loss) per example, which a few badly
    predicted short texts dominate: 1002 where exp(mean loss) was 93."""

    def __init__(self, name: str = "perplexity", **kwargs):
        super().__init__(name=name, **kwargs)

    def update_state(self, y_true, logits, sample_weight=None):
        return super().update_state(token_loss(y_true, logits), sample_weight=sample_weight)

    def result(self):
        return ops.exp(ops.minimum(super().result(), 50.0))

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype}


def build_causal_lm(backbone: keras.Model, cfg: PretextConfig, backbone_cfg: TransformerConfig,
                    seed: int, **compile_kwargs) -> keras.Model:
    """Next-token prediction: ids -> causal transformer -> logits over the vocabulary."""
    inputs = keras.Input(shape=backbone.input_shape[1:], dtype="int32", name="token_ids")
    logits = keras.layers.Dense(backbone_cfg.vocabulary_size, dtype="float32",
                                name="lm_head")(backbone(inputs))
    model = keras.Model(inputs, logits, name="causal_lm")
    model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate), loss=token_loss,
                  metrics=[Perplexity()], **compile_kwargs)
    return model


def build_masked_lm(backbone: keras.Model, cfg: PretextConfig, backbone_cfg: TransformerConfig,
                    seed: int, **compile_kwargs) -> keras.Model:
    """Predict the ids hidden at the masked positions (BERT-style)."""
    import keras_hub

    ids = keras.Input(shape=backbone.input_shape[1:], dtype="int32", name="token_ids")
    positions = keras.Input(shape=(None,), dtype="int32", name="mask_positions")
    head = keras_hub.layers.MaskedLMHead(vocabulary_size=backbone_cfg.vocabulary_size,
                                         activation=None, dtype="float32", name="mlm_head")
    logits = head(backbone(ids), mask_positions=positions)
    model = keras.Model({"token_ids": ids, "mask_positions": positions}, logits,
                        name="masked_lm")
    model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate), loss=token_loss,
                  metrics=[Perplexity()], **compile_kwargs)
    return model


def causal_targets(ids):
    """(ids, next ids) with -1 where there is no next token (padding, the last position)."""
    import tensorflow as tf

    nxt = tf.concat([ids[:, 1:], tf.zeros_like(ids[:, :1])], axis=1)
    return ids, tf.where(nxt > 0, nxt, -1)


def masked_targets(vocabulary_size: int, sequence_length: int, mask_rate: float = 0.15):
    """A tf.data map: ids -> ({masked ids, positions}, hidden ids, -1 where unused).

    keras-hub's MaskedLMMaskGenerator, which draws from TensorFlow's global random state:
    two runs mask differently and a resumed MLM run does not end bit-identical to an
    uninterrupted one (the other pretexts do). A stateless BERT-style masker (15 % of the
    tokens, keyed by the seed and the batch) was tried and trained a worse model: after 10
    epochs on 32k short lines, perplexity 64.5 against 46.7 on the same masks (51.1 at
    20 %); inside tf.data this generator hides ~18 % of the tokens (docs/architecture.md).
    """
    import keras_hub
    import tensorflow as tf

    from pretrainer.data.modalities.text import MASK, PAD

    length = max(1, int(round(sequence_length * mask_rate)))
    gen = keras_hub.layers.MaskedLMMaskGenerator(
        vocabulary_size=vocabulary_size, mask_selection_rate=mask_rate, mask_token_id=MASK,
        mask_selection_length=length, unselectable_token_ids=[PAD])

    def fn(ids):
        out = gen(ids)
        target = tf.where(out["mask_weights"] > 0, tf.cast(out["mask_ids"], tf.int32), -1)
        return ({"token_ids": tf.cast(out["token_ids"], tf.int32),
                 "mask_positions": tf.cast(out["mask_positions"], tf.int32)}, target)

    return fn
