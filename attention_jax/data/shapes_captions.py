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

The ``hard`` config (``scene="hard"``, see :func:`sample_hard_scene`) draws a scene that still
tells models apart: 1-6 objects whose sizes overlap (a small object is 8-12 pixels wide, a large
one 11-16), that may partly hide one another (each keeps >= 60% of its pixels visible, its box the
tight box of its *visible* pixels), over 1-3 distractor patches of stripes or checks in colours
outside the grammar; the caption chains the objects from left to right with the relation of each
pair, "left of", "next to" (horizontal gap <= 2 pixels), "above" or "below" (the vertical offset
of the box centres exceeds the horizontal one)::

    a small red square above a large blue circle next to a small yellow triangle

Its records add ``relations int32 [HARD_MAX_OBJECTS - 1]`` (indices into ``HARD_RELATIONS``,
-1 padding) and pad ``objects``/``boxes`` to ``HARD_MAX_OBJECTS``; its words are
``HARD_VOCABULARY`` (:class:`HardWordTokenizer`). The default and ``small`` configs draw exactly
the examples they drew before the hard config existed.

``load_shapes_captions("train")`` prepares the dataset on first use (array_record, no
TensorFlow) and returns a ``tfds`` random-access data source; ``load_arrays`` stacks a split into
NumPy arrays (the datasets are small).
"""

from __future__ import annotations

import dataclasses
import functools
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


# --- The hard scene ----------------------------------------------------------------------------

HARD_MAX_OBJECTS = 6
#: Extents (pixels, inclusive) a size word covers: the ranges overlap at 11-12 pixels.
HARD_SIZE_RANGE = {"small": (8, 12), "large": (11, 16)}
HARD_RELATIONS = ("left of", "next to", "above", "below")
HARD_VOCABULARY = (*VOCABULARY, "next", "to", "above", "below")
#: Distractor colours: none is a colour word, all brighter than the background.
DISTRACTOR_RGB = ((120, 120, 120), (140, 80, 150), (150, 105, 60))
MIN_VISIBLE = 0.6  # the fraction of an object's pixels no later object may hide
NEXT_TO_GAP = 2  # horizontal gap (pixels) up to which two objects are "next to" each other
MARGIN = 3  # pixels by which every relation and the left-to-right order must be unambiguous


@dataclasses.dataclass(frozen=True)
class HardObject:
  """An object of the hard scene: attributes, top-left corner and its own extent in pixels."""

  size: str
  colour: str
  shape: str
  top: int
  left: int
  extent: int

  @property
  def phrase(self) -> str:
    return f"a {self.size} {self.colour} {self.shape}"


@dataclasses.dataclass(frozen=True)
class Distractor:
  """A textured patch: ``pattern`` in ("stripes", "columns", "checks"), ``colour`` an index into
  ``DISTRACTOR_RGB``, its square's top-left corner and extent."""

  pattern: str
  colour: int
  top: int
  left: int
  extent: int


def _texture(pattern: str, extent: int) -> np.ndarray:
  ys, xs = np.mgrid[0:extent, 0:extent]
  if pattern == "stripes":
    return ys % 3 == 0
  if pattern == "columns":
    return xs % 3 == 0
  if pattern == "checks":
    return (ys // 2 + xs // 2) % 2 == 0
  raise ValueError(f"pattern must be stripes, columns or checks, got {pattern!r}")


@functools.lru_cache(maxsize=None)
def _cached_mask(shape: str, extent: int) -> np.ndarray:
  mask = shape_mask(shape, extent)
  mask.flags.writeable = False
  return mask


def _visible_boxes(objects: Sequence[HardObject]) -> tuple[np.ndarray, np.ndarray]:
  """``(boxes int32 [n, 4], visible float64 [n])`` of objects drawn in order (a later one hides
  an earlier one): the tight box of each object's visible pixels (zeros if none) and the
  fraction of its pixels left visible."""
  owner = np.full((IMAGE_SIZE, IMAGE_SIZE), -1, np.int8)
  for i, obj in enumerate(objects):
    if obj.top < 0 or obj.left < 0 or max(obj.top, obj.left) + obj.extent > IMAGE_SIZE:
      raise ValueError(f"object {i} ({obj}) does not fit in a {IMAGE_SIZE}-pixel image")
    owner[obj.top:obj.top + obj.extent, obj.left:obj.left + obj.extent][
        _cached_mask(obj.shape, obj.extent)] = i
  boxes = np.zeros((len(objects), 4), np.int32)
  visible = np.zeros(len(objects))
  for i, obj in enumerate(objects):
    mine = owner[obj.top:obj.top + obj.extent, obj.left:obj.left + obj.extent] == i
    ys, xs = np.nonzero(mine)
    visible[i] = len(ys) / _cached_mask(obj.shape, obj.extent).sum()
    if len(ys):
      boxes[i] = (obj.top + ys.min(), obj.left + xs.min(), obj.top + ys.max() + 1,
                  obj.left + xs.max() + 1)
  return boxes, visible


def render_hard(objects: Sequence[HardObject], distractors: Sequence[Distractor] = (),
                noise_seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Draws a hard scene: background noise, the distractors, then the objects in the given order
  (a later object hides an earlier one where they overlap).

  Returns:
    ``(image uint8 [S, S, 3], boxes int32 [n, 4], visible float64 [n])``: the tight box of each
    object's *visible* pixels (zeros if none is visible) and the fraction of its pixels visible.
  """
  boxes, visible = _visible_boxes(objects)
  rng = np.random.default_rng(noise_seed)
  image = rng.integers(10, 40, (IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.uint8)
  for d in distractors:
    region = image[d.top:d.top + d.extent, d.left:d.left + d.extent]
    region[_texture(d.pattern, region.shape[0])[:, :region.shape[1]]] = DISTRACTOR_RGB[d.colour]
  for obj in objects:
    image[obj.top:obj.top + obj.extent, obj.left:obj.left + obj.extent][
        _cached_mask(obj.shape, obj.extent)] = COLOUR_RGB[obj.colour]
  return image, boxes, visible


def relation(box_a: Sequence[int], box_b: Sequence[int]) -> str | None:
  """The relation word of ``box_a`` to ``box_b`` (``b`` right of ``a`` by >= ``MARGIN`` pixels
  between centres), or None where it would be ambiguous.

  Vertical when the vertical offset of the centres exceeds the horizontal one by ``MARGIN``
  ("above": ``a`` is higher), horizontal when it falls short of it by ``MARGIN``: then "next to"
  if the horizontal gap between the boxes is at most ``NEXT_TO_GAP`` pixels (or they overlap),
  "left of" if it is at least ``NEXT_TO_GAP + MARGIN``.
  """
  ay, ax = (box_a[0] + box_a[2]) / 2, (box_a[1] + box_a[3]) / 2
  by, bx = (box_b[0] + box_b[2]) / 2, (box_b[1] + box_b[3]) / 2
  dx, dy = bx - ax, by - ay
  if dx < MARGIN:
    return None
  if abs(dy) >= dx + MARGIN:
    return "above" if dy > 0 else "below"
  if abs(dy) > dx - MARGIN:
    return None
  gap = box_b[1] - box_a[3]
  if gap <= NEXT_TO_GAP:
    return "next to"
  return "left of" if gap >= NEXT_TO_GAP + MARGIN else None


def _hard_order(objects: Sequence[HardObject]):
  """``(order, boxes, relations)`` of a scene, or None if it breaks a rule (an object hidden
  beyond ``MIN_VISIBLE``, overlapping objects of one colour, an ambiguous order or relation);
  ``order`` sorts the objects left to right by their visible boxes."""
  for i, a in enumerate(objects):
    for b in objects[i + 1:]:
      overlap = not (a.top + a.extent <= b.top or b.top + b.extent <= a.top
                     or a.left + a.extent <= b.left or b.left + b.extent <= a.left)
      if overlap and a.colour == b.colour:
        return None
  boxes, visible = _visible_boxes(objects)
  if np.any(visible < MIN_VISIBLE):
    return None
  order = sorted(range(len(objects)), key=lambda i: boxes[i][1] + boxes[i][3])
  relations = []
  for i, j in zip(order, order[1:]):
    rel = relation(boxes[i], boxes[j])
    if rel is None:
      return None
    relations.append(rel)
  return order, boxes, relations


def sample_hard_scene(rng: np.random.Generator):
  """``(objects, distractors, noise_seed)``: 1-6 objects (uniform count) over 1-3 distractors.

  The objects are placed one at a time, each redrawn (up to 40 times) until the scene so far
  passes :func:`_hard_order`; a scene that cannot be completed starts again with the same count.
  The objects come in drawing order.
  """
  count = int(rng.integers(1, HARD_MAX_OBJECTS + 1))
  while True:
    distractors = []
    for _ in range(int(rng.integers(1, 4))):
      extent = int(rng.integers(6, 15))
      top, left = (int(v) for v in rng.integers(0, IMAGE_SIZE - extent + 1, 2))
      distractors.append(Distractor(("stripes", "columns", "checks")[rng.integers(3)],
                                    int(rng.integers(len(DISTRACTOR_RGB))), top, left, extent))
    noise_seed = int(rng.integers(2 ** 31))
    objects: list[HardObject] = []
    for _ in range(40 * count):
      size = SIZES[rng.integers(len(SIZES))]
      lo, hi = HARD_SIZE_RANGE[size]
      extent = int(rng.integers(lo, hi + 1))
      top, left = (int(v) for v in rng.integers(0, IMAGE_SIZE - extent + 1, 2))
      obj = HardObject(size, COLOURS[rng.integers(len(COLOURS))],
                       SHAPES[rng.integers(len(SHAPES))], top, left, extent)
      if _hard_order(objects + [obj]) is not None:
        objects.append(obj)
        if len(objects) == count:
          return objects, distractors, noise_seed


def hard_example(objects: Sequence[HardObject], distractors: Sequence[Distractor] = (),
                 noise_seed: int = 0) -> dict[str, np.ndarray | str]:
  """The record of a hard scene (module docstring); ``objects`` in drawing order. Raises
  ValueError if the scene breaks a rule of :func:`_hard_order`."""
  if not 1 <= len(objects) <= HARD_MAX_OBJECTS:
    raise ValueError(f"objects must hold 1..{HARD_MAX_OBJECTS} objects, got {len(objects)}")
  layout = _hard_order(list(objects))
  if layout is None:
    raise ValueError("the scene hides an object, overlaps two of one colour or has an "
                     "ambiguous order or relation")
  order, boxes, relations = layout
  image = render_hard(objects, distractors, noise_seed)[0]
  attributes = np.zeros((HARD_MAX_OBJECTS, 3), np.int32)
  padded_boxes = np.zeros((HARD_MAX_OBJECTS, 4), np.int32)
  padded_relations = np.full((HARD_MAX_OBJECTS - 1,), -1, np.int32)
  words = []
  for k, i in enumerate(order):
    o = objects[i]
    attributes[k] = (SIZES.index(o.size), COLOURS.index(o.colour), SHAPES.index(o.shape))
    padded_boxes[k] = boxes[i]
    words.append(o.phrase)
    if k < len(relations):
      padded_relations[k] = HARD_RELATIONS.index(relations[k])
      words.append(relations[k])
  return {"image": image, "caption": " ".join(words), "num_objects": np.int32(len(objects)),
          "objects": attributes, "boxes": padded_boxes, "relations": padded_relations}


def parse_hard_caption(text: str) -> tuple[list[tuple[str, str, str]], list[str]] | None:
  """``(phrases, relations)`` of a hard-scene caption (``(size, colour, shape)`` per phrase, the
  relation words between them), or None if it breaks the grammar."""
  words = text.split()
  phrases, relations, i = [], [], 0
  while True:
    p = words[i:i + 4]
    if (len(p) != 4 or p[0] != "a" or p[1] not in SIZES or p[2] not in COLOURS
        or p[3] not in SHAPES):
      return None
    phrases.append(tuple(p[1:]))
    i += 4
    if i == len(words):
      break
    for rel in HARD_RELATIONS:
      if words[i:i + len(rel.split())] == rel.split():
        relations.append(rel)
        i += len(rel.split())
        break
    else:
      return None
  return (phrases, relations) if len(phrases) <= HARD_MAX_OBJECTS else None


def _hard_bucket(objects: Sequence[HardObject]) -> int:
  text = "hard;" + ";".join(f"{o.size},{o.colour},{o.shape},{o.top},{o.left},{o.extent}"
                            for o in objects)
  return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") % 100


def generate_hard_split(split: str, num_examples: int, seed: int) -> Iterator[dict]:
  """The records of a hard-scene split, deterministic in ``(split, num_examples, seed)``."""
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  rng = np.random.default_rng((seed, SPLITS.index(split), 1))
  produced = 0
  while produced < num_examples:
    objects, distractors, noise_seed = sample_hard_scene(rng)
    if _hard_bucket(objects) not in _BUCKETS[split]:
      continue
    yield hard_example(objects, distractors, noise_seed)
    produced += 1


class HardWordTokenizer(WordTokenizer):
  """:class:`WordTokenizer` over ``HARD_VOCABULARY`` (the default words keep their ids)."""

  words = ("<pad>", "<bos>", "<eos>", "<unk>", *HARD_VOCABULARY)
  vocab_size = len(words)
  _ids = {w: i for i, w in enumerate(words)}


SCENES = ("default", "hard")


def tokenizer_for(scene: str) -> WordTokenizer:
  """The word tokenizer of a scene ("default" or "hard")."""
  if scene not in SCENES:
    raise ValueError(f"scene must be one of {SCENES}, got {scene!r}")
  return HardWordTokenizer() if scene == "hard" else WordTokenizer()


def parses(text: str, scene: str = "default") -> bool:
  """Whether a caption follows the grammar of ``scene``."""
  return (parse_hard_caption(text) if scene == "hard" else parse_caption(text)) is not None


@dataclasses.dataclass(eq=False)
class ShapesCaptionsConfig(tfds.core.BuilderConfig):
  """Split sizes, the generation seed and the scene ("default": 1-4 objects left to right;
  "hard": the hard scene of the module docstring)."""

  num_train: int = 20_000
  num_validation: int = 500
  num_test: int = 1_000
  seed: int = 4
  scene: str = "default"

  def split_sizes(self) -> dict[str, int]:
    return {"train": self.num_train, "validation": self.num_validation, "test": self.num_test}


class ShapesCaptions(stamped.StampedBuilder):
  """Images of 1-4 coloured shapes with captions and object boxes (module docstring)."""

  name = "shapes_captions"
  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {
      "1.0.0": "First release: 48x48 RGB, 1-4 objects, 24 object kinds.",
      "1.1.0": "Same examples; records the NumPy version that drew them and a content "
      "fingerprint, and refuses to be read under another NumPy. Later added the configs hard "
      "and hard_small (the default and small configs' examples unchanged).",
  }
  BUILDER_CONFIGS = [
      ShapesCaptionsConfig(name="default", description="20,000 train, 500 validation, 1,000 test."),
      ShapesCaptionsConfig(name="small", description="1,000 train, 100 validation/test (tests).",
                           num_train=1_000, num_validation=100, num_test=100),
      ShapesCaptionsConfig(name="hard", description="The hard scene: 1-6 objects, four "
                           "relations, occlusion, distractors, overlapping sizes; 10,000 train, "
                           "500 validation, 1,000 test.", num_train=10_000, scene="hard"),
      ShapesCaptionsConfig(name="hard_small", description="The hard scene, 1,000 train, 100 "
                           "validation/test (tests).", num_train=1_000, num_validation=100,
                           num_test=100, scene="hard"),
  ]
  DEFAULT_CONFIG_NAME = "default"

  # As in dates.py: tfds 4.9.x looks the code path up through importlib_resources, which is not
  # installed; nothing is downloaded, so the file itself will do.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    hard = self.builder_config.scene == "hard"
    max_objects = HARD_MAX_OBJECTS if hard else MAX_OBJECTS
    extra = ({"relations": tfds.features.Tensor(shape=(HARD_MAX_OBJECTS - 1,), dtype=np.int32)}
             if hard else {})
    return tfds.core.DatasetInfo(
        builder=self,
        description="Synthetic images of 1-4 coloured shapes, captions in a fixed grammar, and "
        "the bounding box of every named object.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8),
            "caption": tfds.features.Text(),
            "num_objects": tfds.features.Tensor(shape=(), dtype=np.int32),
            "objects": tfds.features.Tensor(shape=(max_objects, 3), dtype=np.int32),
            "boxes": tfds.features.Tensor(shape=(max_objects, 4), dtype=np.int32),
            **extra,
        }),
        metadata=tfds.core.MetadataDict(),
    )

  def _generate_split(self, split: str, num_examples: int):
    if self.builder_config.scene not in SCENES:
      raise ValueError(f"scene must be one of {SCENES}, got {self.builder_config.scene!r}")
    generate = generate_hard_split if self.builder_config.scene == "hard" else generate_split
    return generate(split, num_examples, self.builder_config.seed)


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
  ``num_objects [N]``, ``objects [N, M, 3]``, ``boxes [N, M, 4]`` (``M`` 4, or 6 for the hard
  scene, which also gives ``relations [N, 5]``)."""
  records = [source[i] for i in range(len(source))]
  keys = ("image", "num_objects", "objects", "boxes")
  if records and "relations" in records[0]:
    keys += ("relations",)
  out = {k: np.stack([np.asarray(r[k]) for r in records]) for k in keys}
  out["caption"] = np.array([r["caption"].decode() if isinstance(r["caption"], bytes)
                             else r["caption"] for r in records], dtype=object)
  return out


def encode_captions(captions: Sequence[str], max_len: int,
                    tokenizer: WordTokenizer | None = None) -> Mapping[str, np.ndarray]:
  """Teacher-forcing arrays: ``decoder_inputs`` (BOS + words), ``targets`` (words + EOS) and
  ``target_mask``, all ``[N, max_len]``; raises ValueError if a caption is longer.
  ``tokenizer`` defaults to :class:`WordTokenizer`."""
  tok = tokenizer or WordTokenizer()
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
