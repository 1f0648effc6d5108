"""Images in, videos and frame folders out; every write is atomic."""

import contextlib
import os
import shutil
import tempfile

import imageio.v3 as iio
import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError

EXAMPLES = os.path.join(os.path.dirname(__file__), "assets", "examples")
VIDEO_SUFFIXES = (".mp4", ".gif")


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


@contextlib.contextmanager
def atomic_folder(path: str):
  """A temporary folder next to ``path`` that replaces it only on success,
  so an interrupted write never leaves a half-written folder behind."""
  path = os.path.abspath(path)
  tmp = tempfile.mkdtemp(dir=os.path.dirname(path), prefix=".tmp-")
  try:
    yield tmp
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private.
    if os.path.isdir(path):
      shutil.rmtree(path)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      shutil.rmtree(tmp)


def load_image(path: str, resolution: int) -> np.ndarray:
  """Centre-crops and resizes an image file: uint8 [R, R, 3]."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"image not found: {path}")
  try:
    with Image.open(path) as im:
      im = im.convert("RGB")
      w, h = im.size
      side = min(w, h)
      left, top = (w - side) // 2, (h - side) // 2
      im = im.crop((left, top, left + side, top + side))
      im = im.resize((resolution, resolution), Image.Resampling.LANCZOS)
      return np.asarray(im, dtype=np.uint8)
  except (UnidentifiedImageError, OSError, ValueError) as e:
    raise ValueError(f"cannot read image {path}: {e}") from None


def frame_name(offset: int) -> str:
  return f"frame_{offset:+04d}.png"


def contact_sheet(frames: np.ndarray, offsets, scale: int = 2,
                  columns: int = 9) -> np.ndarray:
  """Frames in a grid, each labelled with its offset (F0 outlined)."""
  frames = np.repeat(np.repeat(frames, scale, axis=1), scale, axis=2)
  n, h, w, _ = frames.shape
  cols = min(columns, n)
  rows = -(-n // cols)
  pad, label = 4, 14
  sheet = Image.new("RGB", (cols * (w + pad) + pad,
                            rows * (h + pad + label) + pad), "white")
  draw = ImageDraw.Draw(sheet)
  for i, (frame, off) in enumerate(zip(frames, offsets)):
    x = pad + (i % cols) * (w + pad)
    y = pad + (i // cols) * (h + pad + label)
    sheet.paste(Image.fromarray(frame), (x, y + label))
    draw.text((x + 2, y), f"F{off:+d}" if off else "F0", fill="black")
    if off == 0:
      draw.rectangle((x - 2, y + label - 2, x + w + 1, y + label + h + 1),
                     outline="red", width=2)
  return np.asarray(sheet)


def check_output(path: str) -> None:
  parent = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(parent):
    raise FileNotFoundError(f"output folder does not exist: {parent}")
  if path.lower().endswith(VIDEO_SUFFIXES) and os.path.isdir(path):
    raise ValueError(f"output {path} is a folder, not a video file")


def write_output(frames: np.ndarray, first_offset: int, path: str,
                 fps: int = 8) -> None:
  """A video (.mp4/.gif) in time order, or a folder of signed frames.

  Written next to the target and renamed into place, so a failed run never
  leaves a half-written file or folder behind.
  """
  check_output(path)
  path = os.path.abspath(path)
  parent = os.path.dirname(path)
  offsets = [first_offset + i for i in range(len(frames))]
  if path.lower().endswith(VIDEO_SUFFIXES):
    suffix = os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(suffix=suffix, dir=parent, prefix=".tmp-")
    os.close(fd)
    try:
      if suffix.lower() == ".gif":
        iio.imwrite(tmp, frames, duration=1000 / fps, loop=0)
      else:
        iio.imwrite(tmp, frames, fps=fps, codec="libx264")
      os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private.
      os.replace(tmp, path)
    finally:
      if os.path.exists(tmp):
        os.remove(tmp)
    return
  with atomic_folder(path) as tmp:
    for frame, off in zip(frames, offsets):
      Image.fromarray(frame).save(os.path.join(tmp, frame_name(off)))
    Image.fromarray(contact_sheet(frames, offsets)).save(
        os.path.join(tmp, "contact_sheet.png"))
