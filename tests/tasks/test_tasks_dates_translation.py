"""The dates translation task shared by two experiments: config, tokenizers, scores."""

import pytest

from attention_jax import data
from attention_jax.tasks import dates_translation


def test_score_exact_and_per_character_accuracy():
  records = [{"source": "24.11.26", "target": "2026-11-24"},
             {"source": "Tuesday, November 24, 2026", "target": "2026-11-24"},
             {"source": "3:07 PM", "target": "15:07"}]
  predictions = ["2026-11-24", "2026-11-25", "15:07:00"]
  scores = dates_translation.score(records, predictions)
  assert scores["exact_match"] == pytest.approx(1 / 3)
  # 10 + 9 matching characters of 10 + 10; the 3 extra characters count against the third.
  assert scores["char_accuracy"] == pytest.approx((10 + 9 + 5) / (10 + 10 + 8))
  buckets = {row["min_len"]: row for row in scores["by_length"]}
  assert buckets[5]["examples"] == 2 and buckets[25]["exact_match"] == 0.0
  with pytest.raises(ValueError, match="3 records but 2 predictions"):
    dates_translation.score(records, predictions[:2])


def test_heatmap_examples_take_one_record_per_locale_in_order():
  records = [{"locale": "de", "style": "date:long"}, {"locale": "en", "style": "date@x"},
             {"locale": "en", "style": "date:short"}, {"locale": "ko", "style": "time"},
             {"locale": "de", "style": "time"}]
  # en, de, ko: the order of HEATMAP_LOCALES
  assert dates_translation.heatmap_examples(records, 6) == [2, 0, 3]
  assert dates_translation.heatmap_examples(records, 2) == [2, 0]
  assert dates_translation.heatmap_examples(records, 0) == []


@pytest.mark.parametrize("preset", dates_translation.PRESETS)
def test_every_rnn_preset_is_valid(preset):
  dates_translation.validate_rnn_config(dates_translation.rnn_config(preset))


@pytest.mark.parametrize("field,value,match", [
    ("data.dataset_config", "huge", r"config.data.dataset_config must be one of 'default', "
                                    r"'small', got 'huge'"),
    ("data.max_target_len", 1, r"config.data.max_target_len must be > 1, got 1"),
    ("eval.max_examples", -1, r"config.eval.max_examples must be >= 0, got -1"),
    ("model.dropout_rate", 0.95, r"config.model.dropout_rate must be in \[0, 0.9\], got 0.95"),
    ("num_steps", 0, r"config.num_steps must be > 0, got 0"),
])
def test_bad_rnn_config_fields_are_named(field, value, match):
  config = dates_translation.rnn_config("tiny")
  config.update_from_flattened_dict({field: value})
  with pytest.raises(ValueError, match=match):
    dates_translation.validate_rnn_config(config)


def test_unknown_preset_lists_the_valid_ones():
  with pytest.raises(ValueError, match="unknown preset 'huge'; valid: default, quick, tiny, gpu"):
    dates_translation.rnn_config("huge")


@pytest.mark.parametrize("joint", [False, True])
def test_tokenizers_are_built_once_and_read_back(tmp_path, joint):
  train = [{"source": "12 Juni 1994".encode(), "target": b"1994-06-12"},
           {"source": "3:07 PM".encode(), "target": b"15:07"}]
  first = dates_translation.load_tokenizers(str(tmp_path), train, joint=joint)
  # A resumed run reads the saved vocabularies, whatever the training split now holds.
  again = dates_translation.load_tokenizers(str(tmp_path), [{"source": b"x", "target": b"y"}],
                                            joint=joint)
  assert [t.tokens(t.encode("Juni")) for t in again] == [t.tokens(t.encode("Juni")) for t in first]
  assert all(isinstance(t, data.CharTokenizer) for t in again)
  if joint:
    assert again[0] is again[1] and (tmp_path / "tokenizers" / "joint.json").exists()
  else:
    assert first[1].tokens(first[1].encode("J")) != ["J"]  # "J" only occurs in sources


@pytest.mark.parametrize("preset", dates_translation.PRESETS)
def test_training_batches_are_padded_to_the_training_sources_not_to_test_long(preset):
  """Train/validation sources have at most 35 characters; test_long's need max_input_len (72).
  The encoder scans every padded position, so training pads to 40."""
  config = dates_translation.rnn_config(preset)
  assert dates_translation.train_input_len(config) == 40
  config.data.max_input_len = 36  # never more than asked for
  assert dates_translation.train_input_len(config) == 36
