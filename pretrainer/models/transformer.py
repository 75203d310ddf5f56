"""A small Transformer for text, built from keras-hub layers (its WordPiece tokenizer and
vocabulary are the text modality's: `pretrainer.data.modalities.text`)."""

from __future__ import annotations

import keras

from pretrainer.config import TransformerConfig
from pretrainer.data.modalities.text import PAD


@keras.saving.register_keras_serializable(package="pretrainer")
class PaddingMask(keras.layers.Layer):
    """True where a token id is not [PAD] (id 0). Kept only so models saved before
    `padding_mask` existed still load; new models use `padding_mask`, a Keras op that
    `keras.saving.load_model` restores without importing pretrainer."""

    def call(self, ids):
        return keras.ops.not_equal(ids, PAD)

    def compute_output_shape(self, input_shape):
        return input_shape


def padding_mask(ids):
    """True where a token id is not [PAD] (id 0): a plain Keras op in the functional graph."""
    return keras.ops.not_equal(ids, PAD)


def transformer(input_shape: tuple[int, ...], cfg: TransformerConfig) -> keras.Model:
    """Token ids (batch, sequence_length) -> contextual embeddings (batch, length, latent_dim).

    `backbone.causal=true` stacks TransformerDecoder blocks with a causal mask (GPT-style,
    for causal_lm); otherwise TransformerEncoder blocks (BERT-style, for masked_lm).
    Padding (id 0) is masked throughout.
    """
    import keras_hub

    if tuple(input_shape) not in ((cfg.sequence_length,), (None,)):
        raise ValueError(f"transformer: input_shape {tuple(input_shape)} differs from "
                         f"backbone.sequence_length={cfg.sequence_length}")
    # (None,): any length up to sequence_length (pretraining on batches cut to their
    # longest text); the saved backbone takes exactly sequence_length (fixed_length)
    inputs = keras.Input(shape=tuple(input_shape), dtype="int32", name="token_ids")
    # An explicit padding mask, not mask_zero: an implicit Keras mask would follow the
    # outputs into the losses and metrics and be applied there a second time.
    padding = padding_mask(inputs)
    x = keras_hub.layers.TokenAndPositionEmbedding(
        vocabulary_size=cfg.vocabulary_size, sequence_length=cfg.sequence_length,
        embedding_dim=cfg.latent_dim, name="embedding")(inputs)
    for i in range(cfg.num_layers):
        if cfg.causal:
            x = keras_hub.layers.TransformerDecoder(cfg.intermediate_dim, cfg.num_heads,
                                                    dropout=0.1, name=f"block{i}")(
                x, decoder_padding_mask=padding)
        else:
            x = keras_hub.layers.TransformerEncoder(cfg.intermediate_dim, cfg.num_heads,
                                                    dropout=0.1, name=f"block{i}")(
                x, padding_mask=padding)
    x = keras.layers.LayerNormalization(epsilon=1e-5, name="final_norm")(x)
    return keras.Model(inputs, x, name="transformer")


def fixed_length(backbone: keras.Model, cfg: TransformerConfig) -> keras.Model:
    """The transformer `backbone` (built for any length) rebuilt for inputs of exactly
    cfg.sequence_length tokens, with the same weights: the shape finetuning, exports and
    older runs expect."""
    fixed = transformer((cfg.sequence_length,), cfg)
    fixed.set_weights(backbone.get_weights())
    return fixed
