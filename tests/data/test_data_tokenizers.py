"""CharTokenizer: deterministic vocabulary, reserved ids, round trips, save/load."""

import json

import pytest

from attention_jax.data.tokenizers import BOS_ID, EOS_ID, PAD_ID, UNK_ID, CharTokenizer

TEXTS = [
    "Tuesday, November 24, 2026, 3:07:09 PM",
    "2026년 11월 24일 화요일 PM 3:07",
    "سه‌شنبه ۲۴ نوامبر ۲۰۲۶، ساعت ۱۵:۰۷",
    "24.11.26",
    "2026-11-24T15:07:09",
]


def test_reserved_ids():
  assert (PAD_ID, BOS_ID, EOS_ID, UNK_ID) == (0, 1, 2, 3)
  tok = CharTokenizer.build(["cab"])
  assert tok.vocab_size == 7
  assert tok.encode("abc") == [4, 5, 6]
  assert tok.tokens([0, 1, 2, 3, 4]) == ["<pad>", "<bos>", "<eos>", "<unk>", "a"]


def test_build_is_sorted_and_order_independent():
  a = CharTokenizer.build(TEXTS)
  b = CharTokenizer.build(list(reversed(TEXTS)) + [t.encode("utf-8") for t in TEXTS])
  assert a == b
  assert list(a.chars) == sorted(set("".join(TEXTS)))
  assert a.vocab_size == 4 + len(set("".join(TEXTS)))


@pytest.mark.parametrize("text", TEXTS + [""])
def test_round_trip(text):
  tok = CharTokenizer.build(TEXTS)
  ids = tok.encode(text)
  assert len(ids) == len(text)
  assert all(4 <= i < tok.vocab_size for i in ids)
  assert tok.decode(ids) == text
  assert tok.encode(text.encode("utf-8")) == ids
  with_specials = tok.encode(text, add_bos=True, add_eos=True)
  assert with_specials == [BOS_ID] + ids + [EOS_ID]
  assert tok.decode(with_specials) == text
  assert tok.decode([BOS_ID] + ids + [EOS_ID] + [PAD_ID] * 3) == text


def test_decode_stops_at_eos_and_skips_pad_bos():
  tok = CharTokenizer.build(["abc"])
  a, b, c = tok.encode("abc")
  assert tok.decode([BOS_ID, a, PAD_ID, b, EOS_ID, c, c]) == "ab"
  assert tok.decode([EOS_ID, a]) == ""


def test_unknown_characters():
  tok = CharTokenizer.build(["abc"])
  assert tok.encode("axb") == [4, UNK_ID, 5]
  assert tok.decode(tok.encode("axb")) == "a\ufffdb"


def test_save_load(tmp_path):
  tok = CharTokenizer.build(TEXTS)
  path = tmp_path / "vocab.json"
  tok.save(path)
  loaded = CharTokenizer.load(path)
  assert loaded == tok and loaded.vocab_size == tok.vocab_size
  for text in TEXTS:
    assert loaded.encode(text, add_bos=True, add_eos=True) == tok.encode(
        text, add_bos=True, add_eos=True
    )
  payload = json.loads(path.read_text(encoding="utf-8"))
  assert payload["chars"] == list(tok.chars)
  assert payload["reserved"] == {"pad": 0, "bos": 1, "eos": 2, "unk": 3}


def test_load_rejects_other_files(tmp_path):
  path = tmp_path / "other.json"
  path.write_text(json.dumps({"vocab": ["a"]}))
  with pytest.raises(ValueError, match="not a CharTokenizer"):
    CharTokenizer.load(path)


def test_invalid_vocabulary():
  with pytest.raises(ValueError, match="single characters"):
    CharTokenizer(["ab"])
  with pytest.raises(ValueError, match="repeated"):
    CharTokenizer(["a", "a"])
  with pytest.raises(ValueError, match="out of range"):
    CharTokenizer(["a"]).id_to_token(5)
