"""Text: stored as UTF-8 strings; the model takes raw strings and holds its WordPiece
tokenizer as a layer, so training, the SavedModel and `serve` tokenize the same way.
The vocabulary is learned here (fit), written beside the run as vocab.txt (save) and
read back (load) by pretrain, finetune, evaluate and embed alike."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from pretrainer.data.modalities.base import Modality

RESERVED = ["[PAD]", "[UNK]", "[MASK]", "[BOS]", "[EOS]"]  # [PAD] must stay id 0
PAD, UNK, MASK = 0, 1, 2
FIT_QUANTILE = 99.0  # backbone.fit_length: the share of the pool's texts that fit uncut
VOCAB_FILE = "vocab.txt"


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


def fitted_length(vocab: list[str], texts_ds, most: int) -> int:
    """Tokens per text for backbone.fit_length: the FIT_QUANTILE percentile of the token
    counts of `texts_ds` (batches of strings) under `vocab`, rounded up to a multiple of
    8, between 8 and `most`."""
    tok = tokenizer(vocab, None)
    counts = texts_ds.map(lambda t: tok(t).row_lengths())  # graph mode: ragged ids
    lengths = np.concatenate([np.asarray(c) for c in counts.as_numpy_iterator()] or [[0]])
    need = int(np.ceil(np.percentile(lengths, FIT_QUANTILE) / 8.0) * 8)
    return int(min(most, max(8, need)))


def tokenizer(vocab: list[str], sequence_length):
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


def run_vocabulary(run_dir: Path, pool: Callable, size: int) -> list[str]:
    """The run's vocabulary: its vocab.txt when there is one (a resumed run keeps the
    same tokens), else learned from `pool()` (batches of the unlabeled split's strings)
    and saved there first."""
    path = Path(run_dir) / VOCAB_FILE
    if path.is_file():
        return load_vocabulary(path)
    vocab = train_vocabulary(pool(), size)
    save_vocabulary(vocab, path)
    return vocab


def as_strings(x) -> list[str]:
    """Stored text examples (bytes or str) as Python strings."""
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
            for v in np.asarray(x, dtype=object).reshape(-1)]


class TextModality(Modality):
    def example_features(self, row) -> dict:
        import tensorflow as tf

        return {"text": tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[str(row).encode("utf-8")]))}

    def record_shape(self, x_pool) -> list[int]:
        return []

    def entry_spec(self, manifest) -> dict:
        return {"saved_model": {"serving_default": {
            "text": "string [batch]: raw UTF-8 text; the WordPiece tokenizer is in the graph "
                    "(needs TensorFlow Text's ops, linked into stock TF Serving)"}}}

    def signatures(self, model, manifest, outputs) -> dict:
        import tensorflow as tf

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def serve_text(text):
            return outputs(model(text, training=False))

        return {"serving_default": serve_text}

    def client_inputs(self, manifest, x, fmt: str) -> dict:
        return {"text": np.array(as_strings(x))}

    def card_input(self, manifest) -> str:
        return "raw text strings (WordPiece tokenizer inside the model)"

    def card_usage(self, name: str, manifest) -> list[str]:
        return ["Input: raw text (UTF-8); the tokenizer is inside the graph.", "", "```bash",
                f"curl -s localhost:8501/v1/models/{name}:predict -d "
                "'{\"instances\": [\"some text to classify\"]}'", "```", ""]

    def classical_describe(self, regression: bool) -> str:
        return "TF-IDF (word 1-2 + char 2-5 grams) + logistic regression"

    def classical_features(self, x):
        return as_strings(x)

    def classical_candidates(self, regression: bool, n: int, c_grid) -> list:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline, make_union

        def features():
            return make_union(
                TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1),
                TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True,
                                min_df=2))
        return [(f"C={c:g}", make_pipeline(features(), LogisticRegression(C=c, max_iter=2000)))
                for c in c_grid]


TEXT = TextModality(
    name="text", stored={"text": "UTF-8 bytes"}, dtype="string",
    user_input="a text file, one example per line", input_kind="text",
    predict_signature=("serving_default", "text"), card_tag="text-classification",
    tensor_name="text", formats=("saved_model",), classical_exact=True,
    formats_why="LiteRT and ONNX cannot carry the WordPiece tokenizer's ops. Use "
                "deploy=text", fixed_shape=False, strings=True,
    card_call="text=tf.constant([\"...\"])",
    card_imports=("import tensorflow_text  # registers the tokenizer's ops",))
