"""Camera motion over real photographs: the builder, its rendering, its
captions, and the flow-read camera motions (rolls, combinations) it needs."""

import csv
import os

import av
import cv2
import numpy as np
import pytest

from bidigen import media
from bidigen import metrics
from bidigen import scoring
from bidigen.data import camera
from bidigen.data import synthetic
from bidigen.data import videos

R, T = 64, 17
SECRET = "zebracorn"  # Only in the eval_only clip's caption.


def write_clip(path: str, rgb, seed: int) -> None:
  """5 s at 8 fps, 160x128: a textured, slowly drifting pattern in ``rgb``."""
  rng = np.random.default_rng(seed)
  tex = cv2.GaussianBlur(rng.uniform(0, 1, (160, 200)).astype(np.float32),
                         (0, 0), 2)
  tex = (tex - tex.min()) / (tex.max() - tex.min())
  with av.open(path, "w") as out:
    stream = out.add_stream("mpeg4", rate=8)
    stream.width, stream.height = 160, 128
    stream.pix_fmt = "yuv420p"
    for i in range(40):
      t = tex[i // 4:i // 4 + 128, :160, None]
      frame = (np.asarray(rgb) * (0.6 + 0.4 * t)).astype(np.uint8)
      out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
    out.mux(stream.encode())


def name_in(split: str) -> str:
  """A clip file name that hashes to ``split``."""
  return next(n for n in (f"clip{i}.mp4" for i in range(100))
              if videos.split_of(n, 0.2) == split)


@pytest.fixture(scope="module")
def clips_dir(tmp_path_factory):
  """A train clip of each split and an eval_only one (magenta, SECRET)."""
  root = tmp_path_factory.mktemp("clips")
  train, test = name_in("train"), name_in("test")
  rows = [(train, "A green meadow of tiny leaves, static camera.", "train",
           (40, 220, 60)),
          (test, "Blue water ripples as the camera pans left.", "train",
           (40, 90, 230)),
          ("private.mp4", f"A {SECRET} grazes, static camera.", "eval_only",
           (255, 0, 255))]
  for i, (name, _, _, rgb) in enumerate(rows):
    write_clip(str(root / name), rgb, i)
  with open(root / videos.CAPTIONS_CSV, "w", newline="") as f:
    csv.writer(f).writerows([("path", "caption")]
                            + [(n, c) for n, c, _, _ in rows])
  with open(root / videos.SOURCES_TSV, "w", newline="") as f:
    csv.writer(f, delimiter="\t").writerows(
        [("file", "use")] + [(n, u) for n, _, u, _ in rows])
  return str(root)


@pytest.fixture(scope="module")
def builder(tmp_path_factory, clips_dir):
  return camera.build(str(tmp_path_factory.mktemp("tfds")), "tiny", clips_dir)


def examples(builder, split):
  source = builder.as_data_source(split=split)
  return [source[i] for i in range(len(source))]


def text(e, key):
  return e[key].decode()


def test_features_and_shapes(builder):
  train, test = examples(builder, "train"), examples(builder, "test")
  assert len(train) == 24 and len(test) == 8
  for e in train + test:
    assert e["video"].shape == (T, R, R, 3) and e["video"].dtype == np.uint8
    assert e["camera"].shape == (T, 4) and e["camera"].dtype == np.float32
    assert text(e, "motion") in camera.MOTIONS
    assert (text(e, "speed") == "") == (text(e, "motion") == "static")
    assert e["video"].std() > 5, "frames must show a photograph"
  assert {text(e, "motion") for e in train} - {"static"}, "no motion at all"


def test_splits_are_disjoint_by_photograph(builder):
  train = {text(e, "photo") for e in examples(builder, "train")}
  test = {text(e, "photo") for e in examples(builder, "test")}
  assert not train & test
  assert not train & set(camera.TEST_PHOTOS)
  clip = lambda photos: {p.split("#")[0] for p in photos if "#" in p}
  assert clip(train) == {f"clips/{name_in('train')}"}
  assert clip(test) == {f"clips/{name_in('test')}"}
  # Every photo of a split is used (each in turn).
  assert train == set(camera.load_photos("train", R, builder.builder_config
                                         .clips_dir))
  assert set(camera.TEST_PHOTOS) <= test


def test_eval_only_clips_are_never_used(builder, clips_dir):
  exs = examples(builder, "train") + examples(builder, "test")
  assert not any("private" in text(e, "photo") for e in exs)
  assert not any(SECRET in text(e, k) for e in exs
                 for k in ("caption", "scene", "paraphrase"))
  # The private clip is magenta; no frame shows its colour.
  for e in exs:
    v = e["video"].astype(int)
    magenta = (v[..., 0] > 150) & (v[..., 2] > 150) & (v[..., 1] < 60)
    assert magenta.mean() < 0.01, text(e, "photo")
  # What a build would have used had the clip been `train` (the check above
  # would then fail): its frames are magenta.
  frames = media.resampled_frames(os.path.join(clips_dir, "private.mp4"),
                                   fps=1, resolution=R)
  assert ((frames[..., 0] > 150) & (frames[..., 2] > 150)
          & (frames[..., 1] < 60)).mean() > 0.5


def test_windows_stay_inside_the_photo(builder):
  for e in examples(builder, "train") + examples(builder, "test"):
    assert camera.inside(e["camera"], e["photo_size"])
    assert (e["camera"][:, 2] >= camera.MIN_SCALE * R - 1e-3).all()
  photo = np.full((100, 150, 3), 200, np.float32)
  flush = np.array([[75, 50, 100, 0.0]], np.float32)  # Touches both sides.
  np.testing.assert_array_equal(camera.render(photo, flush, R), 200)
  with pytest.raises(ValueError, match="leaves"):
    camera.render(photo, flush + [[0, 0.5, 0, 0]], R)
  with pytest.raises(ValueError, match="leaves"):  # Rolled, it sticks out.
    camera.render(photo, flush + [[0, 0, 0, 0.1]], R)


def test_frames_move_as_the_stored_camera(builder):
  """The measured flow between neighbouring frames is the one the stored
  windows imply, to a fraction of a pixel (DIS's own error on these small
  frames is about 0.1 px); and the stored frames are the stored windows of
  the photo."""
  photos = camera.load_photos("train", R, builder.builder_config.clips_dir)
  moving = 0
  for e in examples(builder, "train"):
    cam, v = e["camera"], e["video"]
    for t in (0, T // 2, T - 2):
      fl = metrics.flow(v[t], v[t + 1])[4:-4, 4:-4]  # Edges: content leaves.
      want = camera.camera_flow(cam, t, t + 1, R)[4:-4, 4:-4]
      assert np.median(np.abs(fl - want)) < 0.25, text(e, "motion")
      np.testing.assert_allclose(np.median(fl, (0, 1)),
                                 np.median(want, (0, 1)), atol=0.3)
    moving += np.abs(camera.camera_flow(cam, 0, 1, R)).max() > 0.3
    again = camera.render(photos[text(e, "photo")][0], cam, R)
    np.testing.assert_array_equal(again, v)
  assert moving >= 12


def test_flow_reads_the_motion_label(builder):
  """metrics.camera_class of the frames gives the label, and so does
  motion_class of the stored parameters (what evaluation compares)."""
  for e in examples(builder, "train") + examples(builder, "test"):
    label, cam, v = text(e, "motion"), e["camera"], e["video"]
    assert camera.motion_class(cam, R) == label
    c = T // 2
    if label == "static":
      assert metrics.camera_class(v[0], v[-1], combined=True) == "static"
      continue
    # The nearest frames whose motion is clearly above the threshold.
    gap = next(g for g in range(1, c + 1) if min(
        metrics.camera_scores(camera.camera_flow(cam, c - g, c + g, R))[m]
        for m in label.split("+")) > 2.0)
    assert metrics.camera_class(v[c - gap], v[c + gap],
                                combined=True) == label, gap
    if "+" not in label:
      assert metrics.camera_class(v[c - gap], v[c + gap]) == label


def sharpness(frame):
  gy, gx = np.gradient(frame.astype(np.float32).mean(-1))
  return float(np.hypot(gx, gy).mean())


@pytest.mark.parametrize("name", ["grass", "brick", "astronaut"])
def test_moving_frames_are_as_sharp_as_a_still_crop(name):
  """A window at sub-pixel offsets (as a moving camera's are) is as sharp
  as the still window on whole photo pixels beside it: interpolation blurs
  no frame more than another (bilinear sampling would, by up to 10%)."""
  res = 128
  photo = camera.fit_photo(synthetic.load_photo(name), res)
  for k in (1.3, 1.7, 2.0, 3.0):
    w = k * res
    x0, y0 = 10 + w / 2, 12 + w / 2  # Window corners on photo pixels.
    still = camera.render(photo, [[x0, y0, w, 0]], res)[0]
    for fx, fy in ((0.5, 0), (0, 0.5), (0.5, 0.5), (0.25, 0.75), (0.37, 0.1)):
      frame = camera.render(photo, [[x0 + fx, y0 + fy, w, 0]], res)[0]
      assert 0.96 < sharpness(frame) / sharpness(still) < 1.04, (k, fx, fy)
    if k >= 2:  # Antialiased like a camera's pixels: an area average's.
      area = cv2.resize(photo[12:12 + round(w), 10:10 + round(w)],
                        (res, res), interpolation=cv2.INTER_AREA)
      assert 0.85 < sharpness(still) / sharpness(area) < 1.15, k


def test_a_pan_of_whole_frame_pixels_shifts_the_frame():
  """Geometry to the sample: at 2 photo px per frame pixel, a window moved
  4 px right and 6 px up sees the same samples, moved 2 frame px left and
  3 down; the flow the windows imply says so."""
  photo = camera.fit_photo(synthetic.load_photo("grass"), R)
  cam = np.array([[100.3, 90.1, 2 * R, 0.0], [104.3, 84.1, 2 * R, 0.0]])
  v = camera.render(photo, cam, R)
  np.testing.assert_array_equal(v[1][3:, :-2], v[0][:-3, 2:])
  assert np.abs(v[1].astype(int) - v[0]).mean() > 5  # It did move.
  np.testing.assert_allclose(camera.camera_flow(cam, 0, 1, R),
                             np.broadcast_to([-2.0, 3.0], (R, R, 2)),
                             atol=1e-4)


def test_downscaling_does_not_alias():
  """Fine noise seen from afar averages out, as on a camera's sensor."""
  noise = np.random.default_rng(0).uniform(0, 255, (400, 400, 3))
  photo = noise.astype(np.float32)
  frame = camera.render(photo, [[200, 200, 4 * R, 0.0]], R)[0]
  area = cv2.resize(photo[200 - 2 * R:200 + 2 * R, 200 - 2 * R:200 + 2 * R],
                    (R, R), interpolation=cv2.INTER_AREA)
  assert sharpness(frame) < 1.2 * sharpness(area)
  assert sharpness(frame) < 0.4 * sharpness(photo[:R, :R])


def test_captions_carry_the_scene(builder):
  train, test = examples(builder, "train"), examples(builder, "test")
  scenes = set()
  for e in train + test:
    cap, scene = text(e, "caption"), text(e, "scene")
    assert scene and scene in cap, (cap, scene)
    assert "static camera" not in cap and "camera pans left" not in scene
    scenes.add(scene)
  assert "A green meadow of tiny leaves" in scenes  # Clip's, camera cut.
  assert "Blue water ripples" in scenes
  assert "a cat" in scenes  # chelsea's noun phrase.
  assert all(text(e, "paraphrase") == "" for e in train)
  for e in test:
    para = text(e, "paraphrase")
    assert para and para != text(e, "caption") and text(e, "scene") in para


PARAPHRASE_WORDS = ("sweeps", "push in", "pull back", "spins",
                    "nothing moves", "unhurriedly", "swiftly", "briskly")


def test_phrasings_and_unseen_paraphrases():
  for motion in camera.MOTIONS:
    speed = "" if motion == "static" else "fast"
    make = lambda seed, para: camera.caption(
        motion, speed, "a cat", "", np.random.default_rng(seed), para)
    captions = {make(s, False) for s in range(40)}
    paraphrases = {make(s, True) for s in range(40)}
    assert len(captions) >= 4, motion
    assert not captions & paraphrases
    assert not any(w in c for c in captions for w in PARAPHRASE_WORDS)
    assert all(any(w in p for w in PARAPHRASE_WORDS) for p in paraphrases)
    assert all("a cat" in c for c in captions | paraphrases)
  # Synthetic's camera paraphrases are evaluation's for both datasets.
  assert camera.caption("zoom_in", "medium", "a cat", "",
                        np.random.default_rng(0), True) == "we push in on a cat"


def test_scene_of_cuts_the_clips_camera():
  assert camera.scene_of("A cat sleeps on a sofa, static camera.") == (
      "A cat sleeps on a sofa")
  assert camera.scene_of("A bear walks as the handheld camera pans left.") == (
      "A bear walks")
  assert camera.scene_of("A handheld camera looks at a potted tree.") == (
      "A potted tree")
  assert camera.scene_of("A woman talks to the camera indoors.") == (
      "A woman talks to the camera indoors")
  assert camera.scene_of("The camera zooms out from a ship.") == ""


def test_building_is_deterministic(builder, tmp_path):
  other = camera.build(str(tmp_path), "tiny", builder.builder_config.clips_dir)
  for split in ("train", "test"):
    for x, y in zip(examples(builder, split), examples(other, split)):
      np.testing.assert_array_equal(x["video"], y["video"])
      np.testing.assert_array_equal(x["camera"], y["camera"])
      assert x["caption"] == y["caption"] and x["photo"] == y["photo"]


def test_registered_for_encode(builder, clips_dir):
  from bidigen import data
  from configs import camera as camera_config
  config = camera_config.get_config("tiny")
  assert config.data.resolution == R and config.data.num_frames == T
  config.data.data_dir = os.path.dirname(os.path.dirname(os.path.dirname(
      builder.data_dir)))
  config.data.manual_dir = clips_dir
  got = data.get_builder(config.data)
  assert "camera_photos" in data.NAMES
  assert got.data_dir == builder.data_dir  # The same data, not rebuilt.
  assert camera.camera_config("tiny").name == "tiny"
  assert got.builder_config.name.startswith("tiny_clips")


# --- metrics: rolls and combined motions ------------------------------------

def still(name="astronaut", size=96):
  im = synthetic.load_photo(name)
  return cv2.resize(im, (256, 256), interpolation=cv2.INTER_AREA), size


@pytest.mark.parametrize("degrees,want", [(4, "rotate_cw"),
                                          (-4, "rotate_ccw")])
def test_camera_class_of_rolls(degrees, want):
  """OpenCV turns content anticlockwise for positive angles: the camera
  rolls clockwise."""
  im, size = still()
  turn = cv2.warpAffine(im, cv2.getRotationMatrix2D((127.5, 127.5),
                                                    degrees, 1.0), (256, 256))
  a, b = im[80:176, 80:176], turn[80:176, 80:176]
  assert metrics.camera_class(a, b) == want
  assert metrics.camera_class(a, b, combined=True) == want


def test_camera_class_of_a_pan_with_a_zoom():
  im, _ = still()
  a = cv2.resize(im[60:200, 60:200], (96, 96), interpolation=cv2.INTER_AREA)
  # The window moves 8 px right and shrinks: content moves left and grows.
  b = cv2.resize(im[60 + 6:200 - 6, 68 + 6:208 - 6], (96, 96),
                 interpolation=cv2.INTER_AREA)
  assert metrics.camera_class(a, b, combined=True) == "pan_right+zoom_in"
  assert metrics.camera_class(a, a, combined=True) == "static"


def test_evaluation_scores_camera_adherence(builder):
  """scoring.camera_adherence on the test split's true F-4..F+4 windows
  agrees with the flow-read class against motion_class of the same frames;
  a copy of F0 scores exactly the share of static clips."""
  clips = [dict(e, video=np.asarray(e["video"]), camera=np.asarray(
      e["camera"]), motion=text(e, "motion")) for e in examples(builder,
                                                                 "test")]
  c, offsets = T // 2, list(range(-4, 5))
  truth = np.stack([e["video"][c - 4:c + 5] for e in clips])
  want = [camera.motion_class(e["camera"], R, c - 4, c + 4) for e in clips]
  read = [metrics.camera_class(t[0], t[-1], combined=True) for t in truth]
  score = scoring.camera_adherence(truth[:, None], offsets, clips)
  assert score["camera_accuracy"] == pytest.approx(
      np.mean([r == w for r, w in zip(read, want)]))
  assert score["camera_accuracy"] >= 0.75, list(zip(read, want))
  assert score["camera_speed"] == pytest.approx(1.0)  # The truth's own.
  still = np.repeat(truth[:, 4:5], 9, 1)[:, None]
  held = scoring.camera_adherence(still, offsets, clips)
  assert held["camera_accuracy"] == pytest.approx(np.mean([w == "static"
                                                           for w in want]))
  assert held["camera_speed"] < 0.05
  # The first half of each clip's motion (F-4..F0): about half the speed.
  half = np.concatenate([truth[:, :5], np.repeat(truth[:, 4:5], 4, 1)], 1)
  assert 0.3 < scoring.camera_adherence(half[:, None], offsets, clips)[
      "camera_speed"] < 0.7
  assert any(w != "static" for w in want)


def test_camera_truth_renders_the_test_clips_again(builder):
  """The output-resolution evaluation's truth: a shipped photograph's clip
  rendered again through its camera windows is the stored clip at the
  clip's own size, and the same windows at twice the size."""
  clips = [dict(e, video=np.asarray(e["video"]), camera=np.asarray(
      e["camera"]), photo=text(e, "photo")) for e in examples(builder, "test")]
  c = T // 2
  frames = range(c - 4, c + 5)
  idx, same = camera.render_again(clips, R, R, frames)
  assert idx and all(clips[i]["photo"] in camera.PHOTOS for i in idx)
  assert len(idx) < len(clips)  # The video frames' clips are skipped.
  for i, got in zip(idx, same):
    np.testing.assert_array_equal(got, clips[i]["video"][c - 4:c + 5])
  _, big = camera.render_again(clips, 2 * R, R, frames)
  assert big.shape == (len(idx), 9, 2 * R, 2 * R, 3)
  shrunk = cv2.resize(big[0, 0], (R, R), interpolation=cv2.INTER_AREA)
  assert metrics.psnr(shrunk, same[0, 0]) > 25


def test_output_resolution_task_moves_f0_at_the_output_size(builder,
                                                            tiny_run):
  """evaluate's output_resolution task on the tiny model: its truth is the
  clips rendered again at twice the size, its model frames keep that F0
  exactly, and the upscaled 64 px run and copy-F0 are scored beside them."""
  import jax
  from bidigen import evaluate
  from bidigen import sample
  from bidigen import sharding
  clips = [dict(e, video=np.asarray(e["video"]), camera=np.asarray(
      e["camera"]), photo=text(e, "photo"), motion=text(e, "motion"),
                caption=text(e, "caption"))
           for e in examples(builder, "test")]
  gen = sample.Generator(tiny_run[0], mesh=sharding.make_mesh(
      [("data", 1)], jax.devices()[:1]))
  settings = dict(steps=2, guidance=1.0, solver="ddim", motion_strength=1.0)
  run = evaluate.Run(gen, settings, 4, clips, 1, 0, output_resolution=2 * R)
  rows, (truth, model, offsets) = evaluate.output_resolution(run)
  c = T // 2
  idx, want = camera.render_again(clips, 2 * R, R, range(c - 4, c + 5))
  np.testing.assert_array_equal(truth, want)
  assert offsets == list(range(-4, 5))
  assert model.shape == (len(idx), 9, 2 * R, 2 * R, 3)
  np.testing.assert_array_equal(model[:, 4], truth[:, 4])
  assert set(rows) == {"model", "model_upscaled", "copy_f0"}
  assert rows["model"]["clips"] == len(idx)
  copy = {str(o): metrics.psnr(truth[:, 4], truth[:, 4 + o]).mean()
          for o in offsets if o}
  assert rows["copy_f0"]["psnr_by_offset"] == pytest.approx(copy)
  assert rows["model"]["psnr"] != rows["model_upscaled"]["psnr"]
  run.output_resolution = R
  with pytest.raises(ValueError, match="must be above the model's 64px"):
    evaluate.output_resolution(run)
