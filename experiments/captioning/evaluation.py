"""Scores for the captioning experiment: corpus BLEU, exact captions, attention localisation."""

from __future__ import annotations

import collections
import math
from typing import Sequence

import numpy as np

from attention_jax.data import shapes_captions


def _ngrams(words: Sequence[str], n: int) -> collections.Counter:
  return collections.Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def corpus_bleu(references: Sequence[Sequence[str]], hypotheses: Sequence[Sequence[str]],
                max_n: int = 4) -> float:
  """Papineni et al. (2002) corpus BLEU-``max_n`` with one reference per hypothesis.

  ``BP * exp(mean_n log p_n)``, ``p_n`` the clipped n-gram matches over all hypotheses divided
  by their n-gram count, ``BP = min(1, exp(1 - r / c))`` with ``r``, ``c`` the total reference and
  hypothesis lengths. 0 when some ``p_n`` is 0 (no smoothing), as in the reference definition.
  """
  if len(references) != len(hypotheses) or not references:
    raise ValueError(f"references ({len(references)}) and hypotheses ({len(hypotheses)}) must be "
                     "non-empty lists of the same length")
  return corpus_bleu_multi([[r] for r in references], hypotheses, max_n)


def corpus_bleu_multi(references: Sequence[Sequence[Sequence[str]]],
                      hypotheses: Sequence[Sequence[str]], max_n: int = 4) -> float:
  """Corpus BLEU with one or more references per hypothesis (as for COCO captions).

  An n-gram's count is clipped by its largest count in any one reference; ``r`` sums, per
  hypothesis, the reference length closest to the hypothesis length (the shorter on a tie).
  With one reference each this is :func:`corpus_bleu`.
  """
  if len(references) != len(hypotheses) or not references:
    raise ValueError(f"references ({len(references)}) and hypotheses ({len(hypotheses)}) must be "
                     "non-empty lists of the same length")
  if max_n < 1:
    raise ValueError(f"max_n must be >= 1, got {max_n}")
  matches, totals = np.zeros(max_n), np.zeros(max_n)
  ref_len = hyp_len = 0
  for i, (refs, hyp) in enumerate(zip(references, hypotheses)):
    if not refs:
      raise ValueError(f"hypothesis {i} has no reference")
    ref_len += min((abs(len(r) - len(hyp)), len(r)) for r in refs)[1]
    hyp_len += len(hyp)
    for n in range(1, max_n + 1):
      hyp_ngrams = _ngrams(hyp, n)
      ref_ngrams = collections.Counter()
      for r in refs:
        ref_ngrams |= _ngrams(r, n)  # element-wise max
      matches[n - 1] += sum(min(c, ref_ngrams[g]) for g, c in hyp_ngrams.items())
      totals[n - 1] += max(len(hyp) - n + 1, 0)
  if hyp_len == 0 or np.any(matches == 0):
    return 0.0
  brevity = 1.0 if hyp_len > ref_len else math.exp(1.0 - ref_len / hyp_len)
  return float(brevity * math.exp(np.mean(np.log(matches / totals))))


def mass_in_box(attention: np.ndarray, box: Sequence[int], image_size: int) -> float:
  """The fraction of an attention map's mass inside a pixel box.

  Each grid cell's weight is spread evenly over the pixels it covers (nearest upsampling of the
  ``[H, W]`` map to ``image_size``), then summed over ``box = (ymin, xmin, ymax, xmax)``
  (exclusive max). A uniform map gives the box's area fraction; all mass in the box gives 1.
  """
  attention = np.asarray(attention, np.float64)
  h, w = attention.shape
  if image_size % h or image_size % w:
    raise ValueError(f"image_size {image_size} must be a multiple of the grid {attention.shape}")
  per_pixel = np.kron(attention, np.ones((image_size // h, image_size // w))) / (
      (image_size // h) * (image_size // w))
  ymin, xmin, ymax, xmax = (int(v) for v in box)
  return float(per_pixel[ymin:ymax, xmin:xmax].sum() / max(per_pixel.sum(), 1e-12))


_RELATION_ENDS = frozenset(("of", "to", "above", "below"))


def cells_touching_box(grid: tuple[int, int], box: Sequence[int], image_size: int) -> np.ndarray:
  """bool ``[H, W]``: the grid cells that cover at least one pixel of ``box`` (the box dilated to
  the grid's resolution)."""
  h, w = grid
  if image_size % h or image_size % w:
    raise ValueError(f"image_size {image_size} must be a multiple of the grid {tuple(grid)}")
  ch, cw = image_size // h, image_size // w
  ymin, xmin, ymax, xmax = (int(v) for v in box)
  out = np.zeros((h, w), bool)
  if ymax > ymin and xmax > xmin:
    out[ymin // ch:-(-ymax // ch), xmin // cw:-(-xmax // cw)] = True
  return out


def cell_mass_in_box(attention: np.ndarray, box: Sequence[int], image_size: int) -> float:
  """The fraction of an attention map's mass on the grid cells that cover part of a pixel box.

  The attention picks cells, not pixels: a cell that covers part of the object is a cell of the
  object, however the box's edges fall on the grid (:func:`mass_in_box` instead spreads each
  cell over its pixels, so a cell on the outline of a 10-pixel object counts at most in part).
  Its uniform baseline is the fraction of cells the box touches (:func:`cells_touching_box`),
  not the box's area fraction, so the ratio to uniform stays honest.
  """
  attention = np.asarray(attention, np.float64)
  cells = cells_touching_box(attention.shape, box, image_size)
  return float(attention[cells].sum() / max(attention.sum(), 1e-12))


def named_objects(words: Sequence[str], objects: np.ndarray, num_objects: int) -> list[int | None]:
  """For each word of a generated caption, the index of the true object it names, or None.

  A phrase ``a SIZE COLOUR SHAPE`` names the true object with all three attributes (the leftmost
  unused such object), else one with the same colour and shape; its content words (size, colour,
  shape) name that object. Function words and unmatched phrases give None.
  """
  out: list[int | None] = [None] * len(words)
  used: set[int] = set()
  truth = [tuple(int(v) for v in objects[i]) for i in range(num_objects)]
  # A phrase starts at the first word, at every "a" and after every relation ("left of",
  # "next to", "above", "below"), so a phrase that lost its "a" is still read on its own.
  starts = [i for i, w in enumerate(words)
            if i == 0 or w == "a" or words[i - 1] in _RELATION_ENDS]
  for start, end in zip(starts, starts[1:] + [len(words)]):
    phrase = words[start:end]
    attrs = {}
    for position, word in enumerate(phrase):
      for name, vocabulary in (("size", shapes_captions.SIZES),
                               ("colour", shapes_captions.COLOURS),
                               ("shape", shapes_captions.SHAPES)):
        if word in vocabulary:
          attrs[name] = (vocabulary.index(word), start + position)
    target = None
    for keys in (("size", "colour", "shape"), ("colour", "shape")):
      if target is None and all(k in attrs for k in keys):
        index = {"size": 0, "colour": 1, "shape": 2}
        for i, t in enumerate(truth):
          if i not in used and all(t[index[k]] == attrs[k][0] for k in keys):
            target = i
            break
    if target is not None:
      used.add(target)
      for _, position in attrs.values():
        out[position] = target
  return out


def localisation(words_per_example: Sequence[Sequence[str]], attentions: Sequence[np.ndarray],
                 objects: np.ndarray, num_objects: np.ndarray, boxes: np.ndarray,
                 image_size: int) -> dict[str, float | int]:
  """Mean attention mass inside the named object's box over every content word that names an
  object, and the same for a uniform map (the box's area fraction).

  Two ways to count (both reported, ``mean_mass_in_box`` the original one): each cell spread
  over its pixels (:func:`mass_in_box`, uniform = the box's area fraction), and whole cells that
  cover part of the box (:func:`cell_mass_in_box`, ``mean_cell_mass_in_box``, uniform = the
  fraction of cells the box touches). ``pointing_accuracy``: how often the map's largest cell
  covers part of the box (the pointing game of Zhang et al. 2016, at the grid's resolution).

  Args:
    words_per_example: the generated words of each example.
    attentions: per example ``[>= len(words), H, W]``, the attention of each generated word.
    objects, num_objects, boxes: the dataset's ``[N, 4, 3]``, ``[N]``, ``[N, 4, 4]``.
    image_size: pixels per side.
  """
  scores, uniform, by_kind = [], [], collections.defaultdict(list)
  cell_scores, cell_uniform, cell_by_kind, pointed = [], [], collections.defaultdict(list), []
  for k, words in enumerate(words_per_example):
    for t, target in enumerate(named_objects(words, objects[k], int(num_objects[k]))):
      if target is None:
        continue
      box = boxes[k, target]
      attention = np.asarray(attentions[k][t])
      score = mass_in_box(attention, box, image_size)
      scores.append(score)
      uniform.append((box[2] - box[0]) * (box[3] - box[1]) / image_size ** 2)
      cells = cells_touching_box(attention.shape, box, image_size)
      cell_score = cell_mass_in_box(attention, box, image_size)
      cell_scores.append(cell_score)
      cell_uniform.append(cells.mean())
      pointed.append(bool(cells.flat[int(np.argmax(attention))]))
      kind = ("size" if words[t] in shapes_captions.SIZES
              else "colour" if words[t] in shapes_captions.COLOURS else "shape")
      by_kind[kind].append(score)
      cell_by_kind[kind].append(cell_score)
  if not scores:
    return {"mean_mass_in_box": 0.0, "uniform_baseline": 0.0, "ratio_to_uniform": 0.0,
            "mean_cell_mass_in_box": 0.0, "cell_uniform_baseline": 0.0,
            "cell_ratio_to_uniform": 0.0, "pointing_accuracy": 0.0, "num_words": 0}
  mean, base = float(np.mean(scores)), float(np.mean(uniform))
  cell_mean, cell_base = float(np.mean(cell_scores)), float(np.mean(cell_uniform))
  return {"mean_mass_in_box": mean, "uniform_baseline": base, "ratio_to_uniform": mean / base,
          "mean_cell_mass_in_box": cell_mean, "cell_uniform_baseline": cell_base,
          "cell_ratio_to_uniform": cell_mean / cell_base,
          "pointing_accuracy": float(np.mean(pointed)),
          "num_words": len(scores),
          **{f"mean_mass_in_box_{kind}_words": float(np.mean(v)) for kind, v in by_kind.items()},
          **{f"mean_cell_mass_in_box_{kind}_words": float(np.mean(v))
             for kind, v in cell_by_kind.items()}}
