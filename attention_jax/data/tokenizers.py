"""Tokenizers for the embedded text datasets.

``CharTokenizer``: one id per Unicode code point, with four reserved ids::

    PAD = 0   padding (never produced by ``encode``; ``decode`` skips it)
    BOS = 1   beginning of sequence (``encode(add_bos=True)``; ``decode`` skips it)
    EOS = 2   end of sequence (``encode(add_eos=True)``; ``decode`` stops at it)
    UNK = 3   a character not in the vocabulary (``decode`` writes U+FFFD)

The vocabulary is the sorted set of characters of the texts it was built from, so building twice
from the same texts (in any order) gives the same ids.
"""

from __future__ import annotations

import json
import os
from typing import Iterable, Sequence

from attention_jax.errors import DamagedFileError

PAD_ID = 0
BOS_ID = 1
EOS_ID = 2
UNK_ID = 3
NUM_RESERVED = 4
_RESERVED_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
_FORMAT = "attention_jax.CharTokenizer"


def _as_text(text: str | bytes) -> str:
  return text.decode("utf-8") if isinstance(text, bytes) else text


class CharTokenizer:
  """Character-level tokenizer: ids ``4 + i`` for the sorted characters, 0-3 reserved."""

  pad_id = PAD_ID
  bos_id = BOS_ID
  eos_id = EOS_ID
  unk_id = UNK_ID
  #: What ``decode`` writes for ``UNK_ID``.
  unk_text = "\ufffd"

  def __init__(self, chars: Iterable[str]):
    chars = list(chars)
    for c in chars:
      if not isinstance(c, str) or len(c) != 1:
        raise ValueError(f"vocabulary entries must be single characters, got {c!r}")
    if len(set(chars)) != len(chars):
      raise ValueError("vocabulary has repeated characters")
    self._chars: tuple[str, ...] = tuple(chars)
    self._ids = {c: NUM_RESERVED + i for i, c in enumerate(self._chars)}

  @classmethod
  def build(cls, texts: Iterable[str | bytes]) -> "CharTokenizer":
    """The tokenizer of every character in ``texts`` (str or UTF-8 bytes), sorted."""
    chars: set[str] = set()
    for text in texts:
      chars.update(_as_text(text))
    return cls(sorted(chars))

  @property
  def vocab_size(self) -> int:
    """Number of ids, reserved ones included (embedding tables need this many rows)."""
    return NUM_RESERVED + len(self._chars)

  @property
  def chars(self) -> tuple[str, ...]:
    return self._chars

  def encode(self, text: str | bytes, add_bos: bool = False, add_eos: bool = False) -> list[int]:
    """Ids of the characters of ``text``; unknown characters become ``UNK_ID``."""
    ids = [self._ids.get(c, UNK_ID) for c in _as_text(text)]
    if add_bos:
      ids.insert(0, BOS_ID)
    if add_eos:
      ids.append(EOS_ID)
    return ids

  def decode(self, ids: Iterable[int]) -> str:
    """Text of ``ids``: stops at the first EOS, skips PAD and BOS, UNK becomes U+FFFD."""
    out = []
    for i in ids:
      i = int(i)
      if i == EOS_ID:
        break
      if i in (PAD_ID, BOS_ID):
        continue
      out.append(self.id_to_token(i) if i != UNK_ID else self.unk_text)
    return "".join(out)

  def id_to_token(self, i: int) -> str:
    """The character of an id, or ``<pad>``/``<bos>``/``<eos>``/``<unk>`` (for plot labels)."""
    i = int(i)
    if 0 <= i < NUM_RESERVED:
      return _RESERVED_TOKENS[i]
    if i >= self.vocab_size or i < 0:
      raise ValueError(f"id {i} is out of range for vocab_size {self.vocab_size}")
    return self._chars[i - NUM_RESERVED]

  def tokens(self, ids: Sequence[int]) -> list[str]:
    """``id_to_token`` of every id (no stopping at EOS): axis labels of attention maps."""
    return [self.id_to_token(i) for i in ids]

  def save(self, path: str | os.PathLike) -> None:
    """Writes the vocabulary as JSON (UTF-8), atomically, with the mode ``open`` would give."""
    # Imported here: the training package imports JAX and orbax, which reading text needs not.
    from attention_jax.training import run_files  # pylint: disable=import-outside-toplevel
    payload = {
        "format": _FORMAT,
        "version": 1,
        "reserved": {"pad": PAD_ID, "bos": BOS_ID, "eos": EOS_ID, "unk": UNK_ID},
        "chars": list(self._chars),
    }
    run_files.atomic_write_text(path, json.dumps(payload, ensure_ascii=False, indent=1))

  @classmethod
  def load(cls, path: str | os.PathLike) -> "CharTokenizer":
    """Reads a vocabulary written by ``save``; a damaged file is a :class:`DamagedFileError`
    naming it (the ids of a workdir's checkpoints depend on it, so it is never rebuilt
    silently)."""
    try:
      with open(path, encoding="utf-8") as f:
        payload = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise DamagedFileError(
          f"{os.fspath(path)!r} is damaged ({type(e).__name__}: {e}); it holds the vocabulary "
          f"the run's checkpoints were trained with: restore it, or start in a new workdir"
      ) from None
    if payload.get("format") != _FORMAT or payload.get("version") != 1:
      raise ValueError(f"{os.fspath(path)!r} is not a CharTokenizer vocabulary (version 1)")
    reserved = {"pad": PAD_ID, "bos": BOS_ID, "eos": EOS_ID, "unk": UNK_ID}
    if payload.get("reserved") != reserved:
      raise ValueError(f"{os.fspath(path)!r} uses other reserved ids: {payload.get('reserved')}")
    return cls(payload["chars"])

  def __eq__(self, other: object) -> bool:
    return isinstance(other, CharTokenizer) and self._chars == other._chars

  def __hash__(self) -> int:
    return hash(self._chars)

  def __repr__(self) -> str:
    return f"CharTokenizer(vocab_size={self.vocab_size})"
