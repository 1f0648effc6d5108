"""The synthetic TFDS builder and the grain pipeline."""

import numpy as np
import pytest

from bidigen.data import pipeline
from bidigen.data import synthetic


@pytest.fixture(scope="module")
def builder(tmp_path_factory):
  return synthetic.build(str(tmp_path_factory.mktemp("tfds")), "tiny")


def examples(builder, split):
  source = builder.as_data_source(split=split)
  return [source[i] for i in range(len(source))]


def test_features_shapes_and_pixels(builder):
  r = builder.builder_config.resolution
  assert r == 64  # The tiny config: TAEF2's 8x8 latents.
  ex = examples(builder, "train")
  assert len(ex) == 32 and len(examples(builder, "test")) == 8
  for e in ex:
    assert e["video"].shape == (17, r, r, 3) and e["video"].dtype == np.uint8
    assert e["video"].std() > 10, "frames must show a photograph"
    assert e["object_positions"].shape == (17, 3, 2)
    assert e["camera"].shape == (17, 3)
    n = int(e["num_objects"])
    assert 0 <= n <= 3
    present = e["object_positions"][:, :n]
    assert (present >= 0).all() and (present <= 1).all()
    assert (e["object_positions"][:, n:] == -1).all()
    assert (e["object_color"][n:] == -1).all()
    assert (e["object_color"][:n] >= 0).all()


def test_positions_match_pixels_and_motion(builder):
  """A present object's colour is at its stored position, and it moves in
  its stored direction."""
  r = builder.builder_config.resolution
  checked = 0
  for e in examples(builder, "train"):
    n = int(e["num_objects"])
    for i in range(n):
      for t in (0, 8, 16):
        x, y = e["object_positions"][t, i]
        # Skip objects hidden under a later-drawn object.
        others = [e["object_positions"][t, j] for j in range(i + 1, n)]
        if any(np.hypot(*(np.asarray(o) - (x, y))) < 0.3 for o in others):
          continue
        px = e["video"][t, int(y * r), int(x * r)].astype(int)
        assert np.abs(px - e["object_rgb"][i]).max() < 40, (px, e["caption"])
        checked += 1
      delta = e["object_positions"][-1, i] - e["object_positions"][0, i]
      direction = synthetic.DIRECTIONS[int(e["object_direction"][i])]
      expected = {"left": (-1, 0), "right": (1, 0), "up": (0, -1),
                  "down": (0, 1)}[direction]
      assert np.sign(delta).tolist() == list(expected)
  assert checked > 10


def test_camera_moves_as_labelled(builder):
  for e in examples(builder, "train"):
    motion = synthetic.CAMERA_MOTIONS[int(e["camera_motion"])]
    dx, dy, ds = e["camera"][-1] - e["camera"][0]
    if motion == "pan_right":
      assert dx > 0.1 and abs(dy) < 1e-6
    elif motion == "pan_left":
      assert dx < -0.1
    elif motion == "pan_up":
      assert dy < -0.1
    elif motion == "pan_down":
      assert dy > 0.1
    elif motion == "zoom_in":
      assert ds < -0.1  # The crop shrinks: content grows.
    elif motion == "zoom_out":
      assert ds > 0.1
    else:
      assert abs(dx) + abs(dy) + abs(ds) < 1e-6


def test_captions_name_colours_and_motion(builder):
  for e in examples(builder, "train"):
    caption = e["caption"].decode()
    assert caption
    for i in range(int(e["num_objects"])):
      assert synthetic.PALETTE[int(e["object_color"][i])][0] in caption
    direction_words = {"left", "right", "up", "upward", "down", "downward",
                       "top", "bottom", "leftward", "rightward"}
    if int(e["num_objects"]):
      assert direction_words & set(caption.replace(";", "").split())


def test_several_phrasings_per_meaning():
  meta = {"background": "chelsea", "camera_motion": "pan_right",
          "objects": [("red", "disc", "left", "quickly")]}
  captions = {synthetic.caption_for(meta, np.random.default_rng(s))
              for s in range(30)}
  assert len(captions) >= 5
  assert all("red" in c and "cat" in c for c in captions)
  paraphrases = {synthetic.caption_for(meta, np.random.default_rng(s),
                                       paraphrase=True) for s in range(30)}
  assert not paraphrases & captions


def test_splits_use_disjoint_photographs(builder):
  assert not set(synthetic.TRAIN_PHOTOS) & set(synthetic.TEST_PHOTOS)
  train = {e["background"].decode() for e in examples(builder, "train")}
  test = {e["background"].decode() for e in examples(builder, "test")}
  assert train <= set(synthetic.TRAIN_PHOTOS)
  assert test <= set(synthetic.TEST_PHOTOS)


def test_building_is_deterministic(builder, tmp_path):
  other = synthetic.build(str(tmp_path), "tiny")
  a, b = examples(builder, "train"), examples(other, "train")
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["video"], y["video"])
    assert x["caption"] == y["caption"]


def test_loader_determinism_and_process_shards(builder):
  first = lambda seed: next(iter(pipeline.make_loader(
      builder, "train", global_batch_size=8, seed=seed)))
  a, b, c = first(0), first(0), first(1)
  np.testing.assert_array_equal(a["video"], b["video"])
  assert list(a["caption"]) == list(b["caption"])
  assert list(a["caption"]) != list(c["caption"])
  assert isinstance(a["caption"][0], str)
  # Two processes' shards are disjoint and cover the split.
  seen = []
  for index in range(2):
    loader = pipeline.make_loader(builder, "train", global_batch_size=8,
                                  seed=0, shuffle=False, num_epochs=1,
                                  shard_index=index, shard_count=2)
    batches = list(loader)
    assert all(len(x["caption"]) == 4 for x in batches)
    seen.append({cap for x in batches for cap in x["camera"][:, 0, 0]})
  assert not seen[0] & seen[1]
  assert len(seen[0] | seen[1]) == 32
  with pytest.raises(ValueError, match="not divisible"):
    pipeline.make_loader(builder, "train", global_batch_size=7, seed=0,
                         shard_count=2)


def test_unprepared_dataset_is_a_clear_error(tmp_path):
  builder = synthetic.BidigenSynthetic(data_dir=str(tmp_path), config="tiny",
                                       file_format="array_record")
  with pytest.raises(FileNotFoundError, match="--mode=prepare"):
    pipeline.require_prepared(builder)
