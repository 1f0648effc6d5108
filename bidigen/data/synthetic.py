"""A procedural, captioned video dataset as a TFDS builder (array_record).

Each clip: a real photograph (from scikit-image / scikit-learn) seen through a
camera that pans or zooms, with 0-3 coloured objects moving in it, and a
caption from several phrasings per meaning. Frame t has offset t - T // 2
from the clip's centre frame F0. Object positions and camera parameters are
stored per frame, so evaluation can check that generated motion follows the
prompt. Train and test use disjoint photographs.
"""

import dataclasses

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

PALETTE = (("red", (220, 30, 30)), ("green", (30, 190, 40)),
           ("blue", (30, 70, 230)), ("yellow", (245, 215, 20)),
           ("white", (245, 245, 245)), ("purple", (150, 40, 200)),
           ("orange", (250, 130, 10)))
DIRECTIONS = ("left", "right", "up", "down")
_UNIT = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
CAMERA_MOTIONS = ("static", "pan_left", "pan_right", "pan_up", "pan_down",
                  "zoom_in", "zoom_out")
SHAPES = ("disc", "square")
SPEEDS = {"slowly": 0.015, "quickly": 0.03}  # Fraction of the frame / frame.

# Photograph name -> (loader, noun phrase for captions).
TRAIN_PHOTOS = ("astronaut", "coffee", "rocket", "china", "hubble",
                "camera", "coins", "brick", "grass", "moon")
TEST_PHOTOS = ("chelsea", "flower", "immunohistochemistry", "gravel")
NOUNS = {"astronaut": "an astronaut", "coffee": "a cup of coffee",
         "rocket": "a rocket", "china": "a temple",
         "hubble": "a field of galaxies", "camera": "a cameraman",
         "coins": "old coins", "brick": "a brick wall", "grass": "grass",
         "moon": "the surface of the moon", "chelsea": "a cat",
         "flower": "a flower", "immunohistochemistry": "stained cells",
         "gravel": "gravel"}

_OBJ_NOUNS = {"disc": ("ball", "circle", "dot"),
              "square": ("square", "box", "block")}
_DIR_WORDS = {"left": ("to the left", "left", "leftward"),
              "right": ("to the right", "right", "rightward"),
              "up": ("up", "upward", "towards the top"),
              "down": ("down", "downward", "towards the bottom")}
_VERBS = ("moves", "slides", "travels", "drifts")
_SPEED_WORDS = {"slowly": ("slowly", ""), "quickly": ("quickly", "fast", "")}
_CAMERA_WORDS = {
    "static": ("{bg}", "a still shot of {bg}", "{bg}, the camera is still"),
    "pan_left": ("the camera pans left over {bg}", "panning left across {bg}"),
    "pan_right": ("the camera pans right over {bg}",
                  "panning right across {bg}"),
    "pan_up": ("the camera tilts up over {bg}", "panning up across {bg}"),
    "pan_down": ("the camera tilts down over {bg}",
                 "panning down across {bg}"),
    "zoom_in": ("the camera zooms in on {bg}", "zooming in on {bg}"),
    "zoom_out": ("the camera zooms out from {bg}", "zooming out from {bg}"),
}
# Phrasings never used in training: evaluation's `paraphrase` rows.
PARAPHRASE_OBJECT = ("{obj} is heading {d}", "{obj} makes its way {d}",
                     "watch {obj} go {d}")
PARAPHRASE_CAMERA = {
    "static": ("nothing moves in this view of {bg}",),
    "pan_left": ("the view sweeps left across {bg}",),
    "pan_right": ("the view sweeps right across {bg}",),
    "pan_up": ("the view sweeps upward across {bg}",),
    "pan_down": ("the view sweeps downward across {bg}",),
    "zoom_in": ("we push in on {bg}",),
    "zoom_out": ("we pull back from {bg}",),
}


def load_photo(name: str) -> np.ndarray:
  """An RGB uint8 photograph that ships with scikit-image/scikit-learn."""
  import skimage.data
  if name in ("china", "flower"):
    from sklearn.datasets import load_sample_image
    im = load_sample_image(f"{name}.jpg")
  elif name == "hubble":
    im = skimage.data.hubble_deep_field()
  elif name == "motorcycle":
    im = skimage.data.stereo_motorcycle()[0]  # The left view.
  else:
    im = getattr(skimage.data, name)()
  if im.ndim == 2:
    im = np.stack([im] * 3, axis=-1)
  return np.ascontiguousarray(im[..., :3]).astype(np.uint8)


def _crop(photo: Image.Image, cx, cy, size, res) -> np.ndarray:
  w, h = photo.size
  s = size * min(w, h)
  box = (cx * w - s / 2, cy * h - s / 2, cx * w + s / 2, cy * h + s / 2)
  return np.asarray(photo.resize((res, res), Image.Resampling.BILINEAR,
                                 box=box))


def camera_path(motion: str, num_frames: int, aspect: float, rng):
  """(cx, cy, size) per frame, in photo coordinates; stays inside it."""
  offsets = np.arange(num_frames) - num_frames // 2
  half = num_frames // 2
  size = np.full(num_frames, 0.55)
  if motion.startswith("zoom"):
    k = 0.03 if motion == "zoom_in" else -0.03
    size = 0.6 * np.exp(-k * offsets)
  speed = rng.uniform(0.015, 0.022)
  dx, dy = {"pan_left": (-1, 0), "pan_right": (1, 0), "pan_up": (0, -1),
            "pan_down": (0, 1)}.get(motion, (0, 0))
  # Size is relative to the shorter side; convert travel to each axis.
  sx, sy = (1 / aspect, 1.0) if aspect > 1 else (1.0, aspect)
  cx0 = 0.5 + rng.uniform(-1, 1) * max(0.0, 0.5 - (size.max() / 2) * sx
                                        - half * speed * sx * abs(dx))
  cy0 = 0.5 + rng.uniform(-1, 1) * max(0.0, 0.5 - (size.max() / 2) * sy
                                        - half * speed * sy * abs(dy))
  cx = cx0 + dx * speed * sx * offsets
  cy = cy0 + dy * speed * sy * offsets
  return np.stack([cx, cy, size], axis=-1).astype(np.float32)


def _draw(frame: np.ndarray, shape: str, x, y, radius, rgb) -> None:
  res = frame.shape[0]
  yy, xx = np.mgrid[0:res, 0:res] + 0.5
  px, py = x * res, y * res
  if shape == "disc":
    d = np.sqrt((xx - px) ** 2 + (yy - py) ** 2)
  else:
    d = np.maximum(np.abs(xx - px), np.abs(yy - py))
  edge = max(1.0, radius * 0.15)
  frame[d <= radius] = (30, 30, 30)
  frame[d <= radius - edge] = rgb


def object_phrase(color: str, shape: str, rng) -> str:
  article = "an" if color[0] in "aeiou" else "a"
  return f"{article} {color} {rng.choice(_OBJ_NOUNS[shape])}"


def caption_for(meta: dict, rng, paraphrase: bool = False) -> str:
  """A caption for a clip's meaning, in a randomly chosen phrasing."""
  bg = NOUNS[meta["background"]]
  parts = []
  for color, shape, direction, speed in meta["objects"]:
    obj = object_phrase(color, shape, rng)
    d = str(rng.choice(_DIR_WORDS[direction]))
    if paraphrase:
      parts.append(str(rng.choice(PARAPHRASE_OBJECT)).format(obj=obj, d=d))
      continue
    verbs = _VERBS + (("rolls",) if shape == "disc" else ())
    adverb = str(rng.choice(_SPEED_WORDS[speed]))
    parts.append(" ".join(w for w in (obj, str(rng.choice(verbs)), d, adverb)
                          if w))
  camera = PARAPHRASE_CAMERA if paraphrase else _CAMERA_WORDS
  cam = str(rng.choice(camera[meta["camera_motion"]])).format(bg=bg)
  if not parts:
    return cam
  objs = " and ".join(parts)
  if meta["camera_motion"] == "static" and not paraphrase:
    return str(rng.choice([f"{objs} over {bg}", f"{objs} in front of {bg}",
                           f"{objs}; {cam}"]))
  return str(rng.choice([f"{objs} while {cam}", f"{cam}; {objs}"]))



def paraphrase(example: dict, index: int) -> str:
  """A decoded test example's meaning (its objects and camera, read from
  its features) in phrasings training never used: the caption of
  evaluation's ``model_paraphrase`` rows."""
  speed = lambda v: min(SPEEDS, key=lambda k: abs(SPEEDS[k] - v))
  objects = [(PALETTE[example["object_color"][i]][0],
              SHAPES[example["object_shape"][i]],
              DIRECTIONS[example["object_direction"][i]],
              speed(float(example["object_speed"][i])))
             for i in range(int(example["num_objects"]))]
  meta = {"background": str(example["background"]), "objects": objects,
          "camera_motion": CAMERA_MOTIONS[int(example["camera_motion"])]}
  return caption_for(meta, np.random.default_rng(index), paraphrase=True)

def make_clip(seed: int, photos: dict, resolution: int, num_frames: int):
  """One example: (features dict, meaning dict), deterministic in seed."""
  rng = np.random.default_rng(seed)
  name = str(rng.choice(sorted(photos)))
  photo = photos[name]
  n_obj = int(rng.choice(4, p=(0.15, 0.45, 0.25, 0.15)))
  motion = str(rng.choice(CAMERA_MOTIONS,
                          p=(0.3, 0.12, 0.12, 0.11, 0.11, 0.12, 0.12)))
  if n_obj == 0 and motion == "static":
    motion = str(rng.choice(CAMERA_MOTIONS[1:]))
  cam = camera_path(motion, num_frames, photo.size[0] / photo.size[1], rng)
  frames = np.stack([_crop(photo, *c, resolution) for c in cam])

  offsets = np.arange(num_frames) - num_frames // 2
  half = num_frames // 2
  colors = rng.choice(len(PALETTE), 3, replace=False)
  positions = np.full((num_frames, 3, 2), -1.0, np.float32)
  color_ids = np.full(3, -1, np.int32)
  rgbs = np.zeros((3, 3), np.uint8)
  dirs = np.full(3, -1, np.int32)
  speeds = np.zeros(3, np.float32)
  shapes = np.full(3, -1, np.int32)
  objects = []
  for i in range(n_obj):
    shape = str(rng.choice(SHAPES))
    direction = str(rng.choice(DIRECTIONS))
    speed_word = str(rng.choice(list(SPEEDS)))
    v = SPEEDS[speed_word] * np.asarray(_UNIT[direction], np.float32)
    radius = rng.uniform(0.08, 0.12)
    lo = radius + half * np.abs(v) + 0.02
    p0 = rng.uniform(np.maximum(lo, 0.15), np.minimum(1 - lo, 0.85))
    positions[:, i] = p0 + v * offsets[:, None]
    color_ids[i] = colors[i]
    rgbs[i] = PALETTE[colors[i]][1]
    dirs[i] = DIRECTIONS.index(direction)
    speeds[i] = SPEEDS[speed_word]
    shapes[i] = SHAPES.index(shape)
    objects.append((PALETTE[colors[i]][0], shape, direction, speed_word))
    for t in range(num_frames):
      _draw(frames[t], shape, *positions[t, i], radius * resolution, rgbs[i])
  meta = {"background": name, "camera_motion": motion, "objects": objects}
  features = {
      "video": frames, "caption": caption_for(meta, rng),
      "num_objects": np.int32(n_obj), "object_color": color_ids,
      "object_rgb": rgbs, "object_direction": dirs, "object_speed": speeds,
      "object_shape": shapes, "object_positions": positions, "camera": cam,
      "camera_motion": np.int32(CAMERA_MOTIONS.index(motion)),
      "background": name,
  }
  return features, meta


@dataclasses.dataclass
class SyntheticConfig(tfds.core.BuilderConfig):
  resolution: int = 128
  num_frames: int = 17
  num_train: int = 1000
  num_test: int = 100


class BidigenSynthetic(tfds.core.GeneratorBasedBuilder):
  """Captioned clips of coloured objects over real photographs."""

  VERSION = tfds.core.Version("2.0.0")
  RELEASE_NOTES = {"2.0.0": "128px default, 64px tiny (TAEF2's 8x latents)",
                   "1.0.0": "64px default, 32px tiny"}
  BUILDER_CONFIGS = [
      SyntheticConfig(name="default", description="128px, 17 frames"),
      SyntheticConfig(name="tiny", resolution=64, num_train=32, num_test=8,
                      description="64px, for tests"),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    t, r = c.num_frames, c.resolution
    tensor = lambda shape, dtype, **kw: tfds.features.Tensor(
        shape=shape, dtype=dtype, **kw)
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
        "video": tensor((t, r, r, 3), np.uint8,
                        encoding=tfds.features.Encoding.ZLIB),
        "caption": tfds.features.Text(),
        "num_objects": tensor((), np.int32),
        "object_color": tensor((3,), np.int32),
        "object_rgb": tensor((3, 3), np.uint8),
        "object_direction": tensor((3,), np.int32),
        "object_speed": tensor((3,), np.float32),
        "object_shape": tensor((3,), np.int32),
        "object_positions": tensor((t, 3, 2), np.float32),
        "camera": tensor((t, 3), np.float32),
        "camera_motion": tensor((), np.int32),
        "background": tfds.features.Text(),
    }))

  def _split_generators(self, dl_manager):
    del dl_manager  # Procedural: nothing to download.
    c = self.builder_config
    return {"train": self._generate_examples("train", c.num_train,
                                             TRAIN_PHOTOS),
            "test": self._generate_examples("test", c.num_test, TEST_PHOTOS)}

  def _generate_examples(self, split, count, names):
    c = self.builder_config
    photos = {n: Image.fromarray(_shrink(load_photo(n))) for n in names}
    base = 0 if split == "train" else 1 << 30
    for i in range(count):
      features, _ = make_clip(base + i, photos, c.resolution, c.num_frames)
      yield i, features


def _shrink(im: np.ndarray, side: int = 320) -> np.ndarray:
  """Photos are cropped to at most ~0.8 of their short side per frame, so
  320 px keeps crops sharp at 128px output while resizing stays fast."""
  h, w = im.shape[:2]
  scale = side / min(h, w)
  if scale >= 1:
    return im
  return np.asarray(Image.fromarray(im).resize(
      (round(w * scale), round(h * scale)), Image.Resampling.LANCZOS))


def build(data_dir: str, config: str = "default") -> tfds.core.DatasetBuilder:
  """The builder, generated into ``data_dir`` on first use."""
  builder = BidigenSynthetic(data_dir=data_dir, config=config,
                             file_format="array_record")
  if not builder.is_prepared():
    print(f"generating bidigen_synthetic/{config} into {data_dir} ...",
          flush=True)
    builder.download_and_prepare()
  return builder
