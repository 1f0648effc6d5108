"""A procedural, captioned video dataset as a TFDS builder (array_record).

Each clip: a real photograph (shipped with scikit-image / scikit-learn, so
nothing is downloaded) seen through a camera that pans or zooms, with 0-3
coloured objects moving over it, and a caption in one of several phrasings of
what happens. Frame t has offset t - T // 2 from the clip's centre frame F0.
Object positions and camera parameters are stored per frame so evaluation can
check that generated motion follows the prompt. Train and test clips use
disjoint photographs, so test scores measure generalisation to new scenes.

  python -m bidigen.main --config=configs/synthetic.py --mode=prepare \
      --workdir=DIR
"""

import contextlib
import dataclasses
import io
from typing import Any

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

PALETTE = (("red", (220, 30, 30)), ("green", (30, 190, 40)),
           ("blue", (30, 70, 230)), ("yellow", (245, 215, 20)),
           ("white", (245, 245, 245)), ("purple", (150, 40, 200)),
           ("orange", (250, 130, 10)))
DIRECTIONS = ("left", "right", "up", "down")
CAMERA_MOTIONS = ("static", "pan_left", "pan_right", "pan_up", "pan_down",
                  "zoom_in", "zoom_out")
SHAPES = ("disc", "square")
SPEEDS = {"slowly": 0.015, "quickly": 0.03}  # Fraction of the frame / frame.
UNIT = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}

# Photograph -> noun phrase for captions. `skimage.data.cat` is the same
# picture as `chelsea`, so only one of them is used.
NOUNS = {"astronaut": "an astronaut", "coffee": "a coffee cup",
         "rocket": "a rocket", "china": "a temple",
         "hubble": "distant galaxies", "camera": "a cameraman",
         "coins": "old coins", "brick": "a brick wall", "grass": "grass",
         "moon": "the moon's surface", "chelsea": "a cat",
         "flower": "a flower", "motorcycle": "a motorcycle",
         "immunohistochemistry": "stained cells", "gravel": "gravel"}
TRAIN_PHOTOS = ("astronaut", "coffee", "rocket", "china", "hubble",
                "camera", "coins", "brick", "grass", "moon")
TEST_PHOTOS = ("chelsea", "flower", "motorcycle", "immunohistochemistry",
               "gravel")

_OBJ_NOUNS = {"disc": ("ball", "circle", "dot", "disc"),
              "square": ("square", "box", "block")}
_DIR_WORDS = {"left": ("left", "to the left", "leftward"),
              "right": ("right", "to the right", "rightward"),
              "up": ("up", "upward", "towards the top"),
              "down": ("down", "downward", "towards the bottom")}
_VERBS = ("moves", "slides", "travels", "drifts")
_SPEED_WORDS = {"slowly": ("slowly", ""), "quickly": ("quickly", "fast", "")}
# The first phrasing of each motion is the shortest: compact captions use it.
_CAMERA = {
    "static": ("{bg}", "a still shot of {bg}", "{bg}, the camera is still"),
    "pan_left": ("panning left across {bg}", "the camera pans left over {bg}"),
    "pan_right": ("panning right across {bg}",
                  "the camera pans right over {bg}"),
    "pan_up": ("panning up across {bg}", "the camera tilts up over {bg}",
               "the camera pans up over {bg}"),
    "pan_down": ("panning down across {bg}",
                 "the camera tilts down over {bg}",
                 "the camera pans down over {bg}"),
    "zoom_in": ("zooming in on {bg}", "the camera zooms in on {bg}"),
    "zoom_out": ("zooming out from {bg}", "the camera zooms out from {bg}"),
}
_COMBINE = ("{objs} while {cam}", "{cam}; {objs}")
_COMBINE_STATIC = ("{objs} over {bg}", "{objs} in front of {bg}",
                   "{objs}; {bg}, the camera is still")
# Phrasings never used in training, for evaluation's `paraphrase` rows: none
# of their verbs or connectives occurs in a training caption.
PARAPHRASE_TEMPLATES = {
    "object": ("{obj} heads {d}", "{obj} is heading {d}",
               "{obj} makes its way {d}"),
    "camera": {
        "static": ("the shot holds on {bg}", "the view of {bg} stays fixed"),
        "pan_left": ("we sweep left over {bg}",
                     "the view sweeps left over {bg}"),
        "pan_right": ("we sweep right over {bg}",
                      "the view sweeps right over {bg}"),
        "pan_up": ("we sweep upward over {bg}",
                   "the view sweeps upward over {bg}"),
        "pan_down": ("we sweep downward over {bg}",
                     "the view sweeps downward over {bg}"),
        "zoom_in": ("we push in on {bg}", "the view closes in on {bg}"),
        "zoom_out": ("we pull back from {bg}",
                     "the view pulls back from {bg}"),
    },
    "combine": ("{objs} as {cam}", "{cam} as {objs}"),
}
# Nouns have at most 3 words, so the compact phrasing of 3 objects and a
# moving camera always fits.
MAX_CAPTION_WORDS = 24  # Short prompts: what a user would type.


def load_photo(name: str) -> np.ndarray:
  """An RGB uint8 photograph, contrast-stretched so dim ones (the moon) still
  give the model texture to track. Imported here: only generation needs
  scikit-image / scikit-learn."""
  # pylint: disable=g-import-not-at-top
  import skimage.data
  import sklearn.datasets
  if name in ("china", "flower"):
    im = sklearn.datasets.load_sample_image(f"{name}.jpg")
  elif name == "hubble":
    im = skimage.data.hubble_deep_field()
  elif name == "motorcycle":
    im = skimage.data.stereo_motorcycle()[0]
  else:
    im = getattr(skimage.data, name)()
  if im.ndim == 2:
    im = np.stack([im] * 3, axis=-1)
  im = im[..., :3].astype(np.float32)
  lo, hi = np.percentile(im, (1, 99))
  im = (im - lo) * (255 / max(hi - lo, 1.0))
  return np.clip(im, 0, 255).round().astype(np.uint8)


def _shrink(im: np.ndarray, side: int = 320) -> Image.Image:
  """Crops span at most ~0.8 of the short side, so 320 px keeps 64 px frames
  sharp while each frame's resize stays cheap."""
  h, w = im.shape[:2]
  scale = side / min(h, w)
  image = Image.fromarray(im)
  if scale >= 1:
    return image
  return image.resize((round(w * scale), round(h * scale)),
                      Image.Resampling.LANCZOS)


def camera_path(motion: str, num_frames: int, aspect: float,
                rng: np.random.Generator) -> np.ndarray:
  """Per-frame (cx, cy, size) of the crop window: centre in photo coordinates
  ([0, 1] along width / height), size as a fraction of the short side.

  Pans move the centre by 1.5-2.2% of the short side per frame along either
  axis, so a pan looks equally fast in the frame whatever the aspect; zooms
  scale the crop by 3% per frame. The window stays inside the photo.
  """
  offsets = np.arange(num_frames) - num_frames // 2
  size = np.full(num_frames, 0.55)
  if motion.startswith("zoom"):
    size = 0.6 * np.exp((-0.03 if motion == "zoom_in" else 0.03) * offsets)
  speed = rng.uniform(0.015, 0.022)
  dx, dy = {"pan_left": (-1, 0), "pan_right": (1, 0), "pan_up": (0, -1),
            "pan_down": (0, 1)}.get(motion, (0, 0))
  # Fractions of the short side, converted to each axis' unit.
  sx, sy = (1 / aspect, 1.0) if aspect > 1 else (1.0, aspect)
  reach = size.max() / 2 + np.abs(offsets).max() * speed
  cx0 = 0.5 + rng.uniform(-1, 1) * max(0.0, 0.5 - sx * (
      size.max() / 2 if dx == 0 else reach))
  cy0 = 0.5 + rng.uniform(-1, 1) * max(0.0, 0.5 - sy * (
      size.max() / 2 if dy == 0 else reach))
  cx = cx0 + dx * speed * sx * offsets
  cy = cy0 + dy * speed * sy * offsets
  return np.stack([cx, cy, size], axis=-1).astype(np.float32)


def _crop(photo: Image.Image, cx: float, cy: float, size: float,
          res: int) -> np.ndarray:
  w, h = photo.size
  s = size * min(w, h)
  box = (cx * w - s / 2, cy * h - s / 2, cx * w + s / 2, cy * h + s / 2)
  return np.asarray(photo.resize((res, res), Image.Resampling.BILINEAR,
                                 box=box))


def _draw(frame: np.ndarray, shape: str, x: float, y: float, radius: float,
          rgb: np.ndarray) -> None:
  """A solid disc or square with a thin dark outline, centred at (x, y)."""
  res = frame.shape[0]
  yy, xx = np.mgrid[0:res, 0:res] + 0.5
  px, py = x * res, y * res
  if shape == "disc":
    d = np.sqrt((xx - px) ** 2 + (yy - py) ** 2)
  else:
    d = np.maximum(np.abs(xx - px), np.abs(yy - py))
  frame[d <= radius] = (30, 30, 30)
  frame[d <= radius - max(1.0, radius * 0.15)] = rgb


def _pick(rng: np.random.Generator, options, compact: bool) -> str:
  return str(options[0] if compact else rng.choice(options))


def _object_phrase(obj, rng: np.random.Generator, compact: bool,
                   paraphrase: bool) -> str:
  color, shape, direction, speed = obj
  article = "an" if color[0] in "aeiou" else "a"
  if not compact:
    article = str(rng.choice([article, "the"]))
  name = f"{article} {color} {rng.choice(_OBJ_NOUNS[shape])}"
  d = _pick(rng, _DIR_WORDS[direction], compact)
  if paraphrase:
    template = _pick(rng, PARAPHRASE_TEMPLATES["object"], compact)
    return template.format(obj=name, d=d)
  verbs = _VERBS + (("rolls",) if shape == "disc" else ())
  adverb = "" if compact else str(rng.choice(_SPEED_WORDS[speed]))
  return " ".join(w for w in (name, _pick(rng, verbs, compact), d, adverb)
                  if w)


def _compose(meta: dict[str, Any], rng: np.random.Generator, compact: bool,
             paraphrase: bool) -> str:
  bg = NOUNS[meta["background"]]
  motion = meta["camera_motion"]
  parts = [_object_phrase(o, rng, compact, paraphrase)
           for o in meta["objects"]]
  cameras = (PARAPHRASE_TEMPLATES["camera"] if paraphrase else _CAMERA)
  cam = _pick(rng, cameras[motion], compact).format(bg=bg)
  if not parts:
    return cam
  if len(parts) == 1:
    objs = parts[0]
  elif compact:
    objs = ", ".join(parts[:-1]) + " and " + parts[-1]
  else:
    objs = " and ".join(parts)
  if paraphrase:
    combine = PARAPHRASE_TEMPLATES["combine"]
  else:
    combine = _COMBINE_STATIC if motion == "static" else _COMBINE
  return _pick(rng, combine, compact).format(objs=objs, cam=cam, bg=bg)


def caption_for(meta: dict[str, Any], rng: np.random.Generator,
                paraphrase: bool = False) -> str:
  """A caption for a clip's meaning in a randomly drawn phrasing.

  Several phrasings per meaning keep the model from keying on exact strings.
  Captions that would exceed MAX_CAPTION_WORDS fall back to the compact
  phrasing (no adverbs, short direction words), which always fits.

  Args:
    meta: {"background": photo name, "camera_motion": one of CAMERA_MOTIONS,
      "objects": [(colour, shape, direction, speed word), ...]}.
    rng: draws the phrasing.
    paraphrase: use PARAPHRASE_TEMPLATES, never seen in training.
  """
  caption = _compose(meta, rng, False, paraphrase)
  if len(caption.split()) > MAX_CAPTION_WORDS:
    caption = _compose(meta, rng, True, paraphrase)
  return caption


def meta_from_example(example: dict[str, Any]) -> dict[str, Any]:
  """The meaning behind a stored example (one element, not a batch)."""
  text = lambda v: v.decode() if isinstance(v, bytes) else str(v)
  objects = []
  for i in range(int(example["num_objects"])):
    speed = float(example["object_speed"][i])
    objects.append((PALETTE[int(example["object_color"][i])][0],
                    SHAPES[int(example["object_shape"][i])],
                    DIRECTIONS[int(example["object_direction"][i])],
                    min(SPEEDS, key=lambda w: abs(SPEEDS[w] - speed))))
  return {"background": text(example["background"]),
          "camera_motion": CAMERA_MOTIONS[int(example["camera_motion"])],
          "objects": objects}


def paraphrase_caption(example_meta: dict[str, Any],
                       rng: np.random.Generator) -> str:
  """A caption with the same meaning in phrasings training never used.

  Args:
    example_meta: a meta dict (see caption_for) or a stored example.
    rng: draws the phrasing.
  """
  if "objects" not in example_meta:
    example_meta = meta_from_example(example_meta)
  return caption_for(example_meta, rng, paraphrase=True)


def make_clip(rng: np.random.Generator, photos: dict[str, Image.Image],
              resolution: int,
              num_frames: int) -> tuple[dict[str, Any], dict[str, Any]]:
  """One example's features and its meaning, drawn from ``rng``."""
  name = str(rng.choice(sorted(photos)))
  photo = photos[name]
  n_obj = int(rng.choice(4, p=(0.15, 0.45, 0.25, 0.15)))
  motion = str(rng.choice(CAMERA_MOTIONS,
                          p=(0.3, 0.12, 0.12, 0.11, 0.11, 0.12, 0.12)))
  # A still photo is a rare clip (~1%): nothing to learn about motion.
  if n_obj == 0 and motion == "static" and rng.random() > 0.2:
    motion = str(rng.choice(CAMERA_MOTIONS[1:]))
  cam = camera_path(motion, num_frames, photo.size[0] / photo.size[1], rng)
  frames = np.stack([_crop(photo, *c, resolution) for c in cam])

  offsets = np.arange(num_frames) - num_frames // 2
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
    v = SPEEDS[speed_word] * np.asarray(UNIT[direction], np.float32)
    radius = rng.uniform(0.08, 0.12)
    # The whole object stays in the frame over the clip (if it can).
    lo = np.minimum(radius + np.abs(offsets).max() * np.abs(v) + 0.02, 0.5)
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
  """Frame size and clip counts; the content recipe is the same for all."""
  resolution: int = 64
  num_frames: int = 17
  num_train: int = 2000
  num_test: int = 200


class BidigenSynthetic(tfds.core.GeneratorBasedBuilder):
  """Captioned clips of coloured objects over real photographs."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [
      SyntheticConfig(name="default", description="64px, 17 frames"),
      SyntheticConfig(name="tiny", resolution=32, num_train=32, num_test=8,
                      description="32px, for tests"),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    t, r = c.num_frames, c.resolution

    def tensor(shape, dtype, **kwargs):
      return tfds.features.Tensor(shape=shape, dtype=dtype, **kwargs)

    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
        # zlib is decoded with numpy: reading needs no TensorFlow.
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
    return {"train": self._generate_examples(0, c.num_train, TRAIN_PHOTOS),
            "test": self._generate_examples(1, c.num_test, TEST_PHOTOS)}

  def _generate_examples(self, split_id: int, count: int, names):
    c = self.builder_config
    photos = {n: _shrink(load_photo(n)) for n in names}
    for i in range(count):
      rng = np.random.default_rng((split_id, i))
      features, _ = make_clip(rng, photos, c.resolution, c.num_frames)
      yield i, features


def build(data_dir: str, config: str = "default") -> tfds.core.DatasetBuilder:
  """The builder over ``data_dir``, generated there on first use.

  Generation is procedural and quick, so it is done in-process; TFDS's own
  banners and progress bars are silenced in favour of one line.
  """
  builder = BidigenSynthetic(data_dir=data_dir, config=config,
                             file_format="array_record")
  if not builder.is_prepared():
    c = builder.builder_config
    print(f"generating bidigen_synthetic/{config} ({c.num_train} + "
          f"{c.num_test} clips) into {data_dir}", flush=True)
    tfds.display_progress_bar(False)
    try:
      with contextlib.redirect_stdout(io.StringIO()):
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(
                try_download_gcs=False))
    finally:
      tfds.display_progress_bar(True)
  return builder
