"""The synthetic TFDS builder and the grain pipeline, on the tiny config."""

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
from skimage.registration import phase_cross_correlation

from bidigen.data import pipeline
from bidigen.data import synthetic

T, R = 17, 32
DIRECTION_WORDS = {"left": {"left", "leftward"},
                   "right": {"right", "rightward"},
                   "up": {"up", "upward", "top"},
                   "down": {"down", "downward", "bottom"}}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def builder(data_dir):
  return synthetic.build(data_dir, "tiny")


def examples(builder, split):
  source = builder.as_data_source(split=split)
  return [source[i] for i in range(len(source))]


def words(caption):
  return set(caption.replace(";", " ").replace(",", " ").split())


def test_every_feature_has_its_shape_and_dtype(builder):
  expected = {
      "video": ((T, R, R, 3), np.uint8), "num_objects": ((), np.int32),
      "object_color": ((3,), np.int32), "object_rgb": ((3, 3), np.uint8),
      "object_direction": ((3,), np.int32),
      "object_speed": ((3,), np.float32), "object_shape": ((3,), np.int32),
      "object_positions": ((T, 3, 2), np.float32),
      "camera": ((T, 3), np.float32), "camera_motion": ((), np.int32),
  }
  train, test = examples(builder, "train"), examples(builder, "test")
  assert len(train) == 32 and len(test) == 8
  assert pipeline.num_examples(builder, "train") == 32
  for e in train + test:
    assert set(e) == set(expected) | {"caption", "background"}
    for key, (shape, dtype) in expected.items():
      # Scalars come back as python ints; the loader restores the dtype.
      value = np.asarray(e[key], dtype if np.ndim(e[key]) == 0 else None)
      assert value.shape == shape and value.dtype == dtype, key
    assert isinstance(e["caption"], bytes) and e["caption"]
    assert e["background"].decode() in synthetic.NOUNS
    video = e["video"]
    assert video.std() > 20 and int(video.max()) - int(video.min()) > 150
    n = int(e["num_objects"])
    assert 0 <= n <= 3
    present = e["object_positions"][:, :n]
    assert (present >= 0).all() and (present <= 1).all()
    assert (e["object_positions"][:, n:] == -1).all()
    for key in ("object_color", "object_direction", "object_shape"):
      assert (e[key][n:] == -1).all() and (e[key][:n] >= 0).all(), key
    assert (e["object_speed"][:n] > 0).all()
    assert 0 <= int(e["camera_motion"]) < len(synthetic.CAMERA_MOTIONS)
    cx, cy, size = e["camera"].T
    assert (cx > 0).all() and (cx < 1).all() and (cy > 0).all()
    assert (cy < 1).all() and (size > 0.3).all() and (size < 0.9).all()


def test_object_colour_is_drawn_at_its_stored_position(builder):
  checked = 0
  for e in examples(builder, "train"):
    n = int(e["num_objects"])
    for i in range(n):
      rgb = np.asarray(synthetic.PALETTE[int(e["object_color"][i])][1])
      np.testing.assert_array_equal(e["object_rgb"][i], rgb)
      for t in range(T):
        x, y = e["object_positions"][t, i]
        # Objects drawn later cover earlier ones.
        later = e["object_positions"][t, i + 1:n]
        if (np.hypot(*(later - (x, y)).T) < 0.25).any():
          continue
        pixel = e["video"][t, int(y * R), int(x * R)].astype(int)
        assert np.abs(pixel - rgb).max() <= 2, (t, pixel, e["caption"])
        checked += 1
  assert checked > 200


def test_objects_move_in_their_stored_direction_and_speed(builder):
  moved = 0
  for e in examples(builder, "train"):
    for i in range(int(e["num_objects"])):
      delta = e["object_positions"][-1, i] - e["object_positions"][0, i]
      direction = synthetic.DIRECTIONS[int(e["object_direction"][i])]
      np.testing.assert_array_equal(np.sign(delta), synthetic.UNIT[direction])
      np.testing.assert_allclose(np.abs(delta).sum(),
                                 (T - 1) * e["object_speed"][i], rtol=1e-5)
      # Frame T // 2 is F0: offsets count from it.
      step = e["object_positions"][T // 2 + 1, i] - e["object_positions"][
          T // 2, i]
      np.testing.assert_allclose(np.abs(step).sum(), e["object_speed"][i],
                                 rtol=1e-4)
      moved += 1
  assert moved > 10


def test_camera_parameters_follow_the_label(builder):
  motions = set()
  for e in examples(builder, "train") + examples(builder, "test"):
    motion = synthetic.CAMERA_MOTIONS[int(e["camera_motion"])]
    motions.add(motion)
    dx, dy, ds = e["camera"][-1] - e["camera"][0]
    expected = {"static": (0, 0, 0), "pan_left": (-1, 0, 0),
                "pan_right": (1, 0, 0), "pan_up": (0, -1, 0),
                "pan_down": (0, 1, 0), "zoom_in": (0, 0, -1),
                "zoom_out": (0, 0, 1)}[motion]
    # Pans travel >= 1.5% of the short side per frame; zooms ~3%.
    assert np.allclose(np.sign(np.round((dx, dy, ds), 6)), expected), motion
    assert max(abs(dx), abs(dy), abs(ds)) > 0.1 or motion == "static"
  assert len(motions) >= 4


@pytest.mark.parametrize("motion,shift", [
    ("pan_right", (0, 1)), ("pan_left", (0, -1)), ("pan_down", (1, 0)),
    ("pan_up", (-1, 0))])
def test_camera_pan_moves_content_the_other_way(motion, shift):
  """pan_right: the camera moves right, so the picture slides left."""
  photo = synthetic._shrink(synthetic.load_photo("astronaut"))
  cam = synthetic.camera_path(motion, T, 1.0, np.random.default_rng(0))
  frames = [synthetic._crop(photo, *c, 64).mean(-1) for c in cam[[4, 12]]]
  # The shift that registers frame 12 back onto frame 4.
  measured = phase_cross_correlation(*frames, upsample_factor=4)[0]
  assert np.array_equal(np.sign(np.round(measured)), shift), measured
  assert np.abs(measured).max() > 3


def test_captions_name_colours_directions_and_camera(builder):
  camera_words = {"static": set(), "pan_left": {"left"},
                  "pan_right": {"right"}, "pan_up": {"up"},
                  "pan_down": {"down"}, "zoom_in": {"in"},
                  "zoom_out": {"out"}}
  for e in examples(builder, "train") + examples(builder, "test"):
    caption = e["caption"].decode()
    assert 0 < len(caption.split()) < 25
    assert synthetic.NOUNS[e["background"].decode()] in caption
    for i in range(int(e["num_objects"])):
      assert synthetic.PALETTE[int(e["object_color"][i])][0] in caption
      direction = synthetic.DIRECTIONS[int(e["object_direction"][i])]
      assert DIRECTION_WORDS[direction] & words(caption), caption
    motion = synthetic.CAMERA_MOTIONS[int(e["camera_motion"])]
    assert camera_words[motion] <= words(caption), caption
    if motion != "static":
      assert {"pans", "panning", "tilts", "zooms", "zooming"} & words(caption)


def test_several_phrasings_and_unseen_paraphrases():
  meta = {"background": "chelsea", "camera_motion": "pan_right",
          "objects": [("red", "disc", "left", "quickly")]}
  rngs = [np.random.default_rng(s) for s in range(40)]
  captions = {synthetic.caption_for(meta, r) for r in rngs}
  assert len(captions) >= 5
  assert all("red" in c and "a cat" in c and "right" in c for c in captions)
  paraphrases = {synthetic.paraphrase_caption(meta, r) for r in rngs}
  assert len(paraphrases) >= 3 and not paraphrases & captions
  assert all("red" in c and "a cat" in c for c in paraphrases)


def test_captions_stay_short_and_paraphrases_disjoint_from_training():
  """Every meaning, even three objects and a moving camera, fits < 25
  words; no paraphrase ever equals a training caption."""
  rng = np.random.default_rng(0)
  train, para = set(), set()
  for _ in range(3000):
    objects = [(synthetic.PALETTE[c][0], str(rng.choice(synthetic.SHAPES)),
                str(rng.choice(synthetic.DIRECTIONS)),
                str(rng.choice(list(synthetic.SPEEDS))))
               for c in rng.choice(7, rng.integers(0, 4), replace=False)]
    meta = {"background": str(rng.choice(list(synthetic.NOUNS))),
            "camera_motion": str(rng.choice(synthetic.CAMERA_MOTIONS)),
            "objects": objects}
    train.add(synthetic.caption_for(meta, rng))
    para.add(synthetic.paraphrase_caption(meta, rng))
  assert max(len(c.split()) for c in train | para) < 25
  assert not train & para


def test_paraphrase_from_a_stored_example(builder):
  for e in examples(builder, "test"):
    meta = synthetic.meta_from_example(e)
    assert meta["background"] == e["background"].decode()
    assert len(meta["objects"]) == int(e["num_objects"])
    caption = synthetic.paraphrase_caption(e, np.random.default_rng(0))
    assert caption == synthetic.paraphrase_caption(
        meta, np.random.default_rng(0))
    for color, _, _, _ in meta["objects"]:
      assert color in caption


def test_splits_use_disjoint_photographs(builder):
  assert not set(synthetic.TRAIN_PHOTOS) & set(synthetic.TEST_PHOTOS)
  assert len(synthetic.TRAIN_PHOTOS) >= 2 * len(synthetic.TEST_PHOTOS) - 1
  train = {e["background"].decode() for e in examples(builder, "train")}
  test = {e["background"].decode() for e in examples(builder, "test")}
  assert train <= set(synthetic.TRAIN_PHOTOS) and len(train) > 3
  assert test <= set(synthetic.TEST_PHOTOS) and len(test) > 1


def test_building_twice_gives_identical_data(builder, tmp_path):
  other = synthetic.build(str(tmp_path), "tiny")
  for split in ("train", "test"):
    for x, y in zip(examples(builder, split), examples(other, split),
                    strict=True):
      assert x.keys() == y.keys()
      for key in x:
        np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def first_batch(builder, seed, **kwargs):
  return next(iter(pipeline.make_loader(
      builder, "train", global_batch_size=8, seed=seed, **kwargs)))


def fingerprint(video):
  return hashlib.sha1(video.tobytes()).hexdigest()


def test_loader_batches_are_deterministic_in_the_seed(builder):
  a, b, c = (first_batch(builder, s) for s in (0, 0, 1))
  assert a["video"].shape == (8, T, R, R, 3)
  assert a["object_positions"].shape == (8, T, 3, 2)
  assert a["caption"].shape == (8,) and isinstance(a["caption"][0], str)
  dtypes = {k: f.np_dtype for k, f in builder.info.features.items()}
  for key in ("num_objects", "camera_motion", "object_rgb", "camera"):
    assert a[key].dtype == dtypes[key], key
  assert isinstance(a["background"][0], str)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  assert [fingerprint(v) for v in a["video"]] != [
      fingerprint(v) for v in c["video"]]


def test_loader_iterator_state_resumes_the_stream(builder):
  make = lambda: iter(pipeline.make_loader(builder, "train",
                                           global_batch_size=8, seed=3))
  it = make()
  for _ in range(5):  # Past the first epoch of 4 batches.
    next(it)
  state = it.get_state()
  expected = [next(it)["caption"] for _ in range(3)]
  resumed = make()
  resumed.set_state(state)
  assert [list(next(resumed)["caption"]) for _ in range(3)] == [
      list(x) for x in expected]


def test_process_shards_are_disjoint_and_cover_the_split(builder):
  seen = []
  for index in range(2):
    loader = pipeline.make_loader(builder, "train", global_batch_size=8,
                                  seed=0, num_epochs=1, shard_index=index,
                                  shard_count=2)
    batches = list(loader)
    assert len(batches) == 4
    assert all(len(x["caption"]) == 4 for x in batches)
    seen.append({fingerprint(v) for x in batches for v in x["video"]})
  assert not seen[0] & seen[1]
  assert len(seen[0] | seen[1]) == 32
  with pytest.raises(ValueError, match="not divisible"):
    pipeline.make_loader(builder, "train", global_batch_size=7, seed=0,
                         shard_count=2)


def test_reading_needs_no_tensorflow(builder, data_dir):
  del builder  # Prepared.
  code = (
      "import sys\n"
      "from bidigen.data import pipeline, synthetic\n"
      f"b = synthetic.BidigenSynthetic(data_dir={data_dir!r}, "
      "config='tiny', file_format='array_record')\n"
      "x = next(iter(pipeline.make_loader(b, 'test', global_batch_size=4, "
      "seed=0)))\n"
      "assert x['video'].shape == (4, 17, 32, 32, 3)\n"
      "print('tensorflow' in sys.modules)\n")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run([sys.executable, "-c", code], cwd=root,
                        capture_output=True, text=True, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip().splitlines()[-1] == "False"


def test_unprepared_dataset_is_a_clear_error(tmp_path):
  builder = synthetic.BidigenSynthetic(data_dir=str(tmp_path), config="tiny",
                                       file_format="array_record")
  with pytest.raises(FileNotFoundError) as info:
    pipeline.require_prepared(builder)
  message = str(info.value)
  assert "\n" not in message and str(tmp_path) in message
  assert ("python -m bidigen.main --config=configs/synthetic.py "
          "--mode=prepare --workdir=") in message
  with pytest.raises(FileNotFoundError, match="--mode=prepare"):
    pipeline.make_loader(builder, "train", global_batch_size=8, seed=0)
