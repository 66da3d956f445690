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


# --- The hard scene ---------------------------------------------------------------------------

Hard = shapes_captions.HardObject


def test_hard_generation_is_deterministic_and_splits_are_disjoint():
  a = list(shapes_captions.generate_hard_split("train", 12, seed=1))
  b = list(shapes_captions.generate_hard_split("train", 12, seed=1))
  for x, y in zip(a, b):
    assert x["caption"] == y["caption"]
    for key in ("image", "boxes", "objects", "relations"):
      np.testing.assert_array_equal(x[key], y[key])
  c = list(shapes_captions.generate_hard_split("train", 12, seed=2))
  assert [x["caption"] for x in a] != [x["caption"] for x in c]
  train = {x["image"].tobytes() for x in shapes_captions.generate_hard_split("train", 60, seed=1)}
  test = {x["image"].tobytes() for x in shapes_captions.generate_hard_split("test", 10, seed=1)}
  assert not train & test


def test_default_scene_is_unchanged_by_the_hard_config():
  # The first default-config training caption and image checksum, as drawn before the hard
  # config existed (seed 4, the default config's): the default data must not move.
  first = next(shapes_captions.generate_split("train", 1, seed=4))
  assert first["caption"] == _FIRST_DEFAULT_CAPTION
  assert int(first["image"].astype(np.int64).sum()) == _FIRST_DEFAULT_IMAGE_SUM


def _hard_records(n=40, seed=3):
  return list(shapes_captions.generate_hard_split("validation", n, seed=seed))


def test_hard_boxes_are_inside_the_image_and_hold_the_object():
  size = shapes_captions.IMAGE_SIZE
  records = _hard_records()
  assert max(int(r["num_objects"]) for r in records) >= 4
  for record in records:
    n = int(record["num_objects"])
    phrases, _ = shapes_captions.parse_hard_caption(record["caption"])
    for i, (_, colour, _) in enumerate(phrases):
      ymin, xmin, ymax, xmax = record["boxes"][i]
      assert 0 <= ymin < ymax <= size and 0 <= xmin < xmax <= size
      inside = _colour_pixels(record["image"][ymin:ymax, xmin:xmax], colour)
      # the box is the tight box of visible pixels of the object's colour
      assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
    assert not record["boxes"][n:].any() and np.all(record["relations"][n - 1:] == -1)


def test_hard_captions_parse_back_to_the_scene():
  for record in _hard_records():
    n = int(record["num_objects"])
    phrases, relations = shapes_captions.parse_hard_caption(record["caption"])
    assert len(phrases) == n and len(relations) == n - 1
    attrs = [(shapes_captions.SIZES[s], shapes_captions.COLOURS[c], shapes_captions.SHAPES[h])
             for s, c, h in record["objects"][:n]]
    assert phrases == attrs
    assert relations == [shapes_captions.HARD_RELATIONS[r] for r in record["relations"][:n - 1]]
    boxes = record["boxes"][:n]
    # each relation is the one the two boxes show
    assert relations == [shapes_captions.relation(a, b) for a, b in zip(boxes, boxes[1:])]
    tok = shapes_captions.HardWordTokenizer()
    assert tok.decode(tok.encode(record["caption"], add_eos=True)) == record["caption"]


def test_hard_scene_of_hand_made_objects():
  objects = [Hard("large", "red", "square", 4, 4, 14),      # top left
             Hard("small", "blue", "circle", 30, 10, 10),   # below it
             Hard("small", "green", "triangle", 31, 21, 9),  # right next to the circle
             Hard("large", "yellow", "circle", 30, 36, 12)]  # far right
  record = shapes_captions.hard_example(objects)
  assert record["caption"] == ("a large red square above a small blue circle next to a small "
                               "green triangle left of a large yellow circle")
  np.testing.assert_array_equal(record["boxes"][0], [4, 4, 18, 18])
  # a later object hides part of an earlier one: the box shrinks to the visible pixels
  occluded = [Hard("large", "red", "square", 10, 10, 16), Hard("large", "blue", "square", 10, 22, 16)]
  record = shapes_captions.hard_example(occluded)
  np.testing.assert_array_equal(record["boxes"][:2], [[10, 10, 26, 22], [10, 22, 26, 38]])
  assert record["caption"] == "a large red square next to a large blue square"
  with pytest.raises(ValueError, match="ambiguous"):  # two overlapping objects of one colour
    shapes_captions.hard_example([Hard("large", "red", "square", 10, 10, 16),
                                  Hard("small", "red", "circle", 12, 20, 10)])
  assert shapes_captions.parse_hard_caption("a large red square above") is None
  assert shapes_captions.parse_hard_caption("a large red square near a small red circle") is None


def test_hard_config_reads_through_tfds(tmp_path):
  config = shapes_captions.ShapesCaptionsConfig(name="th", num_train=6, num_validation=3,
                                                num_test=3, scene="hard")
  arrays = shapes_captions.load_arrays(shapes_captions.load_shapes_captions("test", tmp_path,
                                                                            config))
  assert arrays["objects"].shape == (3, 6, 3) and arrays["relations"].shape == (3, 5)
  expected = sorted(r["caption"] for r in shapes_captions.generate_hard_split("test", 3,
                                                                               config.seed))
  assert sorted(arrays["caption"]) == expected


_FIRST_DEFAULT_CAPTION = ("a large red circle left of a large yellow triangle left of a small yellow "
                          "triangle")
_FIRST_DEFAULT_IMAGE_SUM = 304646
