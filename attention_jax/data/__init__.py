"""Embedded datasets (TFDS builders written as array_record), tokenizers and grain pipelines."""

from attention_jax.data.dates import (
    DatesConfig,
    DatesTranslation,
    dates_builder,
    decode_example,
    load_dates,
)
from attention_jax.data.packing import packed_lm_batches, padded_lm_batches, padding_fraction
from attention_jax.data.pipeline import (
    EvalBatches,
    Seq2SeqEncoder,
    TrainBatches,
    build_char_tokenizer,
    eval_batches,
    make_train_batches,
    required_lengths,
)
from attention_jax.data.shapes_captions import (
    ShapesCaptions,
    ShapesCaptionsConfig,
    WordTokenizer,
    load_shapes_captions,
    shapes_captions_builder,
)
from attention_jax.data.tokenizers import BOS_ID, EOS_ID, PAD_ID, UNK_ID, CharTokenizer

__all__ = [
    "BOS_ID",
    "EOS_ID",
    "PAD_ID",
    "UNK_ID",
    "CharTokenizer",
    "DatesConfig",
    "DatesTranslation",
    "EvalBatches",
    "Seq2SeqEncoder",
    "ShapesCaptions",
    "ShapesCaptionsConfig",
    "TrainBatches",
    "WordTokenizer",
    "build_char_tokenizer",
    "dates_builder",
    "decode_example",
    "eval_batches",
    "load_dates",
    "load_shapes_captions",
    "packed_lm_batches",
    "padded_lm_batches",
    "padding_fraction",
    "make_train_batches",
    "required_lengths",
    "shapes_captions_builder",
]
