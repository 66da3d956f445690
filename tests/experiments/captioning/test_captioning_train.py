"""The captioning experiment: BLEU by hand, localisation on hand-made maps, word-to-object
matching, config checks, and the tiny config end to end."""

import json
import math
import os

import numpy as np
import pytest

import jax
import jax.numpy as jnp
import optax

from attention_jax import training
from attention_jax.errors import ConfigError
from experiments.captioning import train as captioning
from experiments.captioning import evaluation
from experiments.captioning import config as configs


def test_bleu_against_a_hand_computation():
  ref = "the cat is on the mat".split()
  hyp = "the cat the cat on the mat".split()
  # Clipped n-gram matches, counted by hand:
  # 1-grams of hyp: the x3, cat x2, on, mat; ref: the x2, cat, is, on, mat -> 2+1+1+1 = 5 / 7
  # 2-grams of hyp: the cat x2, cat the, cat on, on the, the mat; ref: the cat, cat is, is on,
  #   on the, the mat -> 1 + 1 + 1 = 3 / 6
  # 3-grams: the cat the, cat the cat, the cat on, cat on the, on the mat -> "on the mat" = 1 / 5
  # 4-grams: the cat the cat, cat the cat on, the cat on the, cat on the mat -> 0 / 4
  assert evaluation.corpus_bleu([ref], [hyp], 1) == pytest.approx(5 / 7)
  assert evaluation.corpus_bleu([ref], [hyp], 2) == pytest.approx(math.sqrt(5 / 7 * 3 / 6))
  assert evaluation.corpus_bleu([ref], [hyp], 3) == pytest.approx((5 / 7 * 3 / 6 * 1 / 5) ** (1 / 3))
  assert evaluation.corpus_bleu([ref], [hyp], 4) == 0.0
  assert evaluation.corpus_bleu([ref], [ref], 4) == pytest.approx(1.0)


def test_bleu_brevity_penalty_and_corpus_pooling():
  refs = ["a b c d e f".split(), "a b".split()]
  hyps = ["a b c".split(), "a b".split()]
  # every n-gram matches; c = 5, r = 8 -> BP = exp(1 - 8 / 5)
  assert evaluation.corpus_bleu(refs, hyps, 2) == pytest.approx(math.exp(1 - 8 / 5))
  # pooled, not averaged: 1-gram precision (2 + 1) / (3 + 2) over the corpus
  hyps = ["a x y".split(), "a z".split()]
  assert evaluation.corpus_bleu(refs, hyps, 1) == pytest.approx(2 / 5 * math.exp(1 - 8 / 5))
  with pytest.raises(ValueError, match="references"):
    evaluation.corpus_bleu(refs, hyps[:1])


def test_mass_in_box_on_hand_made_maps():
  grid = np.zeros((4, 4))
  grid[1, 2] = 1.0  # the cell covering pixels rows 12-23, columns 24-35 of a 48-pixel image
  assert evaluation.mass_in_box(grid, (12, 24, 24, 36), 48) == pytest.approx(1.0)
  assert evaluation.mass_in_box(grid, (12, 24, 18, 36), 48) == pytest.approx(0.5)
  uniform = np.full((4, 4), 1 / 16)
  assert evaluation.mass_in_box(uniform, (5, 7, 21, 23), 48) == pytest.approx(16 * 16 / 48 ** 2)


def test_named_objects_and_localisation_score():
  # a large red circle, a small blue square
  objects = np.array([[1, 0, 0], [0, 2, 1], [0, 0, 0], [0, 0, 0]])
  words = "a large red circle left of a small blue square".split()
  assert evaluation.named_objects(words, objects, 2) == [None, 0, 0, 0, None, None, None, 1, 1, 1]
  # a wrong size still names the object by colour and shape; an absent object names nothing
  words = "a small red circle left of a large green triangle".split()
  assert evaluation.named_objects(words, objects, 2) == [None, 0, 0, 0] + [None] * 6
  boxes = np.zeros((1, 4, 4), int)
  boxes[0, 0], boxes[0, 1] = (0, 0, 24, 24), (24, 24, 48, 48)
  maps = np.zeros((10, 2, 2))
  maps[:, 0, 0] = 1.0  # every step looks at the top-left object
  words = "a large red circle left of a small blue square".split()
  result = evaluation.localisation([words], [maps], objects[None], np.array([2]), boxes, 48)
  assert result["num_words"] == 6
  assert result["mean_mass_in_box"] == pytest.approx(0.5)
  assert result["uniform_baseline"] == pytest.approx(0.25)


@pytest.mark.parametrize("field,value,match", [
    ("model.attention_penalty", -1.0, "attention_penalty"),
    ("eval.beam_size", 0, "beam_size"),
    ("model.strides", (2, 2, 2, 2, 2), "strides"),
])
def test_bad_config_fields_are_named(field, value, match):
  config = configs.get_config("tiny")
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(ValueError, match=match):
    configs.validate(config)


@pytest.mark.parametrize("field,value", [
    ("model.attention", "sharp"),
    ("model.baseline_decay", 1.0),
    ("model.entropy_weight", -0.1),
    ("data.dataset_config", "harder"),
    ("model.context_pool", -1),
    ("model.continuity_weight", -0.1),
    ("model.reinforce_reward", "sentence"),
    ("model.reinforce_samples", 0),
])
def test_new_config_fields_are_named_in_a_one_line_config_error(field, value):
  config = configs.get_config("tiny")
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(ConfigError, match=name) as error:
    configs.validate(config)
  assert "\n" not in str(error.value)


def test_hard_weak_preset_is_the_hard_scene_with_a_shallower_encoder():
  hard, weak = configs.get_config("hard"), configs.get_config("hard_weak")
  configs.validate(weak)
  assert weak.data.dataset_config == hard.data.dataset_config == "hard"
  assert len(weak.model.channels) == 3 < len(hard.model.channels)
  assert tuple(weak.model.strides) == tuple(hard.model.strides)[:3]
  weak.model.channels, weak.model.strides = hard.model.channels, hard.model.strides
  assert weak.to_dict() == {**hard.to_dict(), "preset": "hard_weak"}


def test_hard_scene_needs_room_for_its_longest_caption():
  config = configs.get_config("hard")
  configs.validate(config)
  config.data.max_caption_len = 24
  with pytest.raises(ConfigError, match="max_caption_len"):
    configs.validate(config)


def test_cell_metric_counts_whole_cells_and_its_uniform_baseline():
  grid = np.zeros((12, 12))  # 4-pixel cells of a 48-pixel image
  grid[2, 3] = 1.0  # pixels rows 8-11, columns 12-15
  box = (10, 14, 20, 24)  # a 10-pixel object whose corner covers a quarter of that cell
  assert evaluation.mass_in_box(grid, box, 48) == pytest.approx(0.25)
  assert evaluation.cell_mass_in_box(grid, box, 48) == pytest.approx(1.0)
  cells = evaluation.cells_touching_box((12, 12), box, 48)
  assert cells.sum() == 9 and cells[2:5, 3:6].all()  # rows 8-19, columns 12-23
  uniform = np.full((12, 12), 1 / 144)
  assert evaluation.cell_mass_in_box(uniform, box, 48) == pytest.approx(9 / 144)
  assert evaluation.mass_in_box(uniform, box, 48) == pytest.approx(100 / 48 ** 2)
  # a cell next to the box (not covering any of its pixels) does not count
  grid[2, 3], grid[5, 3] = 0.0, 1.0
  assert evaluation.cell_mass_in_box(grid, box, 48) == 0.0


def test_localisation_reports_both_metrics_and_pointing():
  objects = np.array([[1, 0, 0], [0, 2, 1], [0, 0, 0], [0, 0, 0]])
  boxes = np.zeros((1, 4, 4), int)
  boxes[0, 0], boxes[0, 1] = (2, 2, 18, 18), (30, 30, 40, 40)
  words = "a large red circle next to a small blue square".split()
  maps = np.zeros((10, 12, 12))
  maps[:4, 1, 1] = 1.0  # the first phrase: a cell inside the red circle's box
  maps[4:, 7, 7] = 1.0  # the second: the cell of pixels 28-31, a corner of the square's box
  result = evaluation.localisation([words], [maps], objects[None], np.array([2]), boxes, 48)
  assert result["num_words"] == 6
  assert result["mean_mass_in_box"] == pytest.approx((3 * 1.0 + 3 * 4 / 16) / 6)
  assert result["mean_cell_mass_in_box"] == pytest.approx(1.0)
  assert result["pointing_accuracy"] == 1.0
  assert result["cell_uniform_baseline"] == pytest.approx((3 * 25 / 144 + 3 * 9 / 144) / 6)


def test_baseline_is_the_moving_average_of_the_reward():
  params = {"w": jnp.zeros(2), captioning.BASELINE: jnp.zeros(())}
  state = training.create_train_state(params, optax.sgd(0.1), seed=0)

  def fake_step(state, batch):  # zero gradients; the batch's summed reward over 4 examples
    grads = jax.tree.map(jnp.zeros_like, state.params)
    return state.apply_gradients(grads=grads), {"reward_sum": 4.0 * batch, "example_count":
                                                jnp.float32(4.0)}

  step = captioning.with_baseline_update(fake_step, 0.9)
  state, _ = step(state, jnp.float32(-10.0))
  assert float(state.params[captioning.BASELINE]) == pytest.approx(-10.0)  # the first batch
  state, _ = step(state, jnp.float32(-20.0))
  assert float(state.params[captioning.BASELINE]) == pytest.approx(0.9 * -10.0 + 0.1 * -20.0)
  assert set(captioning.model_params(state.params)) == {"w"}


def test_reward_to_go_baseline_is_the_moving_average_per_word():
  params = {"w": jnp.zeros(2), captioning.BASELINE: jnp.zeros(())}
  state = training.create_train_state(params, optax.sgd(0.1), seed=0)

  def fake_step(state, batch):  # zero gradients; the batch's summed reward over 8 words
    grads = jax.tree.map(jnp.zeros_like, state.params)
    return state.apply_gradients(grads=grads), {"reward_sum": batch, "token_count":
                                                jnp.float32(8.0), "example_count":
                                                jnp.float32(2.0)}

  config = configs.get_config("tiny")
  config.model.reinforce_reward = "to_go"
  step = captioning.baseline_update(config)(fake_step)
  state, _ = step(state, jnp.float32(-16.0))
  assert float(state.params[captioning.BASELINE]) == pytest.approx(-2.0)
  state, _ = step(state, jnp.float32(-8.0))
  assert float(state.params[captioning.BASELINE]) == pytest.approx(0.9 * -2.0 + 0.1 * -1.0)


def test_initial_baseline_follows_the_reward_and_the_sample_count():
  config = configs.get_config("tiny")
  assert captioning.initial_baseline(config) is None  # soft attention
  config.model.attention = "hard"
  assert config.model.reinforce_samples == 4
  assert captioning.initial_baseline(config) is None  # the siblings are the baseline
  config.model.reinforce_samples = 1  # Xu et al.'s single sample: the moving average
  assert captioning.initial_baseline(config).shape == ()


@pytest.mark.slow  # compiles the scanned decoder twice
def test_several_samples_per_image_decode_each_caption_from_one_encoding():
  config = configs.get_config("tiny")
  config.model.attention = "hard"
  config.model.reinforce_reward = "to_go"
  model = captioning.make_model(config)
  arrays = {"image": np.random.default_rng(0).integers(0, 255, (2, 48, 48, 3), np.uint8),
            "decoder_inputs": np.array([[1, 5, 6, 0], [1, 7, 0, 0]], np.int32),
            "targets": np.array([[5, 6, 2, 0], [7, 2, 0, 0]], np.int32),
            "target_mask": np.array([[1, 1, 1, 0], [1, 1, 0, 0]], bool)}
  params = model.init(jax.random.key(0), arrays["image"], arrays["decoder_inputs"])["params"]
  loss, sums = captioning.losses(model, params, arrays, 0.0, deterministic=False,
                                 rng=jax.random.key(1), reinforce_samples=3,
                                 reinforce_reward="to_go")
  assert float(sums["example_count"]) == 6.0 and float(sums["token_count"]) == 15.0
  assert np.isfinite(float(loss))
  grads = jax.grad(lambda p: captioning.losses(
      model, p, arrays, 0.0, deterministic=False, rng=jax.random.key(1), reinforce_samples=3,
      reinforce_reward="to_go")[0])(params)
  # the score-function term reaches the attention's scoring parameters
  assert float(jnp.abs(grads["attend"]["score"]).sum()) > 0


def test_content_targets_mark_the_size_colour_and_shape_words():
  from attention_jax.data import shapes_captions
  for tok, relation in ((shapes_captions.WordTokenizer(), "left of"),
                        (shapes_captions.tokenizer_for("hard"), "next to")):
    ids = tok.encode(f"a large red circle {relation} a small blue square", add_eos=True)
    marked = np.asarray(captioning.content_targets(jnp.asarray([ids], jnp.int32), tok))[0]
    assert marked.tolist() == [False, True, True, True, False, False, False, True, True, True,
                               False]


def test_unknown_preset():
  with pytest.raises(ValueError, match="preset"):
    configs.get_config("huge")


@pytest.mark.slow
def test_tiny_run_writes_eval_json_and_pngs(tmp_path):
  config = configs.get_config("tiny")
  config.data.data_dir = str(tmp_path / "tfds")
  workdir = str(tmp_path / "run")
  results = captioning.run(config, workdir)
  with open(os.path.join(workdir, "eval.json")) as f:
    saved = json.load(f)
  for key in ("bleu_1", "bleu_4", "exact_caption_accuracy", "localisation"):
    assert key in saved["test"]
  assert 0 <= results["test"]["bleu_1"] <= 100
  assert os.path.exists(os.path.join(workdir, "attention_0.png"))
  assert os.path.exists(os.path.join(workdir, "captions.png"))


@pytest.mark.slow
@pytest.mark.parametrize("attention", ["hard", "none"])
def test_tiny_hard_scene_run_with_hard_and_no_attention(tmp_path, attention):
  config = configs.get_config("tiny")
  config.data.data_dir = str(tmp_path / "tfds")
  config.data.dataset_config = "hard_small"
  config.data.max_caption_len = 36
  config.model.attention = attention
  config.num_steps = 10
  config.checkpoint_every = 10
  config.eval.beam_size = 2  # the beams carry hard attention's (choice, distribution) pairs
  workdir = str(tmp_path / "run")
  results = captioning.run(config, workdir)
  assert 0 <= results["test"]["bleu_1"] <= 100
  assert "mean_cell_mass_in_box" in results["test"]["localisation"]
  assert ("localisation_of_distribution" in results["test"]) == (attention == "hard")
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    lines = [json.loads(line) for line in f]
  assert ("reward" in lines[0]) == (attention == "hard")
  assert os.path.exists(os.path.join(workdir, "attention_0.png"))


def test_overlay_marks_the_location_hard_attention_chose(tmp_path):
  from attention_jax import plotting
  maps = np.zeros((2, 12, 12))
  maps[0, 3, 4] = maps[1, 7, 1] = 1.0
  path = plotting.plot_attention_overlay(np.zeros((48, 48, 3), np.uint8), maps, ["a", "red"],
                                         str(tmp_path / "hard.png"), locations=[(3, 4), (7, 1)])
  assert os.path.getsize(path) > 0


def test_summarize_lists_each_run_and_the_mean_and_std(tmp_path):
  from experiments.captioning import summarize
  workdirs = []
  for seed, (bleu, cells) in enumerate([(99.0, 0.6), (98.0, 0.4)]):
    loc = {"mean_mass_in_box": cells - 0.1, "ratio_to_uniform": 5.0, "mean_cell_mass_in_box": cells,
           "cell_ratio_to_uniform": 6.0, "pointing_accuracy": 0.7,
           **{f"mean_cell_mass_in_box_{k}_words": cells for k in ("size", "colour", "shape")}}
    results = {"config": {"seed": seed, "model": {"attention": "soft"}},
               "test": {"bleu_4": bleu, "exact_caption_accuracy": 0.9, "decoding": "greedy",
                        "localisation": loc}}
    workdir = tmp_path / f"s{seed}"
    workdir.mkdir()
    (workdir / "eval.json").write_text(json.dumps(results))
    workdirs.append(str(workdir))
  text = summarize.table(workdirs)
  lines = text.splitlines()
  assert len(lines) == 5 and lines[2].startswith("| 0 | soft | greedy | 99.00")
  assert "0.500 +- 0.141" in lines[-1] and "98.50 +- 0.71" in lines[-1]
  # soft attention: the distribution column is the map's; hard attention reports its own
  assert lines[2].split(" | ")[10] == "0.600"
  results["config"]["model"]["attention"] = "hard"
  results["test"]["localisation_of_distribution"] = {"mean_cell_mass_in_box": 0.25}
  (tmp_path / "s1" / "eval.json").write_text(json.dumps(results))
  assert summarize.table(workdirs).splitlines()[3].split(" | ")[10] == "0.250"
