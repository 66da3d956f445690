"""Shape pairs: images drawn where they should be, labels right by construction, deterministic."""

import numpy as np
import pytest

from experiments.cnn_self_attention import input_pipeline as shape_pairs


def test_hand_made_image_has_the_glyphs_in_their_quadrants():
  task = shape_pairs.ShapePairs(size=12, noise=0.0)
  plus, cross = shape_pairs.SHAPE_NAMES.index("plus"), shape_pairs.SHAPE_NAMES.index("cross")
  kinds = np.array([[plus, cross, cross, plus]])
  offsets = np.array([[[0, 0], [1, 0], [0, 1], [1, 1]]])
  image = task.render(kinds, offsets)[0, ..., 0]
  np.testing.assert_array_equal(image[0:5, 0:5], shape_pairs.GLYPHS[plus])
  np.testing.assert_array_equal(image[1:6, 6:11], shape_pairs.GLYPHS[cross])
  np.testing.assert_array_equal(image[6:11, 1:6], shape_pairs.GLYPHS[cross])
  np.testing.assert_array_equal(image[7:12, 7:12], shape_pairs.GLYPHS[plus])
  assert image.sum() == 2 * shape_pairs.GLYPHS[plus].sum() + 2 * shape_pairs.GLYPHS[cross].sum()
  np.testing.assert_array_equal(shape_pairs.label_of(kinds), [1])
  np.testing.assert_array_equal(shape_pairs.label_of([[0, 1, 1, 2]]), [0])


def test_glyphs_are_distinct():
  flat = shape_pairs.GLYPHS.reshape(len(shape_pairs.GLYPHS), -1)
  assert len({tuple(row) for row in flat}) == len(shape_pairs.SHAPE_NAMES)


def test_batches_deterministic_labels_right_and_balanced():
  task = shape_pairs.ShapePairs(size=16)
  a, b = task.batch(0, 5, 400), task.batch(0, 5, 400)
  np.testing.assert_array_equal(a["images"], b["images"])
  assert not np.array_equal(task.batch(0, 6, 400)["images"], a["images"])
  assert a["images"].shape == (400, 16, 16, 1) and a["images"].dtype == np.float32
  assert 0.0 <= a["images"].min() and a["images"].max() == 1.0
  np.testing.assert_array_equal(shape_pairs.label_of(a["kinds"]), a["labels"])
  assert 0.4 < a["labels"].mean() < 0.6
  # The distractor corners are independent of the label.
  same_distractors = a["kinds"][:, 1] == a["kinds"][:, 2]
  assert abs(same_distractors[a["labels"] == 1].mean() - same_distractors[a["labels"] == 0]
             .mean()) < 0.15


def test_test_set_alternates_labels_and_repeats():
  task = shape_pairs.ShapePairs(size=10)
  test = task.test_set(1, 6)
  np.testing.assert_array_equal(test["labels"], [0, 1, 0, 1, 0, 1])
  np.testing.assert_array_equal(shape_pairs.label_of(test["kinds"]), test["labels"])
  np.testing.assert_array_equal(task.test_set(1, 6)["images"], test["images"])


@pytest.mark.parametrize("kwargs,match", [
    (dict(size=9), "size must be even and >= 10, got 9"),
    (dict(size=8), "size must be even and >= 10, got 8"),
    (dict(noise=1.0), r"noise must be in \[0, 1\), got 1.0"),
])
def test_bad_arguments_are_named(kwargs, match):
  with pytest.raises(ValueError, match=match):
    shape_pairs.ShapePairs(**kwargs)


def test_bad_render_arguments_are_named():
  task = shape_pairs.ShapePairs(size=12)
  with pytest.raises(ValueError, match=r"offsets must be in \[0, 1\] for size 12"):
    task.render([[0, 0, 0, 0]], [[[0, 0], [0, 2], [0, 0], [0, 0]]])
  with pytest.raises(ValueError, match=r"kinds must be \[batch, 4\]"):
    task.render([[0, 0, 0]], [[[0, 0]] * 3])
  with pytest.raises(ValueError, match="batch_size must be >= 1"):
    task.batch(0, 0, 0)
