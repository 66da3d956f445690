"""Shapes captions: determinism, captions of hand-made scenes, boxes around the drawn pixels."""

import numpy as np
import pytest

from attention_jax.data import shapes_captions

Obj = shapes_captions.SceneObject


def test_generation_is_deterministic_and_splits_are_disjoint():
  a = list(shapes_captions.generate_split("train", 30, seed=1))
  b = list(shapes_captions.generate_split("train", 30, seed=1))
  for x, y in zip(a, b):
    assert x["caption"] == y["caption"]
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["boxes"], y["boxes"])
  c = list(shapes_captions.generate_split("train", 30, seed=2))
  assert [x["caption"] for x in a] != [x["caption"] for x in c]
  train = {x["image"].tobytes() for x in shapes_captions.generate_split("train", 300, seed=1)}
  test = {x["image"].tobytes() for x in shapes_captions.generate_split("test", 50, seed=1)}
  assert not train & test


def test_caption_of_hand_made_scenes_reads_left_to_right():
  objects = [Obj("small", "blue", "square", 30, 30), Obj("large", "red", "circle", 2, 1)]
  assert shapes_captions.caption(objects) == "a large red circle left of a small blue square"
  record = shapes_captions.example(objects)
  assert record["caption"] == "a large red circle left of a small blue square"
  assert record["num_objects"] == 2
  np.testing.assert_array_equal(record["objects"][:2], [[1, 0, 0], [0, 2, 1]])
  assert shapes_captions.parse_caption(record["caption"]) == [("large", "red", "circle"),
                                                 ("small", "blue", "square")]
  assert shapes_captions.parse_caption("a large red") is None


def _colour_pixels(image, colour):
  return np.all(image == np.array(shapes_captions.COLOUR_RGB[colour], np.uint8), axis=-1)


@pytest.mark.parametrize("shape", shapes_captions.SHAPES)
def test_box_is_the_tight_box_of_the_drawn_pixels(shape):
  obj = Obj("large", "green", shape, 5, 20)
  image, boxes = shapes_captions.render([obj])
  ys, xs = np.nonzero(_colour_pixels(image, "green"))
  np.testing.assert_array_equal(boxes[0], [ys.min(), xs.min(), ys.max() + 1, xs.max() + 1])
  assert tuple(boxes[0]) == (5, 20, 21, 36)  # every shape touches all sides of its square


def test_boxes_contain_each_object_in_generated_data():
  for record in shapes_captions.generate_split("validation", 40, seed=3):
    n = int(record["num_objects"])
    attrs = shapes_captions.parse_caption(record["caption"])
    assert len(attrs) == n
    for i, (_, colour, _) in enumerate(attrs):
      ymin, xmin, ymax, xmax = record["boxes"][i]
      inside = _colour_pixels(record["image"][ymin:ymax, xmin:xmax], colour)
      assert inside.any()
      # the object's own pixels sit in its box: its colour fills the box's border rows/columns
      assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
    centres = [(b[1] + b[3]) / 2 for b in record["boxes"][:n]]
    assert centres == sorted(centres)


def test_tokenizer_round_trip_and_teacher_forcing_arrays():
  tok = shapes_captions.WordTokenizer()
  text = "a small red circle left of a large blue triangle"
  assert tok.decode(tok.encode(text, add_bos=True, add_eos=True)) == text
  arrays = shapes_captions.encode_captions([text, "a large green square"], max_len=12)
  assert arrays["targets"][1, 4] == shapes_captions.EOS_ID
  assert arrays["decoder_inputs"][1, 0] == shapes_captions.BOS_ID
  shifted = arrays["target_mask"][:, 1:]
  np.testing.assert_array_equal(arrays["decoder_inputs"][:, 1:][shifted],
                                arrays["targets"][:, :-1][shifted])
  assert arrays["target_mask"].sum() == 11 + 5
  with pytest.raises(ValueError, match="max_len"):
    shapes_captions.encode_captions([text], max_len=5)


def test_tfds_data_source_reads_without_tensorflow(tmp_path):
  config = shapes_captions.ShapesCaptionsConfig(name="t", num_train=8, num_validation=4, num_test=4)
  sources = shapes_captions.load_shapes_captions(None, tmp_path, config)
  arrays = shapes_captions.load_arrays(sources["test"])
  assert arrays["image"].shape == (4, shapes_captions.IMAGE_SIZE, shapes_captions.IMAGE_SIZE, 3)
  assert arrays["image"].dtype == np.uint8
  expected = sorted(r["caption"] for r in shapes_captions.generate_split("test", 4, config.seed))
  assert sorted(arrays["caption"]) == expected
