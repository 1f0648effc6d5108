"""Camera motion over real photographs as a TFDS builder (array_record).

Each clip is a square crop window moving over one photograph: a pan (left,
right, up, down), a zoom (in, out), a roll (clockwise, anticlockwise), a pan
with a zoom, or a still camera, at one of three speeds. Nothing in the scene
moves, so the clip's only motion is the camera's, and its parameters are
stored per frame: evaluation compares the motion read from generated frames'
optical flow with them (``motion_class``).

Rendering is what a camera of the clip's resolution would see: the window
stays inside the photograph (no borders) and always covers at least
``MIN_SCALE`` photo pixels per frame pixel, so frames are downscaled, never
upscaled; the photo is low-passed by a Gaussian as wide as a frame pixel's
footprint (antialiasing) and sampled at sub-pixel positions with Lanczos, so
a moving frame is as sharp as a still one.

Photographs: those shipped inside scikit-image's and scikit-learn's wheels
(``PHOTOS``; the ones scikit-image must download are left out), and, given a
folder of clips (``clips_dir``: captions.csv and SOURCES.tsv as in
bidigen/data/videos.py), ``frames_per_clip`` frames of each clip whose
SOURCES.tsv ``use`` is ``train``. Other clips (``eval_only``, or not listed)
are never opened. Test photographs are synthetic.TEST_PHOTOS (so neither
dataset trains on the other's test photos) and the frames of clips whose path
hashes below ``test_fraction`` (videos.split_of): a photo, and every frame of
a clip, is wholly in one split.

Captions come from templates, several phrasings per motion and speed, with
the scene: the photo's noun phrase, or the clip's caption with what it says
about the clip's own camera removed (``scene_of``). Test examples also have
``paraphrase``, the same meaning in wordings no training caption uses.
"""

import csv
import dataclasses
import hashlib
import os
import re

from absl import logging
import cv2
import numpy as np
import tensorflow_datasets as tfds

from bidigen import media
from bidigen import metrics
from bidigen.data import synthetic
from bidigen.data import videos

PANS = ("pan_left", "pan_right", "pan_up", "pan_down")
ZOOMS = ("zoom_in", "zoom_out")
ROLLS = ("rotate_cw", "rotate_ccw")
# Synthetic's motion names plus rolls and a pan with a zoom; a combination's
# parts are in metrics.CAMERA_AXES's order, as metrics.camera_class writes it.
MOTIONS = (synthetic.CAMERA_MOTIONS + ROLLS
           + tuple(f"{p}+{z}" for p in PANS for z in ZOOMS))
_MOTION_P = np.array([0.12] + [0.11] * 4 + [0.10] * 2 + [0.06] * 2
                     + [0.12 / 8] * 8)
# Per frame: pan (fraction of the window's width), zoom (log of the window's
# size), roll (radians).
SPEEDS = {"slow": (0.01, 0.012, np.radians(0.4)),
          "medium": (0.02, 0.024, np.radians(0.8)),
          "fast": (0.035, 0.04, np.radians(1.4))}
# Frame pixels per photo pixel, at most 1 / MIN_SCALE; photos whose short
# side is under MIN_SIDE frame widths are too small to move over.
MIN_SCALE = 1.25
MIN_SIDE = 1.5
MAX_SIDE = 4  # Photos are shrunk to at most this many frame widths.
ANTIALIAS = 0.35  # Gaussian sigma per sqrt(scale**2 - 1) photo pixels.

# Photographs shipped in scikit-image's and scikit-learn's wheels (not the
# synthetic ones, the binary horse, the 102 px microaneurysms crop, nor `cat`,
# which is chelsea again).
PHOTOS = ("astronaut", "brick", "camera", "cell", "chelsea", "china",
          "clock", "coffee", "coins", "flower", "grass", "gravel", "hubble",
          "immunohistochemistry", "moon", "motorcycle", "page", "retina",
          "rocket", "text")
TEST_PHOTOS = synthetic.TEST_PHOTOS
NOUNS = {**synthetic.NOUNS, "cell": "cells under a microscope",
         "clock": "a wall clock", "motorcycle": "a motorcycle",
         "page": "a page of old print", "retina": "the retina of an eye",
         "text": "a sign with printed letters"}

_VERBS = {"pan_left": ("pans left", "pans to the left"),
          "pan_right": ("pans right", "pans to the right"),
          "pan_up": ("tilts up", "pans up"),
          "pan_down": ("tilts down", "pans down"),
          "zoom_in": ("zooms in",), "zoom_out": ("zooms out",),
          "rotate_cw": ("rotates clockwise", "rolls clockwise"),
          "rotate_ccw": ("rotates counterclockwise", "rolls anticlockwise")}
_GERUNDS = {"pan_left": ("panning left",), "pan_right": ("panning right",),
            "pan_up": ("panning up", "tilting up"),
            "pan_down": ("panning down", "tilting down"),
            "zoom_in": ("zooming in",), "zoom_out": ("zooming out",),
            "rotate_cw": ("rotating clockwise", "turning clockwise"),
            "rotate_ccw": ("rotating counterclockwise",
                           "turning anticlockwise")}
_PREPS = {**{p: ("over", "across") for p in PANS}, "zoom_in": ("on",),
          "zoom_out": ("from",), **{r: ("over",) for r in ROLLS}}
_ADVERBS = {"slow": ("slowly", "gently"), "medium": ("", "steadily"),
            "fast": ("quickly", "fast", "rapidly")}
# With an empty adverb these give synthetic's camera phrasings back.
_MOVING = ("the camera {verbs} {adv} {prep} {bg}",
           "{gerunds} {adv} {prep} {bg}", "{bg}, the camera {verbs} {adv}")
_STILL = ("{bg}", "a still shot of {bg}", "{bg}, the camera is still",
          "a static shot of {bg}", "{bg}, the camera does not move")
# Evaluation's unseen wordings: synthetic's, and the same voice for rolls.
_PARAPHRASES = {**synthetic.PARAPHRASE_CAMERA,
                "rotate_cw": ("the view spins clockwise across {bg}",),
                "rotate_ccw": ("the view spins counterclockwise across {bg}",)}
_PARA_ADVERBS = {"slow": ("unhurriedly",), "medium": ("",),
                 "fast": ("swiftly", "briskly")}


def scene_of(caption: str) -> str:
  """A clip's caption without what it says about that clip's camera (a still
  photo of it moves only as our camera does): "A cat sleeps, static camera."
  -> "A cat sleeps". Empty when camera motion is left that cannot be cut."""
  s = caption.strip().rstrip(".").strip()
  s = re.sub(r"^an? (handheld )?camera (looks at|circles|follows) ", "", s,
             flags=re.I)
  s = re.sub(r",\s*which (pans|follows|zooms|tilts)\b.*$", "", s)
  s = re.sub(r"\s+as (the|a) (handheld )?camera\b.*$", "", s)
  s = re.sub(r",\s*(static (close-up|wide shot)|close-up static shot)$",
             ", close-up", s)
  s = re.sub(r",\s*(static|handheld|fixed)\b[\w\s-]*\b(camera|shot)$", "", s)
  s = re.sub(r",\s*dashboard view$", "", s)
  if re.search(r"\bcamera\b.*\b(pans?|panning|zoom\w*|tilts?|follows?|arcs?"
               r"|circles?|pulls? back|tracks?)\b|\b(static|handheld) "
               r"(\w+ )?(camera|shot)", s, re.I):
    return ""
  return s[:1].upper() + s[1:]


def caption(motion: str, speed: str, noun: str, sentence: str, rng,
            paraphrase: bool = False) -> str:
  """One phrasing of the clip's meaning, in training's wordings or (with
  ``paraphrase``) in evaluation's unseen ones. The scene is ``sentence`` (a
  clip's description) if given, else the noun phrase ``noun``."""
  parts = [] if motion == "static" else motion.split("+")
  pick = lambda options: str(rng.choice(options))
  if paraphrase and parts:
    # "the view sweeps left swiftly across {bg} while we push in".
    clauses = [pick(_PARAPHRASES[m]) for m in parts]
    head, tail = re.fullmatch(r"(.*?)( (?:across|on|from) \{bg\})",
                              clauses[0]).groups()
    template = f"{head} {pick(_PARA_ADVERBS[speed])}{tail}"
    for extra in clauses[1:]:
      template += " while " + re.sub(r" (across|on|from) \{bg\}$", "", extra)
  elif paraphrase:
    template = pick(_PARAPHRASES["static"])
  elif parts:
    template = pick(_MOVING).format(
        verbs=" and ".join(pick(_VERBS[m]) for m in parts),
        gerunds=" and ".join(pick(_GERUNDS[m]) for m in parts),
        adv=pick(_ADVERBS[speed]), prep=pick(_PREPS[parts[-1]]), bg="{bg}")
  else:
    template = pick(_STILL)
  if not sentence:
    text = template.format(bg=noun or "the scene")
  elif template.startswith("{bg}"):
    text = template.format(bg=sentence)
  else:  # "zooming in on the scene: A cat sleeps on a sofa".
    text = template.format(bg="the scene") + ": " + sentence
  return " ".join(text.split())


# --- Camera paths and rendering --------------------------------------------

def _extent(width: np.ndarray, angle: np.ndarray) -> np.ndarray:
  """Half the size of a rotated square window's bounding box."""
  return width / 2 * (np.abs(np.cos(angle)) + np.abs(np.sin(angle)))


def inside(camera: np.ndarray, photo_size, tol: float = 1e-3) -> bool:
  """Whether every window of ``camera`` [T, 4] lies in the photo (w, h)."""
  cx, cy, width, angle = np.asarray(camera, np.float64).T
  e = _extent(width, angle)
  w, h = photo_size
  return bool(np.all(cx - e >= -tol) and np.all(cx + e <= w + tol)
              and np.all(cy - e >= -tol) and np.all(cy + e <= h + tol))


def camera_path(motion: str, speed: str, num_frames: int, photo_size,
                resolution: int, rng):
  """Per frame (cx, cy, width, angle): [T, 4] float32, or None when the
  photo is too small for this motion at this speed.

  The window's centre (cx, cy) and side ``width`` are in photo pixels (x to
  the right, y down, the photo spanning [0, w] x [0, h]); ``angle`` is the
  camera's roll in radians, clockwise on screen. Frame t has offset
  t - T // 2 from the centre frame F0; motion is uniform in those offsets.
  """
  parts = [] if motion == "static" else motion.split("+")
  pan, zoom, roll = SPEEDS[speed] if parts else (0.0, 0.0, 0.0)
  t = np.arange(num_frames, dtype=np.float64) - num_frames // 2
  dx, dy = {"pan_left": (-1, 0), "pan_right": (1, 0), "pan_up": (0, -1),
            "pan_down": (0, 1)}.get(next(iter(parts), ""), (0, 0))
  sz = 1 if "zoom_in" in parts else -1 if "zoom_out" in parts else 0
  rel = np.exp(-sz * zoom * t)  # Window side over F0's.
  angle = roll * t * (1 if "rotate_cw" in parts else
                      -1 if "rotate_ccw" in parts else 0)
  ext = _extent(rel, angle)  # Per unit of F0's window side.
  w, h = photo_size
  lo = MIN_SCALE * resolution / rel.min()
  hi = min(w, h) / (2 * ext.max())
  if lo > hi:
    return None

  def centre_range(w0, size, d):
    travel = d * pan * w0 * t
    return np.max(w0 * ext - travel), np.min(size - w0 * ext - travel)

  w0 = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
  for _ in range(12):  # Smaller windows leave more room to travel.
    (x0, x1), (y0, y1) = centre_range(w0, w, dx), centre_range(w0, h, dy)
    if x0 <= x1 and y0 <= y1:
      cx = rng.uniform(x0, x1) + dx * pan * w0 * t
      cy = rng.uniform(y0, y1) + dy * pan * w0 * t
      return np.stack([cx, cy, w0 * rel, angle], -1).astype(np.float32)
    w0 = lo + (w0 - lo) * 0.5 if w0 > lo * 1.01 else lo
  return None


def render(photo: np.ndarray, camera: np.ndarray,
           resolution: int) -> np.ndarray:
  """The frames uint8 [T, R, R, 3] that windows ``camera`` [T, 4] see of
  ``photo`` (float32 [H, W, 3]).

  Raises:
    ValueError: a window leaves the photo (it would show a border).
  """
  h, w = photo.shape[:2]
  if not inside(camera, (w, h)):
    raise ValueError(f"a camera window leaves the {w}x{h} photo")
  return np.stack([_frame(photo, *c, resolution) for c in
                   np.asarray(camera, np.float64)])


def _frame(photo, cx, cy, width, angle, resolution):
  h, w = photo.shape[:2]
  k = width / resolution  # Photo pixels per frame pixel.
  sigma = ANTIALIAS * np.sqrt(max(k * k - 1, 0.0))
  # Only the window's neighbourhood is filtered: a frame costs the same
  # whatever the photo's size.
  e = float(_extent(width, angle)) + 3 * sigma + 6
  x0, y0 = max(int(cx - e), 0), max(int(cy - e), 0)
  x1, y1 = min(int(np.ceil(cx + e)), w), min(int(np.ceil(cy + e)), h)
  region = photo[y0:y1, x0:x1]
  if sigma > 0.05:
    region = cv2.GaussianBlur(region, (0, 0), sigma,
                              borderType=cv2.BORDER_REFLECT_101)
  c, s = np.cos(angle), np.sin(angle)
  a = k * np.array([[c, -s], [s, c]])
  # Frame pixel (u, v) looks at photo point (cx, cy) + a @ ((u, v) - centre);
  # OpenCV's pixel (i, j) is centred at photo point (i + 0.5, j + 0.5).
  offset = (np.array([cx - x0, cy - y0]) - 0.5
            - a @ np.full(2, (resolution - 1) / 2))
  m = np.concatenate([a, offset[:, None]], 1)
  out = cv2.warpAffine(region, m, (resolution, resolution),
                       flags=cv2.INTER_LANCZOS4 | cv2.WARP_INVERSE_MAP,
                       borderMode=cv2.BORDER_REFLECT_101)
  return np.clip(np.rint(out), 0, 255).astype(np.uint8)



def render_again(examples, size: int, resolution: int, frames) -> tuple:
  """Test clips (decoded examples) whose photograph ships with the package
  (``PHOTOS``), rendered again at ``size`` px through the same windows at
  frame indices ``frames``: (the clips' indices, frames [N, len(frames),
  size, size, 3]). A clip cut from a video's frame is skipped: that frame is
  not at hand at another size."""
  idx, out = [], []
  for i, ex in enumerate(examples):
    if str(ex["photo"]) not in PHOTOS:
      continue
    photo = fit_photo(synthetic.load_photo(str(ex["photo"])), resolution)
    idx.append(i)
    out.append(render(photo, np.asarray(ex["camera"])[list(frames)], size))
  return idx, np.stack(out) if out else np.zeros((0, len(frames), size,
                                                  size, 3), np.uint8)

def camera_flow(camera: np.ndarray, a: int, b: int,
                resolution: int) -> np.ndarray:
  """The flow [R, R, 2] (frame pixels) from frame a to frame b that the
  windows ``camera`` [T, 4] imply: where each pixel of a shows up in b."""
  g = np.arange(resolution) - (resolution - 1) / 2
  q = np.stack(np.meshgrid(g, g), -1)  # [R, R, 2] as (x, y).

  def rot(angle):
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])

  ca, cb = np.asarray(camera[a], np.float64), np.asarray(camera[b], np.float64)
  p = ca[:2] + (ca[2] / resolution) * q @ rot(ca[3]).T
  q2 = (p - cb[:2]) @ rot(-cb[3]).T * (resolution / cb[2])
  return (q2 - q).astype(np.float32)


def motion_class(camera: np.ndarray, resolution: int, a: int = 0,
                 b: int = -1, threshold: float = 0.75,
                 combined: bool = True) -> str:
  """The camera motion from frame a to b that ``camera`` [T, 4] holds, read
  as metrics.camera_class reads it from frames: compare the two directly."""
  return metrics.classify_camera(
      metrics.camera_scores(camera_flow(camera, a, b, resolution)),
      threshold, combined)


# --- Photographs ------------------------------------------------------------

def fit_photo(im: np.ndarray, resolution: int) -> np.ndarray | None:
  """RGB float32, shrunk (area-averaged) to at most MAX_SIDE frame widths;
  None if shorter than MIN_SIDE frame widths."""
  if im.ndim == 2:
    im = np.stack([im] * 3, -1)
  im = im[..., :3]
  h, w = im.shape[:2]
  if min(h, w) < MIN_SIDE * resolution:
    return None
  scale = MAX_SIDE * resolution / min(h, w)
  if scale < 1:
    im = cv2.resize(im, (round(w * scale), round(h * scale)),
                    interpolation=cv2.INTER_AREA)
  return np.ascontiguousarray(im, np.float32)


def clip_entries(folder: str):
  """(path as captions.csv names it, caption) of the folder's clips whose
  SOURCES.tsv ``use`` is ``train``; the others, and clips it does not list,
  are left out."""
  uses = videos.read_uses(folder)
  with open(os.path.join(folder, videos.CAPTIONS_CSV), newline="",
            encoding="utf-8") as f:
    for row in csv.DictReader(f):
      key = os.path.normpath(row["path"])
      if uses.get(key) == "train":
        yield key, row["caption"] or ""


def load_photos(split: str, resolution: int, clips_dir: str = "",
                frames_per_clip: int = 2, test_fraction: float = 0.2):
  """{photo id: (photo float32 [H, W, 3], noun phrase, sentence)} of a
  split: shipped photos have a noun phrase, clip frames their clip's scene
  sentence (empty if unknown)."""
  out = {}
  for name in PHOTOS:
    if (name in TEST_PHOTOS) == (split == "test"):
      im = fit_photo(synthetic.load_photo(name), resolution)
      if im is not None:
        out[name] = (im, NOUNS[name], "")
  if not clips_dir:
    return out
  import av  # pylint: disable=g-import-not-at-top
  for key, text in clip_entries(clips_dir):
    if videos.split_of(key, test_fraction) != split:
      continue
    path = os.path.join(clips_dir, key)
    try:
      with av.open(path) as f:
        side = min(f.streams.video[0].width, f.streams.video[0].height)
      # One frame a second, centre-cropped to a square at its own size.
      frames = media.resampled_frames(path, fps=1, resolution=side)
    except Exception as e:  # A bad file is skipped, never fatal.
      logging.warning("skipping unreadable clip %s: %s", path, e)
      continue
    picks = np.linspace(0, len(frames) - 1, frames_per_clip + 2)[1:-1]
    for i in sorted(set(np.rint(picks).astype(int).tolist())):
      im = fit_photo(frames[i], resolution)
      if im is not None:
        out[f"clips/{key}#{i}"] = (im, "", scene_of(text))
  return out


def make_clip(seed: int, photo_id: str, photo, resolution: int,
              num_frames: int, split: str) -> dict:
  """One example's features, deterministic in ``seed``."""
  im, noun, sentence = photo
  rng = np.random.default_rng(seed)
  size = (im.shape[1], im.shape[0])
  for _ in range(20):
    motion = str(rng.choice(MOTIONS, p=_MOTION_P / _MOTION_P.sum()))
    speed = str(rng.choice(list(SPEEDS))) if motion != "static" else ""
    cam = camera_path(motion, speed, num_frames, size, resolution, rng)
    if cam is not None:
      break
  else:  # A still camera fits every usable photo.
    motion, speed = "static", ""
    cam = camera_path(motion, speed, num_frames, size, resolution, rng)
  return {
      "video": render(im, cam, resolution),
      "caption": caption(motion, speed, noun, sentence, rng),
      "paraphrase": (caption(motion, speed, noun, sentence, rng,
                             paraphrase=True) if split == "test" else ""),
      "scene": sentence or noun,
      "camera": cam, "motion": motion, "speed": speed, "photo": photo_id,
      "photo_size": np.asarray(size, np.int32),
  }


@dataclasses.dataclass
class CameraConfig(tfds.core.BuilderConfig):
  resolution: int = 128
  num_frames: int = 17
  num_train: int = 1000
  num_test: int = 200
  clips_dir: str = ""
  frames_per_clip: int = 2
  test_fraction: float = 0.2


VARIANTS = {
    "default": CameraConfig(name="default", description="128px, 17 frames"),
    "tiny": CameraConfig(name="tiny", resolution=64, num_train=24,
                         num_test=8, description="64px, for tests"),
}


def camera_config(variant: str, clips_dir: str = "") -> CameraConfig:
  """The variant's config; with a clips folder, named for its captions.csv
  and SOURCES.tsv so data built from another folder is never reused."""
  base = VARIANTS[variant]
  if not clips_dir:
    return base
  digest = hashlib.sha256()
  for name in (videos.CAPTIONS_CSV, videos.SOURCES_TSV):
    path = os.path.join(clips_dir, name)
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{path} not found: a clips folder needs "
                              f"{videos.CAPTIONS_CSV} and {videos.SOURCES_TSV}"
                              " (config.data.manual_dir)")
    with open(path, "rb") as f:
      digest.update(f.read())
  return dataclasses.replace(
      base, name=f"{variant}_clips{digest.hexdigest()[:8]}",
      clips_dir=os.path.abspath(clips_dir),
      description=base.description + f", with frames of {clips_dir}")


class CameraPhotos(tfds.core.GeneratorBasedBuilder):
  """Camera motion over real photographs, with its parameters per frame."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = list(VARIANTS.values())

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    t, r = c.num_frames, c.resolution
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
        "video": tfds.features.Tensor(shape=(t, r, r, 3), dtype=np.uint8,
                                      encoding=tfds.features.Encoding.ZLIB),
        "caption": tfds.features.Text(),
        "paraphrase": tfds.features.Text(),  # Test split only; else "".
        "scene": tfds.features.Text(),
        "camera": tfds.features.Tensor(shape=(t, 4), dtype=np.float32),
        "motion": tfds.features.Text(),
        "speed": tfds.features.Text(),  # slow, medium, fast; "" if static.
        "photo": tfds.features.Text(),
        "photo_size": tfds.features.Tensor(shape=(2,), dtype=np.int32),
    }))

  def _split_generators(self, dl_manager):
    del dl_manager  # Photos ship with the libraries; clips are local.
    c = self.builder_config
    return {"train": self._generate_examples("train", c.num_train),
            "test": self._generate_examples("test", c.num_test)}

  def _generate_examples(self, split, count):
    c = self.builder_config
    photos = load_photos(split, c.resolution, c.clips_dir, c.frames_per_clip,
                         c.test_fraction)
    if not photos:
      raise ValueError(f"no photograph for the {split} split")
    # Every photo in turn (in a fixed shuffled order), so each is used.
    names = sorted(photos)
    base = 0 if split == "train" else 1 << 30
    order = np.random.default_rng(base).permutation(len(names))
    for i in range(count):
      name = names[order[i % len(names)]]
      yield i, make_clip(base + i, name, photos[name], c.resolution,
                         c.num_frames, split)


def build(data_dir: str, variant: str = "default",
          clips_dir: str = "") -> tfds.core.DatasetBuilder:
  """The builder, generated into ``data_dir`` on first use."""
  builder = CameraPhotos(data_dir=data_dir,
                         config=camera_config(variant, clips_dir),
                         file_format="array_record")
  if not builder.is_prepared():
    print(f"generating camera_photos/{builder.builder_config.name} into "
          f"{data_dir} ...", flush=True)
    builder.download_and_prepare()
  return builder
