"""A small Transformer for text, built from keras-hub layers, and its WordPiece tokenizer."""

from __future__ import annotations

from pathlib import Path

import keras

from pretrainer.config import TransformerConfig

RESERVED = ["[PAD]", "[UNK]", "[MASK]", "[BOS]", "[EOS]"]  # [PAD] must stay id 0
PAD, UNK, MASK = 0, 1, 2


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


def train_vocabulary(texts_ds, size: int) -> list[str]:
    """WordPiece vocabulary learned from a dataset of (batches of) strings.

    Trained by Hugging Face's Rust `tokenizers` (a keras-hub dependency) with BERT's
    normalisation and pre-tokenisation, lowercased and "##" continuations as
    keras-hub's WordPieceTokenizer reads them. Not keras_hub's
    compute_word_piece_vocabulary: on 30k short texts it took 77 s for half of them,
    this 1.7 s for all, with slightly fewer tokens per text and no [UNK] either way.
    Reserved tokens come first, in RESERVED's order ([PAD] is id 0), then the rest sorted.
    The trainer breaks ties between merges of equal count in hash order, so a fresh run
    may differ in a few tokens at the size cut (4 of 2,000 on the bundled fortunes);
    a resumed run reuses the saved vocab.txt.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    from pretrainer.console import progress

    def strings(advance):
        for batch in texts_ds.as_numpy_iterator():
            batch = batch if getattr(batch, "ndim", 0) else [batch]
            advance(len(batch))
            yield [t.decode("utf-8", "replace") for t in batch]

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=False,
                                                clean_text=True, handle_chinese_chars=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=size, special_tokens=list(RESERVED),
                                        continuing_subword_prefix="##", show_progress=False)
    with progress("WordPiece vocabulary", None, "texts") as advance:
        tok.train_from_iterator(strings(advance), trainer)
    # ids in sorted order: the trainer numbers tokens of equal count in hash order, which
    # differs from run to run; WordPiece matches by string, so the order is free
    learned = sorted(set(tok.get_vocab()) - set(RESERVED))
    return list(RESERVED) + learned


FIT_QUANTILE = 99.0  # backbone.fit_length: the share of the pool's texts that fit uncut


def fitted_length(vocab: list[str], texts_ds, most: int) -> int:
    """Tokens per text for backbone.fit_length: the FIT_QUANTILE percentile of the token
    counts of `texts_ds` (batches of strings) under `vocab`, rounded up to a multiple of
    8, between 8 and `most`."""
    import numpy as np

    tok = tokenizer(vocab, None)
    counts = texts_ds.map(lambda t: tok(t).row_lengths())  # graph mode: ragged ids
    lengths = np.concatenate([np.asarray(c) for c in counts.as_numpy_iterator()] or [[0]])
    need = int(np.ceil(np.percentile(lengths, FIT_QUANTILE) / 8.0) * 8)
    return int(min(most, max(8, need)))


def tokenizer(vocab: list[str], sequence_length: int):
    import keras_hub

    # dtype int32 explicitly: under the float32 default policy the saved config would say
    # float32, which the tokenizer refuses when the model is loaded again
    return keras_hub.tokenizers.WordPieceTokenizer(vocabulary=vocab, lowercase=True,
                                                   sequence_length=sequence_length,
                                                   dtype="int32", name="tokenizer")


def save_vocabulary(vocab: list[str], path: Path) -> None:
    from pretrainer.files import atomic_write_text

    atomic_write_text(path, "\n".join(vocab) + "\n")


def load_vocabulary(path: Path) -> list[str]:
    return Path(path).read_text(encoding="utf-8").split("\n")[:-1]
