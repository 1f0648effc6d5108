"""Real video as TFDS builders (array_record): WebVid, and any folder of
videos with a captions CSV.

Each video is resampled to ``fps``, centre-cropped and resized to
``resolution``, and cut into up to ``clips_per_video`` non-overlapping clips
of ``num_frames`` frames. Examples have the synthetic data's ``video`` and
``caption`` (plus ``source``, the video's id, and ``start``, its first frame
at ``fps``), so the grain pipeline and the trainer read them unchanged.
Frames are stored as JPEG: raw 256px clips would take ~50 TB for WebVid-2M.

A video goes wholly to train or test, so clips of one video never straddle
the splits. A folder with a SOURCES.tsv is split by it: each video's ``use``
is a licence fact (``eval_only`` videos may not train a distributed model),
so those go to test and ``train`` ones to train, and a video it does not
list is an error rather than a guess. Any other folder is split by a hash
of the video id, so adding videos moves none of the others.
Missing, unreadable and too-short videos are skipped and counted, never
fatal; the count is printed when the build ends.

Layouts of ``manual_dir`` (local paths):
  webvid: the WebVid results CSV(s), any ``*.csv`` with columns videoid,
    name (the caption), page_dir, ..., and the downloaded videos as
    ``{page_dir}/{videoid}.mp4`` or ``{videoid}.mp4``.
  video_folder: ``captions.csv`` with columns path,caption (path relative to
    the folder or absolute; an empty caption is a valid, uncaptioned clip)
    and the videos it names; videos it does not name are not used.
"""

import abc
import collections
import csv
import dataclasses
import glob
import hashlib
import os

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from bidigen import media

CAPTIONS_CSV = "captions.csv"
# Beside captions.csv, optional: each video's origin, licence and ``use``.
SOURCES_TSV = "SOURCES.tsv"
USES = ("train", "eval_only")
SPLITS = ("hash", "uses")


def bucket(key: str) -> float:
  """A video id's place in [0, 1): a hash, so stable across runs."""
  return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8],
                        "big") / 2**64


def split_of(key: str, test_fraction: float) -> str:
  return "test" if bucket(key) < test_fraction else "train"


@dataclasses.dataclass
class VideoConfig(tfds.core.BuilderConfig):
  resolution: int = 256
  num_frames: int = 33
  fps: float = 8
  clips_per_video: int = 4
  test_fraction: float = 0.005
  split: str = "hash"  # Or "uses": by the folder's SOURCES.tsv.


def video_config(*, resolution: int, num_frames: int, fps: float,
                 clips_per_video: int, test_fraction: float,
                 split: str = "hash") -> VideoConfig:
  """A config named by everything that changes the examples, so data
  prepared with other settings is never mistaken for this one.

  ``split="uses"`` data ends in ``_uses`` (test_fraction plays no part),
  hash-split data in ``_test{fraction}``: one folder prepared both ways
  gives two datasets, and neither is read for the other.
  """
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
  tail = "uses" if split == "uses" else f"test{test_fraction:g}"
  name = (f"{resolution}px_{num_frames}f_{fps:g}fps_{clips_per_video}clips_"
          + tail)
  return VideoConfig(name=name, resolution=resolution, num_frames=num_frames,
                     fps=fps, clips_per_video=clips_per_video,
                     test_fraction=test_fraction, split=split)


def split_by(folder: str) -> str:
  """How ``folder`` is split: "uses" when it has a SOURCES.tsv."""
  path = os.path.join(folder, SOURCES_TSV)
  return "uses" if os.path.isfile(path) else "hash"


class _VideoBuilder(tfds.core.GeneratorBasedBuilder):
  """Clips of captioned videos; subclasses list the videos."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [VideoConfig(name="default")]

  @abc.abstractmethod
  def entries(self, folder: str):
    """Yields (id, path, caption) for each listed video, ids unique."""

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    shape = (c.num_frames, c.resolution, c.resolution, 3)
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
        "video": tfds.features.Video(shape, encoding_format="jpeg"),
        "caption": tfds.features.Text(),
        "source": tfds.features.Text(),
        "start": tfds.features.Tensor(shape=(), dtype=np.int32),
    }))

  def _split_generators(self, dl_manager):
    folder = os.fspath(dl_manager.manual_dir)
    self.stats = {}
    self.splits = self.assign(folder)
    splits = {"train": self._generate_examples(folder, "train")}
    # An empty split cannot be written: a small folder may have no test.
    if any(self.splits[key] == "test"
           for key, path, _ in self.entries(folder) if os.path.exists(path)):
      splits["test"] = self._generate_examples(folder, "test")
    else:
      logging.warning("no video of %s goes to the test split (%s)", folder,
                      self.reason("test"))
    return splits

  def assign(self, folder: str) -> dict[str, str]:
    """{video id: "train" or "test"} for every listed video.

    Checked before any video is decoded, so a folder that cannot be split
    fails at once.

    Raises:
      ValueError: the folder's SOURCES.tsv and the config disagree on how
        to split, a listed video has no row in SOURCES.tsv, or a row's use
        is unknown (one line each).
    """
    c = self.builder_config
    uses = read_uses(folder)
    if c.split == "hash":
      if split_by(folder) == "uses":  # Hashing would train eval_only ones.
        raise ValueError(
            f"{folder} has a {SOURCES_TSV}, so it must be split by its use "
            f"column, but this config ({c.name}) splits by hash: make the "
            "builder with split='uses' (bidigen.data.get_builder does)")
      return {key: split_of(key, c.test_fraction)
              for key, _, _ in self.entries(folder)}
    if not uses:
      raise ValueError(f"{folder} has no {SOURCES_TSV} (or it lists no "
                       f"video) but config {c.name} splits by use")
    out = {}
    for key, _, _ in self.entries(folder):
      if key not in uses:
        raise ValueError(
            f"{key} is listed in {folder} but not in its {SOURCES_TSV}: add "
            "its row (source, licence, use) before preparing")
      out[key] = "test" if uses[key] == "eval_only" else "train"
    return out

  def reason(self, split: str) -> str:
    """Why videos went to ``split``, for the prepare summary."""
    c = self.builder_config
    if c.split == "uses":
      use = "eval_only" if split == "test" else "train"
      return f"use={use} in {SOURCES_TSV}"
    side = "<" if split == "test" else ">="
    return f"hash of the video id {side} test_fraction {c.test_fraction:g}"

  def _generate_examples(self, folder: str, split: str):
    c = self.builder_config
    stats = self.stats.setdefault(split, collections.Counter())
    for key, path, caption in self.entries(folder):
      if self.splits[key] != split:
        continue
      stats["videos"] += 1
      if not os.path.exists(path):
        stats["missing"] += 1
        continue
      try:
        frames = media.resampled_frames(path, fps=c.fps, resolution=c.resolution,
                                  max_frames=c.clips_per_video * c.num_frames)
      except Exception as e:  # Any decoder failure is a bad file, not a bad run.
        logging.warning("skipping unreadable video %s: %s", path, e)
        stats["unreadable"] += 1
        continue
      n = len(frames) // c.num_frames
      if not n:
        stats["short"] += 1
        continue
      stats["clips"] += n
      for i in range(n):
        start = i * c.num_frames
        yield f"{key}#{i}", {
            "video": frames[start:start + c.num_frames], "caption": caption,
            "source": key, "start": np.int32(start)}
    logging.info("%s %s: %s", self.name, split, self.summary(split))
    if not stats["clips"]:
      raise ValueError(f"no usable video for the {split} split in {folder}: "
                       f"{self.summary(split)}")

  def summary(self, split: str | None = None) -> str:
    """'skipped 2 of 5 videos: 1 unreadable, 1 shorter than ...'."""
    s = sum((v for k, v in self.stats.items() if split in (None, k)),
            collections.Counter())
    c = self.builder_config
    reasons = {"missing": "missing", "unreadable": "unreadable",
               "short": f"shorter than {c.num_frames} frames at {c.fps:g} fps"}
    parts = [f"{s[k]} {words}" for k, words in reasons.items() if s[k]]
    skipped = sum(s[k] for k in reasons)
    return (f"skipped {skipped} of {s['videos']} videos"
            + (": " + ", ".join(parts) if parts else "")
            + f"; {s['clips']} clips")


class BidigenWebvid(_VideoBuilder):
  """WebVid clips (named apart from TFDS's own ``webvid``, which differs)."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Put the WebVid results CSV (columns videoid, name, page_dir, ...) in
  manual_dir and the downloaded videos as {page_dir}/{videoid}.mp4 or
  {videoid}.mp4 beside it.
  """

  def entries(self, folder):
    seen = set()
    for name in csv_files(folder):
      with open(name, newline="", encoding="utf-8") as f:
        rows = csv.DictReader(f)
        _require_columns(rows, ("videoid", "name"), name)
        for row in rows:
          key = row["videoid"]
          path = os.path.join(folder, row.get("page_dir") or "", f"{key}.mp4")
          if not os.path.exists(path):
            path = os.path.join(folder, f"{key}.mp4")
          if key not in seen:  # The 2M CSVs are subsets of the 10M ones.
            seen.add(key)
            yield key, path, row["name"] or ""


class BidigenVideoFolder(_VideoBuilder):
  """Clips of any folder of videos named in its captions.csv."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
  Put {CAPTIONS_CSV} (columns path,caption) and the videos it names in
  manual_dir.
  """

  def entries(self, folder):
    name = os.path.join(folder, CAPTIONS_CSV)
    seen = set()
    with open(name, newline="", encoding="utf-8") as f:
      rows = csv.DictReader(f)
      _require_columns(rows, ("path", "caption"), name)
      for row in rows:
        key = os.path.normpath(row["path"])
        if key not in seen:
          seen.add(key)
          yield key, os.path.join(folder, key), row["caption"] or ""


def read_uses(folder: str) -> dict[str, str]:
  """{video path as captions.csv names it (normalised): its ``use``} from the
  folder's SOURCES.tsv (columns file, use; tab-separated), or {} without one.

  ``train`` videos may train a model that is distributed; ``eval_only``
  ones may only evaluate one (their licences say so), so they never enter a
  training set. Any other value is a one-line error.
  """
  name = os.path.join(folder, SOURCES_TSV)
  if not os.path.isfile(name):
    return {}
  uses = {}
  with open(name, newline="", encoding="utf-8") as f:
    rows = csv.DictReader(f, delimiter="\t")
    _require_columns(rows, ("file", "use"), name)
    for row in rows:
      if row["use"] not in USES:
        raise ValueError(f"{name}: {row['file']} has use={row['use']!r}; "
                         f"known: {', '.join(USES)}")
      uses[os.path.normpath(row["file"])] = row["use"]
  return uses


def _require_columns(rows: csv.DictReader, names, path: str) -> None:
  missing = [n for n in names if n not in (rows.fieldnames or ())]
  if missing:
    raise ValueError(f"{path} lacks the column(s) {', '.join(missing)} "
                     f"(it has: {', '.join(rows.fieldnames or ())})")


def csv_files(folder: str) -> list[str]:
  return sorted(glob.glob(os.path.join(glob.escape(folder), "*.csv")))


BUILDERS = {"webvid": BidigenWebvid, "video_folder": BidigenVideoFolder}


def check_manual_dir(kind: str, folder: str) -> None:
  """One-line errors for a folder that cannot be built from.

  Raises:
    FileNotFoundError: the folder, or its CSV, does not exist.
  """
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"video folder {folder} does not exist "
                            "(config.data.manual_dir)")
  if kind == "webvid" and not csv_files(folder):
    raise FileNotFoundError(f"no WebVid results CSV (*.csv) in {folder}")
  if kind == "video_folder":
    path = os.path.join(folder, CAPTIONS_CSV)
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{path} not found: a video folder needs a "
                              "captions CSV with columns path,caption")


def builder(kind: str, data_dir: str, **config) -> _VideoBuilder:
  """The (maybe unprepared) builder of ``kind`` for a config's settings
  (``video_config``'s arguments; pass ``split=split_by(manual_dir)``)."""
  return BUILDERS[kind](data_dir=data_dir, config=video_config(**config),
                        file_format="array_record")


def prepare(b: _VideoBuilder, manual_dir: str) -> _VideoBuilder:
  """Builds ``b`` from the videos in ``manual_dir``; prints the skip count
  and, per split, how many videos went there and why."""
  check_manual_dir("webvid" if isinstance(b, BidigenWebvid)
                   else "video_folder", manual_dir)
  print(f"preparing {b.name}/{b.builder_config.name} from {manual_dir} into "
        f"{b.data_dir} ...", flush=True)
  b.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir))
  print(f"{b.name}: {b.summary()}", flush=True)
  for split in ("train", "test"):
    if split in b.stats:
      print(f"  {split}: {b.stats[split]['videos']} videos "
            f"({b.reason(split)}); {b.summary(split)}", flush=True)
  return b
