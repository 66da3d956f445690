"""The long-range task (recall and match): labels right by construction, deterministic, balanced."""

import numpy as np
import pytest

from experiments.sequence_processing import input_pipeline as distance_task


def test_hand_made_examples_are_labelled_by_the_marked_and_last_token():
  # num_symbols 3: plain 1..3, marked 4..6 (symbol s marked = s + 3).
  inputs = np.array([[1, 5, 3, 2],    # marked 2 at d=2, last 2 -> equal
                     [6, 1, 1, 1],    # marked 3 at d=3, last 1 -> not equal
                     [2, 2, 4, 1]])   # marked 1 at d=1, last 1 -> equal
  np.testing.assert_array_equal(distance_task.label_of(inputs, 3, "match"), [1, 0, 1])
  np.testing.assert_array_equal(distance_task.label_of(inputs, 3, "recall"), [1, 2, 0])
  np.testing.assert_array_equal(distance_task.distance_of(inputs, 3), [2, 3, 1])


def test_recall_marks_the_label_symbol():
  task = distance_task.DistanceTask(length=6, num_symbols=3)
  assert task.num_classes == 3 and task.vocab_size == 7
  batch = task.make([1, 5, 3], [2, 0, 1], np.random.default_rng(0))
  inputs = batch["inputs"]
  assert inputs[0, 4] == 6 and inputs[1, 0] == 4 and inputs[2, 2] == 5
  assert (np.sum(inputs > 3, axis=1) == 1).all()
  full = task.batch(0, 0, 3000)
  np.testing.assert_array_equal(distance_task.label_of(full["inputs"], 3), full["labels"])
  assert np.all(np.bincount(full["labels"], minlength=3) > 900)


def test_make_places_the_marked_token_and_sets_the_label():
  task = distance_task.DistanceTask(length=10, num_symbols=4, mode="match")
  distances = np.array([1, 5, 9, 3, 9])
  labels = np.array([1, 0, 1, 0, 0])
  batch = task.make(distances, labels, np.random.default_rng(0))
  inputs = batch["inputs"]
  assert inputs.shape == (5, 10) and inputs.dtype == np.int32
  assert ((inputs >= 1) & (inputs < task.vocab_size)).all()
  np.testing.assert_array_equal(distance_task.distance_of(inputs, 4), distances)
  np.testing.assert_array_equal(distance_task.label_of(inputs, 4, "match"), labels)
  assert (inputs[:, -1] <= 4).all()  # the last token is never marked


def test_batches_are_a_pure_function_of_seed_and_step():
  task = distance_task.DistanceTask(length=16, mode="match")
  a, b = task.batch(3, 7, 32), task.batch(3, 7, 32)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])
  assert not np.array_equal(task.batch(3, 8, 32)["inputs"], a["inputs"])
  assert not np.array_equal(task.batch(4, 7, 32)["inputs"], a["inputs"])
  np.testing.assert_array_equal(distance_task.label_of(a["inputs"], 8, "match"), a["labels"])
  np.testing.assert_array_equal(distance_task.distance_of(a["inputs"], 8), a["distances"])


def test_labels_balanced_and_distances_cover_the_range():
  task = distance_task.DistanceTask(length=12, max_distance=6, mode="match")
  batch = task.batch(0, 0, 4000)
  assert 0.45 < batch["labels"].mean() < 0.55
  assert set(batch["distances"]) == set(range(1, 7))


def test_test_set_has_every_distance_both_labels_and_is_deterministic():
  task = distance_task.DistanceTask(length=9, num_symbols=3, mode="match")
  test = task.test_set(0, 4)
  np.testing.assert_array_equal(test["distances"], np.repeat(np.arange(1, 9), 4))
  np.testing.assert_array_equal(test["labels"], np.tile([0, 1, 0, 1], 8))
  np.testing.assert_array_equal(distance_task.label_of(test["inputs"], 3, "match"),
                                test["labels"])
  np.testing.assert_array_equal(task.test_set(0, 4)["inputs"], test["inputs"])
  train_rows = {tuple(r) for s in range(50) for r in task.batch(0, s, 64)["inputs"]}
  # Different streams: the test rows are not the training rows (collisions only by chance).
  assert sum(tuple(r) in train_rows for r in test["inputs"]) < 4


@pytest.mark.parametrize("kwargs,match", [
    (dict(length=1), "length must be >= 2, got 1"),
    (dict(length=5, num_symbols=1), "num_symbols must be >= 2"),
    (dict(length=5, max_distance=5), r"max_distance must be in \[1, length - 1 = 4\], got 5"),
    (dict(length=5, mode="copy"), r"mode must be one of \('recall', 'match'\), got 'copy'"),
])
def test_bad_arguments_are_named(kwargs, match):
  with pytest.raises(ValueError, match=match):
    distance_task.DistanceTask(**kwargs)


def test_bad_make_and_batch_arguments_are_named():
  task = distance_task.DistanceTask(length=5, mode="match")
  rng = np.random.default_rng(0)
  with pytest.raises(ValueError, match=r"distances must be in \[1, length - 1 = 4\]"):
    task.make([5], [1], rng)
  with pytest.raises(ValueError, match=r"labels must be in \[0, 1\] for mode 'match'"):
    task.make([2], [2], rng)
  with pytest.raises(ValueError, match="batch_size must be >= 1"):
    task.batch(0, 0, 0)
  with pytest.raises(ValueError, match="seed and step must be >= 0"):
    task.batch(0, -1, 4)
