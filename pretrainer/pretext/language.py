"""Language-model pretexts on the transformer backbone: causal_lm and masked_lm."""

from __future__ import annotations

import keras
from keras import ops

from pretrainer.config import BackboneConfig, PretextConfig


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


def build_causal_lm(backbone: keras.Model, cfg: PretextConfig, backbone_cfg: BackboneConfig,
                    seed: int, **compile_kwargs) -> keras.Model:
    """Next-token prediction: ids -> causal transformer -> logits over the vocabulary."""
    inputs = keras.Input(shape=backbone.input_shape[1:], dtype="int32", name="token_ids")
    logits = keras.layers.Dense(backbone_cfg.vocabulary_size, dtype="float32",
                                name="lm_head")(backbone(inputs))
    model = keras.Model(inputs, logits, name="causal_lm")
    model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate), loss=token_loss,
                  metrics=[Perplexity()], **compile_kwargs)
    return model


def build_masked_lm(backbone: keras.Model, cfg: PretextConfig, backbone_cfg: BackboneConfig,
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


def masked_targets(vocabulary_size: int, sequence_length: int, mask_rate: float = 0.15,
                   seed: int = 0):
    """A tf.data map: ids -> ({masked ids, positions}, hidden ids, -1 where unused).

    BERT's recipe: each real token is chosen with probability `mask_rate` (at most
    round(sequence_length x mask_rate) per text), a chosen one becomes [MASK] 8 times in
    10, a random token once and stays once. The draws are stateless, seeded by `seed` and
    a fingerprint of the batch, so a batch gets the same masks whenever it comes: a
    resumed run trains on exactly the uninterrupted run's targets, and every validation
    pass scores the same masks. (keras-hub's MaskedLMMaskGenerator draws from Python's
    and TensorFlow's global random state: two runs with one seed masked differently.)
    """
    import tensorflow as tf

    from pretrainer.models.transformer import MASK, PAD, RESERVED

    most = max(1, int(round(sequence_length * mask_rate)))
    base = tf.constant([int(seed), 0x6D6C6D], tf.int64)

    def fn(ids):
        ids = tf.cast(ids, tf.int32)
        key = tf.bitcast(tf.fingerprint(tf.reshape(ids, [1, -1]))[0], tf.int64)
        draw = tf.random.experimental.stateless_fold_in(base, key)
        u = tf.where(ids != PAD, tf.random.stateless_uniform(tf.shape(ids), seed=draw), 2.0)
        k = tf.minimum(most, tf.shape(ids)[1])
        positions = tf.sort(tf.math.top_k(-u, k).indices, axis=1)  # the smallest draws
        chosen = tf.gather(u, positions, batch_dims=1) < mask_rate
        hidden = tf.gather(ids, positions, batch_dims=1)
        how = tf.random.stateless_uniform(tf.shape(positions),
                                          seed=tf.random.experimental.stateless_fold_in(draw, 1))
        other = tf.random.stateless_uniform(tf.shape(positions),
                                            seed=tf.random.experimental.stateless_fold_in(draw, 2),
                                            minval=len(RESERVED), maxval=vocabulary_size,
                                            dtype=tf.int32)
        shown = tf.where(how < 0.8, MASK, tf.where(how < 0.9, other, hidden))
        rows = tf.broadcast_to(tf.range(tf.shape(ids)[0])[:, None], tf.shape(positions))
        masked = tf.tensor_scatter_nd_update(
            ids, tf.stack([rows, positions], axis=-1), tf.where(chosen, shown, hidden))
        return ({"token_ids": masked, "mask_positions": positions},
                tf.where(chosen, hidden, -1))

    return fn
