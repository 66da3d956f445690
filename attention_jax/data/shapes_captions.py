"""Shapes captions: synthetic images of 1-4 coloured shapes, a caption, and every object's box.

An embedded TFDS dataset for image captioning with attention that can be *checked*: every
object a caption names comes with its bounding box, so the attention of the word that names it
can be scored (how much of its mass falls inside the box).

Images are ``IMAGE_SIZE x IMAGE_SIZE`` RGB (uint8) over a dark, slightly noisy background. Each
holds 1-4 objects, each a ``SIZES`` x ``COLOURS`` x ``SHAPES`` combination (2 x 4 x 3 = 24 kinds)
drawn at a random position; the boxes of two objects never touch (a 2-pixel gap) and their
centres differ by at least ``MIN_DX`` pixels horizontally, so "left of" is never ambiguous.
The caption names the objects from left to right in a fixed grammar::

    a large red circle
    a small blue square left of a large yellow triangle
    a small green circle left of a small red circle left of a large blue square

Records (fixed shapes, objects in caption order, padded to ``MAX_OBJECTS``)::

    image     uint8 [IMAGE_SIZE, IMAGE_SIZE, 3]
    caption   text
    num_objects  int32 scalar in 1..4
    objects   int32 [MAX_OBJECTS, 3]  (size, colour, shape) indices into SIZES, COLOURS, SHAPES
    boxes     int32 [MAX_OBJECTS, 4]  (ymin, xmin, ymax, xmax), ``ymax``/``xmax`` exclusive: the
              tight box of the object's pixels (padding rows are zeros)

Splits: a scene (its objects and positions) goes to train, validation or test by
``blake2b(scene) mod 100`` (0-89 / 90-94 / 95-99), so test images never occur in training. Each
split draws from its own NumPy generator seeded with ``(config.seed, split index)``: generation
is deterministic and the same on every machine.

``load_shapes_captions("train")`` prepares the dataset on first use (array_record, no
TensorFlow) and returns a ``tfds`` random-access data source; ``load_arrays`` stacks a split into
NumPy arrays (the datasets are small).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Iterator, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from attention_jax.data import stamped
from attention_jax.data.tokenizers import BOS_ID, EOS_ID, NUM_RESERVED, PAD_ID, UNK_ID

IMAGE_SIZE = 48
MAX_OBJECTS = 4
MIN_DX = 3
GAP = 2
SIZES = ("small", "large")
SIZE_PIXELS = {"small": 10, "large": 16}
COLOURS = ("red", "green", "blue", "yellow")
COLOUR_RGB = {"red": (225, 45, 40), "green": (40, 185, 65), "blue": (55, 95, 235),
              "yellow": (235, 215, 45)}
SHAPES = ("circle", "square", "triangle")
RELATION = "left of"
#: Every word of the grammar; ``WordTokenizer`` ids are ``NUM_RESERVED + index``.
VOCABULARY = ("a", *SIZES, *COLOURS, *SHAPES, "left", "of")
#: The words that name an object (the ones attention localisation scores).
CONTENT_WORDS = frozenset((*SIZES, *COLOURS, *SHAPES))
SPLITS = ("train", "validation", "test")
_BUCKETS = {"train": range(0, 90), "validation": range(90, 95), "test": range(95, 100)}


@dataclasses.dataclass(frozen=True)
class SceneObject:
  """One object: attribute names and its top-left corner (row, column) in pixels."""

  size: str
  colour: str
  shape: str
  top: int
  left: int

  @property
  def extent(self) -> int:
    return SIZE_PIXELS[self.size]

  @property
  def phrase(self) -> str:
    return f"a {self.size} {self.colour} {self.shape}"


def shape_mask(shape: str, extent: int) -> np.ndarray:
  """bool ``[extent, extent]``: the pixels of a shape inside its square; touches all four sides."""
  ys, xs = np.mgrid[0:extent, 0:extent] + 0.5
  if shape == "square":
    return np.ones((extent, extent), bool)
  if shape == "circle":
    r = extent / 2
    return (ys - r) ** 2 + (xs - r) ** 2 <= r * r + 0.25 * extent
  if shape == "triangle":  # apex at the top centre, base along the bottom row
    half_width = 0.5 * extent * ys / extent + 0.5
    return np.abs(xs - extent / 2) <= half_width
  raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")


def render(objects: Sequence[SceneObject], noise_seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Draws a scene.

  Returns:
    ``(image uint8 [IMAGE_SIZE, IMAGE_SIZE, 3], boxes int32 [len(objects), 4])``, each box the
    tight ``(ymin, xmin, ymax, xmax)`` (exclusive max) of the pixels the object coloured.
  """
  rng = np.random.default_rng(noise_seed)
  image = rng.integers(10, 40, (IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.uint8)
  boxes = np.zeros((len(objects), 4), np.int32)
  for i, obj in enumerate(objects):
    mask = shape_mask(obj.shape, obj.extent)
    if obj.top < 0 or obj.left < 0 or max(obj.top, obj.left) + obj.extent > IMAGE_SIZE:
      raise ValueError(f"object {i} ({obj}) does not fit in a {IMAGE_SIZE}-pixel image")
    region = image[obj.top:obj.top + obj.extent, obj.left:obj.left + obj.extent]
    region[mask] = COLOUR_RGB[obj.colour]
    ys, xs = np.nonzero(mask)
    boxes[i] = (obj.top + ys.min(), obj.left + xs.min(), obj.top + ys.max() + 1,
                obj.left + xs.max() + 1)
  return image, boxes


def caption(objects: Sequence[SceneObject]) -> str:
  """The caption: the objects' phrases from left to right joined by "left of"."""
  ordered = sorted(objects, key=lambda o: o.left + o.extent / 2)
  return f" {RELATION} ".join(o.phrase for o in ordered)


def parse_caption(text: str) -> list[tuple[str, str, str]] | None:
  """``(size, colour, shape)`` per phrase of a caption, or None if it breaks the grammar."""
  phrases = text.split(f" {RELATION} ")
  out = []
  for phrase in phrases:
    words = phrase.split()
    if (len(words) != 4 or words[0] != "a" or words[1] not in SIZES or words[2] not in COLOURS
        or words[3] not in SHAPES):
      return None
    out.append(tuple(words[1:]))
  return out if 1 <= len(out) <= MAX_OBJECTS else None


def _separated(a: SceneObject, b: SceneObject) -> bool:
  apart = (a.top + a.extent + GAP <= b.top or b.top + b.extent + GAP <= a.top
           or a.left + a.extent + GAP <= b.left or b.left + b.extent + GAP <= a.left)
  centres_apart = abs((a.left + a.extent / 2) - (b.left + b.extent / 2)) >= MIN_DX
  return apart and centres_apart


def sample_scene(rng: np.random.Generator) -> list[SceneObject]:
  """1-4 objects (uniform count) at random non-touching positions, in left-to-right order."""
  while True:
    count = int(rng.integers(1, MAX_OBJECTS + 1))
    objects: list[SceneObject] = []
    for _ in range(50 * count):
      size = SIZES[rng.integers(len(SIZES))]
      extent = SIZE_PIXELS[size]
      top, left = (int(v) for v in rng.integers(0, IMAGE_SIZE - extent + 1, 2))
      obj = SceneObject(size, COLOURS[rng.integers(len(COLOURS))],
                        SHAPES[rng.integers(len(SHAPES))],
                        top, left)
      if all(_separated(obj, other) for other in objects):
        objects.append(obj)
        if len(objects) == count:
          return sorted(objects, key=lambda o: o.left + o.extent / 2)


def _bucket(objects: Sequence[SceneObject]) -> int:
  text = ";".join(f"{o.size},{o.colour},{o.shape},{o.top},{o.left}" for o in objects)
  return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") % 100


def example(objects: Sequence[SceneObject], noise_seed: int = 0) -> dict[str, np.ndarray | str]:
  """The record of a scene (see the module docstring); ``objects`` in any order."""
  objects = sorted(objects, key=lambda o: o.left + o.extent / 2)
  if not 1 <= len(objects) <= MAX_OBJECTS:
    raise ValueError(f"objects must hold 1..{MAX_OBJECTS} objects, got {len(objects)}")
  image, boxes = render(objects, noise_seed)
  attributes = np.zeros((MAX_OBJECTS, 3), np.int32)
  padded_boxes = np.zeros((MAX_OBJECTS, 4), np.int32)
  for i, o in enumerate(objects):
    attributes[i] = (SIZES.index(o.size), COLOURS.index(o.colour), SHAPES.index(o.shape))
  padded_boxes[:len(objects)] = boxes
  return {"image": image, "caption": caption(objects), "num_objects": np.int32(len(objects)),
          "objects": attributes, "boxes": padded_boxes}


def generate_split(split: str, num_examples: int, seed: int) -> Iterator[dict]:
  """The records of a split, deterministic in ``(split, num_examples, seed)``."""
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  rng = np.random.default_rng((seed, SPLITS.index(split)))
  produced = 0
  while produced < num_examples:
    objects = sample_scene(rng)
    if _bucket(objects) not in _BUCKETS[split]:
      continue
    yield example(objects, noise_seed=int(rng.integers(2 ** 31)))
    produced += 1


class WordTokenizer:
  """Word ids for the caption grammar: 0-3 reserved (pad, bos, eos, unk), then ``VOCABULARY``."""

  pad_id, bos_id, eos_id, unk_id = PAD_ID, BOS_ID, EOS_ID, UNK_ID
  words = ("<pad>", "<bos>", "<eos>", "<unk>", *VOCABULARY)
  vocab_size = len(words)
  _ids = {w: i for i, w in enumerate(words)}

  def encode(self, text: str | bytes, add_bos: bool = False, add_eos: bool = False) -> list[int]:
    text = text.decode() if isinstance(text, bytes) else text
    ids = [self._ids.get(w, UNK_ID) for w in text.split()]
    return [BOS_ID] * add_bos + ids + [EOS_ID] * add_eos

  def tokens(self, ids) -> list[str]:
    """The words of ``ids`` up to (excluding) EOS, skipping PAD and BOS."""
    out = []
    for i in ids:
      i = int(i)
      if i == EOS_ID:
        break
      if i not in (PAD_ID, BOS_ID):
        out.append(self.words[i] if 0 <= i < self.vocab_size else "<unk>")
    return out

  def decode(self, ids) -> str:
    return " ".join(self.tokens(ids))


assert NUM_RESERVED == 4  # WordTokenizer.words lists the reserved tokens in CharTokenizer's order


@dataclasses.dataclass(eq=False)
class ShapesCaptionsConfig(tfds.core.BuilderConfig):
  """Split sizes and the generation seed."""

  num_train: int = 20_000
  num_validation: int = 500
  num_test: int = 1_000
  seed: int = 4

  def split_sizes(self) -> dict[str, int]:
    return {"train": self.num_train, "validation": self.num_validation, "test": self.num_test}


class ShapesCaptions(stamped.StampedBuilder):
  """Images of 1-4 coloured shapes with captions and object boxes (module docstring)."""

  name = "shapes_captions"
  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {
      "1.0.0": "First release: 48x48 RGB, 1-4 objects, 24 object kinds.",
      "1.1.0": "Same examples; records the NumPy version that drew them and a content "
      "fingerprint, and refuses to be read under another NumPy.",
  }
  BUILDER_CONFIGS = [
      ShapesCaptionsConfig(name="default", description="20,000 train, 500 validation, 1,000 test."),
      ShapesCaptionsConfig(name="small", description="1,000 train, 100 validation/test (tests).",
                           num_train=1_000, num_validation=100, num_test=100),
  ]
  DEFAULT_CONFIG_NAME = "default"

  # As in dates.py: tfds 4.9.x looks the code path up through importlib_resources, which is not
  # installed; nothing is downloaded, so the file itself will do.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="Synthetic images of 1-4 coloured shapes, captions in a fixed grammar, and "
        "the bounding box of every named object.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8),
            "caption": tfds.features.Text(),
            "num_objects": tfds.features.Tensor(shape=(), dtype=np.int32),
            "objects": tfds.features.Tensor(shape=(MAX_OBJECTS, 3), dtype=np.int32),
            "boxes": tfds.features.Tensor(shape=(MAX_OBJECTS, 4), dtype=np.int32),
        }),
        metadata=tfds.core.MetadataDict(),
    )

  def _generate_split(self, split: str, num_examples: int):
    return generate_split(split, num_examples, self.builder_config.seed)


def shapes_captions_builder(data_dir: str | os.PathLike | None = None,
                            config: str | ShapesCaptionsConfig = "default") -> ShapesCaptions:
  """The builder of a config, reading/writing array_record files under ``data_dir``."""
  data_dir = data_dir if data_dir is not None else os.environ.get("TFDS_DATA_DIR")
  return ShapesCaptions(data_dir=None if data_dir is None else os.fspath(data_dir), config=config,
                        file_format="array_record")


def load_shapes_captions(split: str | None = "train", data_dir: str | os.PathLike | None = None,
                         config: str | ShapesCaptionsConfig = "default"):
  """Prepares the dataset on first use; returns a ``tfds`` data source (or a dict by split)."""
  builder = shapes_captions_builder(data_dir, config)
  builder.download_and_prepare(file_format="array_record")
  return builder.as_data_source(split=split)


def load_arrays(source) -> dict[str, np.ndarray]:
  """Stacks a data source's records: ``image [N, S, S, 3]``, ``caption`` (object array of str),
  ``num_objects [N]``, ``objects [N, 4, 3]``, ``boxes [N, 4, 4]``."""
  records = [source[i] for i in range(len(source))]
  out = {k: np.stack([np.asarray(r[k]) for r in records])
         for k in ("image", "num_objects", "objects", "boxes")}
  out["caption"] = np.array([r["caption"].decode() if isinstance(r["caption"], bytes)
                             else r["caption"] for r in records], dtype=object)
  return out


def encode_captions(captions: Sequence[str], max_len: int) -> Mapping[str, np.ndarray]:
  """Teacher-forcing arrays: ``decoder_inputs`` (BOS + words), ``targets`` (words + EOS) and
  ``target_mask``, all ``[N, max_len]``; raises ValueError if a caption is longer."""
  tok = WordTokenizer()
  n = len(captions)
  inputs = np.full((n, max_len), PAD_ID, np.int32)
  targets = np.full((n, max_len), PAD_ID, np.int32)
  for i, text in enumerate(captions):
    ids = tok.encode(text, add_eos=True)
    if len(ids) > max_len:
      raise ValueError(f"max_len={max_len} is too short for caption {i} ({len(ids)} tokens "
                       "with EOS)")
    targets[i, :len(ids)] = ids
    inputs[i, :len(ids)] = [BOS_ID] + ids[:-1]
  return {"decoder_inputs": inputs, "targets": targets, "target_mask": targets != PAD_ID}
