"""Catalog captioning datasets (e.g. TFDS ``coco_captions``) read through ``tfds.data_source``.

For users with internet: ``load_catalog_captions("coco_captions", "train")`` downloads and
prepares the dataset as array_record on first use (COCO is ~38 GiB of images; TFDS needs
TensorFlow to *prepare* it, not to read it) and returns a random-access source whose records
have the catalog's structure::

    image      uint8 [height, width, 3]   (any size; resized here)
    captions   {"text": bytes [num_refs], "id": int64 [num_refs]}
    image/id   int64

Nothing here is needed by the tests on the embedded ``shapes_captions``: they replace
``tfds.data_source`` by a small fake source of the same structure.

:class:`CaptionVocabulary` maps words to ids (the reserved pad/bos/eos/unk first, as
:class:`attention_jax.data.shapes_captions.WordTokenizer`), built from training captions;
:class:`CatalogCaptions` reads images (centre-cropped and resized to a square) and references
lazily, so the dataset never has to fit in memory.
"""

from __future__ import annotations

import collections
import os
import re
from typing import Iterable, Sequence

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from attention_jax.data import shapes_captions
from attention_jax.data.tokenizers import BOS_ID, EOS_ID, UNK_ID

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def caption_words(text: str | bytes) -> list[str]:
  """Lower-cased words of a caption, punctuation dropped: ``"A dog, running."`` ->
  ``["a", "dog", "running"]``."""
  text = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
  return _WORD.findall(text.lower())


class CaptionVocabulary(shapes_captions.WordTokenizer):
  """Word ids: 0-3 reserved (pad, bos, eos, unk), then ``words`` in the given order.

  ``shapes_captions.WordTokenizer`` (``tokens``, ``decode``, ``vocab_size``) for a vocabulary
  built from data; captions are split into lower-case words by :func:`caption_words`.
  """

  def __init__(self, words: Sequence[str]):
    self.words = ("<pad>", "<bos>", "<eos>", "<unk>", *words)
    if len(set(self.words)) != len(self.words):
      raise ValueError("words must be distinct and must not repeat the reserved tokens")
    self.vocab_size = len(self.words)
    self._ids = {w: i for i, w in enumerate(self.words)}

  @classmethod
  def build(cls, captions: Iterable[str | bytes], max_size: int,
            min_count: int = 1) -> "CaptionVocabulary":
    """The ``max_size - 4`` most frequent words seen at least ``min_count`` times (ties broken
    alphabetically, so the vocabulary is deterministic)."""
    if max_size <= 4:
      raise ValueError(f"max_size must exceed the 4 reserved tokens, got {max_size}")
    counts = collections.Counter(w for c in captions for w in caption_words(c))
    ranked = sorted((w for w, n in counts.items() if n >= min_count),
                    key=lambda w: (-counts[w], w))
    return cls(ranked[:max_size - 4])

  def encode(self, text: str | bytes, add_bos: bool = False, add_eos: bool = False) -> list[int]:
    ids = [self._ids.get(w, UNK_ID) for w in caption_words(text)]
    return [BOS_ID] * add_bos + ids + [EOS_ID] * add_eos


def load_catalog_captions(name: str, split: str, data_dir: str | os.PathLike | None = None):
  """``tfds.data_source(name, split=split)`` prepared as array_record (downloads on first use)."""
  return tfds.data_source(name, split=split, data_dir=data_dir,
                          builder_kwargs={"file_format": "array_record"})


def square_resize(image, size: int) -> np.ndarray:
  """``image uint8 [H, W, 3]`` (or ``[H, W]``) -> the centred square crop resized (bilinear) to
  ``uint8 [size, size, 3]``."""
  image = np.asarray(image)
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=-1)
  if image.ndim != 3 or image.shape[-1] not in (1, 3):
    raise ValueError(f"image must be [height, width, 3], got shape {image.shape}")
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  h, w = image.shape[:2]
  side = min(h, w)
  top, left = (h - side) // 2, (w - side) // 2
  crop = Image.fromarray(image[top:top + side, left:left + side].astype(np.uint8))
  return np.asarray(crop.resize((size, size), Image.BILINEAR), np.uint8)


class CatalogCaptions:
  """A split of a catalog dataset, read lazily: ``len``, ``images(rows)``, ``references(rows)``.

  Args:
    source: a random-access source of records with ``image`` and ``captions/text``.
    image_size: the square side images are resized to.
  """

  def __init__(self, source, image_size: int):
    self.source = source
    self.image_size = image_size

  def __len__(self) -> int:
    return len(self.source)

  def record(self, index: int):
    record = self.source[int(index)]
    if "image" not in record or "captions" not in record or "text" not in record["captions"]:
      raise ValueError(f"record {index} must have 'image' and 'captions/text', got keys "
                       f"{sorted(record)}")
    return record

  def read(self, rows: Sequence[int]) -> tuple[np.ndarray, list[list[str]]]:
    """``(images uint8 [len(rows), image_size, image_size, 3], references)``, the references
    every caption (decoded text) of each row; each record is read once."""
    records = [self.record(i) for i in rows]
    if not records:
      raise ValueError("rows must name at least one record")
    images = np.stack([square_resize(r["image"], self.image_size) for r in records])
    return images, [_texts(r) for r in records]

  def images(self, rows: Sequence[int]) -> np.ndarray:
    """``uint8 [len(rows), image_size, image_size, 3]``."""
    return self.read(rows)[0]

  def references(self, rows: Sequence[int]) -> list[list[str]]:
    """Every reference caption of each row, without resizing the images."""
    return [_texts(self.record(i)) for i in rows]


def _texts(record) -> list[str]:
  return [t.decode("utf-8", "replace") if isinstance(t, bytes) else str(t)
          for t in np.atleast_1d(record["captions"]["text"])]
