"""The catalog-dataset path of the captioning experiment (``coco_captions`` through
``tfds.data_source``), with ``tfds.data_source`` replaced by a small fake source of the same
record structure: nothing is downloaded."""

import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from experiments.captioning import catalog
from experiments.captioning import train as captioning
from experiments.captioning import evaluation
from experiments.captioning import config as configs

_WORDS = ("a", "dog", "cat", "on", "the", "grass", "sofa", "red", "small", "runs", "sleeps")


class FakeCocoSource:
  """Records shaped like ``tfds.data_source("coco_captions")``'s: an image of any size, five
  references in ``captions/text``, ids, and (unused here) objects."""

  def __init__(self, split: str, num_examples: int = 12):
    self.split, self.num_examples = split, num_examples

  def __len__(self):
    return self.num_examples

  def __getitem__(self, index):
    rng = np.random.default_rng((index, len(self.split)))
    height, width = (int(v) for v in rng.integers(20, 60, 2))
    texts = [(" ".join(rng.choice(_WORDS, int(rng.integers(3, 30)))).capitalize() + ".").encode()
             for _ in range(5)]
    return {"image": rng.integers(0, 256, (height, width, 3)).astype(np.uint8),
            "image/id": np.int64(index), "image/filename": f"{index}.jpg".encode(),
            "captions": {"id": np.arange(5, dtype=np.int64), "text": np.array(texts, object)},
            "objects": {"bbox": np.zeros((1, 4), np.float32), "label": np.zeros(1, np.int64)}}


@pytest.fixture
def fake_data_source(monkeypatch):
  calls = []

  def data_source(name, *, split=None, data_dir=None, builder_kwargs=None, **kwargs):
    calls.append((name, split, (builder_kwargs or {}).get("file_format")))
    return FakeCocoSource(split)

  monkeypatch.setattr(tfds, "data_source", data_source)
  return calls


def _coco_tiny():
  config = configs.get_config("tiny")
  config.data.dataset = "coco_captions"
  config.data.image_size = 32
  config.data.max_caption_len = 12
  config.data.vocab_size = 10
  config.batch_size = 4
  config.num_steps = 3
  config.warmup_steps = 1
  config.checkpoint_every = 3
  config.log_every = 3
  config.eval.batch_size = 5
  config.eval.max_examples = 10
  config.eval.num_grid = 2
  return config


def test_caption_words_and_vocabulary():
  assert catalog.caption_words(b"A dog, running.") == ["a", "dog", "running"]
  vocab = catalog.CaptionVocabulary.build(["a dog", "a cat", "A DOG runs"], max_size=6)
  assert vocab.words[4:] == ("a", "dog")  # most frequent first, the rest cut
  assert vocab.encode("a cat", add_bos=True, add_eos=True) == [1, 4, 3, 2]  # cat -> unk
  assert vocab.tokens([1, 4, 5, 2, 4]) == ["a", "dog"]


def test_square_resize_crops_the_centre():
  image = np.zeros((20, 40, 3), np.uint8)
  image[:, 10:30] = 255  # the centred 20x20 square
  out = catalog.square_resize(image, 8)
  assert out.shape == (8, 8, 3) and out.dtype == np.uint8
  assert np.all(out == 255)
  with pytest.raises(ValueError, match="image"):
    catalog.square_resize(np.zeros((4, 4, 2), np.uint8), 8)


def test_bleu_with_several_references():
  refs = ["the cat sat down".split(), "a cat sat".split()]
  # every n-gram up to 3 occurs in one of the references; the 4-gram in none
  assert evaluation.corpus_bleu_multi([refs], ["a cat sat down".split()], 3) == pytest.approx(1.0)
  assert evaluation.corpus_bleu_multi([refs], ["a cat sat down".split()], 4) == 0.0
  # clipped by the largest count in one reference (2), closest reference length 3 -> BP = 1
  refs = ["cat sat".split(), "the cat cat".split()]
  assert evaluation.corpus_bleu_multi([refs], ["cat cat cat".split()], 1) == pytest.approx(2 / 3)
  # one reference each: the same as corpus_bleu
  single = [["a", "b", "c", "d"]], [["a", "b", "c"]]
  assert evaluation.corpus_bleu_multi([single[0]], single[1], 2) == pytest.approx(
      evaluation.corpus_bleu(single[0], single[1], 2))


def test_catalog_splits_read_through_tfds_data_source(fake_data_source):
  config = _coco_tiny()
  configs.validate(config)
  train, val, test, tokenizer = captioning.load_catalog(config)
  assert [c[:2] for c in fake_data_source] == [("coco_captions", s) for s in
                                               ("train", "val", "test")]
  assert all(c[2] == "array_record" for c in fake_data_source)
  assert tokenizer.vocab_size == 10
  batch = captioning.batch_at(train, 4, seed=0, step=1)
  assert batch["image"].shape == (4, 32, 32, 3) and batch["image"].dtype == np.uint8
  assert batch["decoder_inputs"].shape == batch["targets"].shape == (4, 12)
  # long references are cut to max_len - 1 words + EOS; the batch is a function of the step
  lengths = batch["target_mask"].sum(-1)
  assert np.all(lengths <= 12) and np.all(lengths >= 4)
  again = captioning.batch_at(train, 4, seed=0, step=1)
  np.testing.assert_array_equal(batch["targets"], again["targets"])


@pytest.mark.slow
def test_tiny_catalog_run_computes_bleu_and_skips_localisation(fake_data_source, tmp_path):
  config = _coco_tiny()
  config.eval.beam_size = 2
  workdir = str(tmp_path / "run")
  results = captioning.run(config, workdir)
  with open(os.path.join(workdir, "eval.json")) as f:
    saved = json.load(f)
  for key in ("test", "test_greedy"):
    assert 0 <= saved[key]["bleu_4"] <= saved[key]["bleu_1"] <= 100
    assert "skipped" in saved[key]["localisation"]
  assert results["test"]["decoding"] == "beam search, beam 2"
  assert os.path.exists(os.path.join(workdir, "attention_0.png"))
  assert os.path.exists(os.path.join(workdir, "captions.png"))
