"""Images in; videos and frame folders out, written so nothing is lost.

Every output is written beside its target and renamed into place, so an
interrupted run never leaves a half-written file. Folders carry a manifest
(``MANIFEST``) naming what bidigen wrote there: only those entries are ever
replaced or removed, so pointing ``--output`` at a folder of one's own (or at
``.``) is refused instead of emptying it.
"""

import contextlib
import json
import os
import shutil
import tempfile

import av
import imageio.v3 as iio
import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError

EXAMPLES = os.path.join(os.path.dirname(__file__), "assets", "examples")
VIDEO_SUFFIXES = (".mp4", ".gif")
# Larger input images are refused before decoding: the model works at
# 128-256 px, and a decompression bomb must not take a machine down.
MAX_PIXELS = 50_000_000
# Lists the entries of a folder that bidigen wrote (and may replace).
MANIFEST = ".bidigen.json"
# Work in progress; a run killed mid-write may leave one, which is ours.
_TMP_PREFIX = ".bidigen-tmp-"


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def _remove(path: str) -> None:
  if os.path.isdir(path) and not os.path.islink(path):
    shutil.rmtree(path)
  elif os.path.lexists(path):
    os.remove(path)


def written_by_bidigen(folder: str) -> set[str]:
  """The entries of ``folder`` that its manifest says bidigen wrote."""
  try:
    with open(os.path.join(folder, MANIFEST)) as f:
      entries = json.load(f)["entries"]
  except (OSError, ValueError, KeyError, TypeError):
    return set()
  return {e for e in entries if isinstance(e, str) and "/" not in e}


def foreign_entries(folder: str, names=None) -> list[str]:
  """Entries of ``folder`` (or of ``names`` in it) bidigen did not write."""
  ours = written_by_bidigen(folder) | {MANIFEST}
  names = os.listdir(folder) if names is None else names
  return sorted(n for n in names if n not in ours
                and not n.startswith(_TMP_PREFIX)
                and os.path.lexists(os.path.join(folder, n)))


def _write_manifest(folder: str, entries, info: dict | None) -> None:
  tmp = os.path.join(folder, MANIFEST + ".tmp")
  with open(tmp, "w") as f:
    json.dump({"written_by": "bidigen", "entries": sorted(entries),
               **(info or {})}, f, indent=1)
  os.replace(tmp, os.path.join(folder, MANIFEST))


def _listing(names, limit: int = 3) -> str:
  more = f" and {len(names) - limit} more" if len(names) > limit else ""
  return ", ".join(names[:limit]) + more


def check_merge(folder: str, names) -> None:
  """Raises if any of ``names`` in ``folder`` is something bidigen did not
  write (which a merge would replace)."""
  clash = foreign_entries(folder, names) if os.path.isdir(folder) else []
  if clash:
    raise ValueError(f"{folder} already holds {_listing(clash)}, which "
                     "bidigen did not write; move it or choose another "
                     "folder")


def check_folder(path: str, *, overwrite: bool = False) -> None:
  """Raises unless ``path`` may become a folder output: it does not exist,
  is empty, or holds only a previous bidigen output and ``overwrite``."""
  if os.path.lexists(path) and not os.path.isdir(path):
    raise ValueError(f"output {path} is a file, not a folder")
  if not os.path.isdir(path) or not os.listdir(path):
    return
  foreign = foreign_entries(path)
  if foreign:
    raise ValueError(
        f"output folder {path} is not empty and holds files bidigen did not "
        f"write ({_listing(foreign)}); choose a new or empty folder")
  if not overwrite:
    raise ValueError(f"output folder {path} holds a previous bidigen output; "
                     "pass --overwrite to replace it")


@contextlib.contextmanager
def output_folder(path: str, *, overwrite: bool = False, merge: bool = False,
                  info: dict | None = None):
  """Yields an empty temporary folder; on success its entries move into
  ``path``, and on failure it is removed and ``path`` is left as it was.

  Args:
    path: The output folder. New, empty, or a previous bidigen output
      (replaced only with ``overwrite``).
    overwrite: Replace a previous bidigen output.
    merge: Add the entries to a folder that holds other things too (an
      evaluation's report in a training workdir): only entries of the same
      names that bidigen wrote before are replaced, and nothing is removed.
    info: Extra fields for the manifest (e.g. how a sample was made).

  Raises:
    ValueError: ``path`` holds files bidigen did not write where the new
      entries would go.
  """
  path = os.path.abspath(path)
  parent = os.path.dirname(path)
  if not os.path.isdir(parent):
    raise FileNotFoundError(f"output folder does not exist: {parent}")
  if not merge:
    check_folder(path, overwrite=overwrite)
  exists = os.path.isdir(path)
  tmp = tempfile.mkdtemp(dir=path if exists else parent, prefix=_TMP_PREFIX)
  try:
    yield tmp
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private.
    new = set(os.listdir(tmp))
    if not exists:
      _write_manifest(tmp, new, info)
      os.rename(tmp, path)  # Fails, removing nothing, if path appeared.
      return
    check_merge(path, new)  # Again: the folder may have changed meanwhile.
    old = written_by_bidigen(path)
    # Claims old and new first, so a run killed below leaves a folder that
    # is still recognisably bidigen's own.
    _write_manifest(path, old | new, info)
    for name in sorted(new):
      target = os.path.join(path, name)
      if os.path.isdir(target) or os.path.isdir(os.path.join(tmp, name)):
        _remove(target)  # Ours (checked above); os.replace needs it gone.
      os.replace(os.path.join(tmp, name), target)
    kept = old | new if merge else new
    for name in old - kept:
      _remove(os.path.join(path, name))
    _write_manifest(path, kept, info)
  finally:
    if os.path.exists(tmp):
      shutil.rmtree(tmp)


def load_image(path: str, resolution: int,
               max_pixels: int = MAX_PIXELS) -> np.ndarray:
  """Centre-crops and resizes an image file: uint8 [R, R, 3].

  The size is read from the header first: an image over ``max_pixels`` is
  refused before it is decoded (a small file can hold a huge image).
  """
  if os.path.isdir(path):
    raise ValueError(f"image {path} is a folder, not an image file")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"image not found: {path}")
  try:
    with Image.open(path) as im:
      w, h = im.size
      if w * h > max_pixels:
        raise _TooLarge(w, h)
      im = im.convert("RGB")
      side = min(w, h)
      left, top = (w - side) // 2, (h - side) // 2
      im = im.crop((left, top, left + side, top + side))
      im = im.resize((resolution, resolution), Image.Resampling.LANCZOS)
      return np.asarray(im, dtype=np.uint8)
  except _TooLarge as e:
    w, h = e.args
    raise ValueError(f"image {path} is {w}x{h} = {w * h / 1e6:.0f} "
                     f"megapixels; the limit is {max_pixels / 1e6:.0f}: "
                     "downscale it first") from None
  except Image.DecompressionBombError:
    raise ValueError(f"image {path} is over {max_pixels / 1e6:.0f} "
                     "megapixels; downscale it first") from None
  except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
    # PIL raises SyntaxError for some malformed headers.
    raise ValueError(f"cannot read image {path}: {e}") from None


def resampled_frames(path: str, *, fps: float, resolution: int,
                     max_frames: int | None = None) -> np.ndarray:
  """The frames of the video at ``path`` at ``fps``: [N, R, R, 3] uint8.

  Frame k is the source frame on screen at time k / fps after the first, so
  N = ceil(duration * fps) (duration up to the end of the last frame), capped
  at ``max_frames``; decoding stops there.

  Raises:
    av.FFmpegError, IndexError, ValueError: the file is no readable video.
  """
  limit = max_frames or float("inf")
  eps = 1e-6  # Timestamps are exact fractions turned to floats.
  out, prev, image = [], None, None
  with av.open(path) as container:
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    rate = stream.average_rate or stream.guessed_rate
    for i, frame in enumerate(container.decode(stream)):
      t = frame.time if frame.time is not None else i / float(rate)
      if prev is None:
        t0 = t
      while prev is not None and len(out) < limit and (
          t0 + len(out) / fps < t - eps):
        image = square_frame(prev, resolution) if image is None else image
        out.append(image)
      if len(out) >= limit:
        break
      prev, prev_t, image = frame, t, None
    if prev is None:
      raise ValueError("no frames")
    end = prev_t + (1 / float(rate) if rate else 0.0)
    while len(out) < limit and t0 + len(out) / fps < end - eps:
      image = square_frame(prev, resolution) if image is None else image
      out.append(image)
  return np.stack(out)


def square_frame(frame, resolution: int) -> np.ndarray:
  """Centre crop to a square, then resize (PIL filters antialias)."""
  im = frame.to_image()
  w, h = im.size
  s = min(w, h)
  box = ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)
  return np.asarray(im.resize((resolution, resolution),
                              Image.Resampling.BILINEAR, box=box))


def resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
  """Square uint8 frames [..., H, H, 3] -> [..., size, size, 3]: Lanczos
  down (as ``load_image`` resizes), bicubic up (plain upscaling)."""
  frames = np.asarray(frames)
  if frames.shape[-2] == size:
    return frames
  f = (Image.Resampling.LANCZOS if size < frames.shape[-2]
       else Image.Resampling.BICUBIC)
  flat = frames.reshape((-1,) + frames.shape[-3:])
  out = np.stack([np.asarray(Image.fromarray(x).resize((size, size), f))
                  for x in flat])
  return out.reshape(frames.shape[:-3] + out.shape[1:])


def load_video(path: str, resolution: int, fps: float,
               max_frames: int) -> np.ndarray:
  """A user's video as frames [N, R, R, 3] at ``fps`` (centre-cropped),
  at most ``max_frames``; a bad file is a one-line ValueError."""
  if os.path.isdir(path):
    raise ValueError(f"video {path} is a folder, not a video file")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"video not found: {path}")
  try:
    return resampled_frames(path, fps=fps, resolution=resolution,
                            max_frames=max_frames)
  except (av.FFmpegError, IndexError, ValueError, OSError) as e:
    raise ValueError(f"cannot read video {path}: {e}") from None


class _TooLarge(Exception):
  pass


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


def check_output(path: str, *, overwrite: bool = False) -> None:
  """Raises, before any work is done, if ``path`` cannot be an output."""
  parent = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(parent):
    raise FileNotFoundError(f"output folder does not exist: {parent}")
  suffix = os.path.splitext(path.rstrip("/"))[1].lower()
  if path.endswith("/") or (os.path.isdir(path) and not suffix):
    check_folder(path, overwrite=overwrite)
  elif suffix in VIDEO_SUFFIXES:
    if os.path.isdir(path):
      raise ValueError(f"output {path} is a folder, not a video file")
    if os.path.lexists(path) and not overwrite:
      raise ValueError(f"output {path} exists; pass --overwrite to replace "
                       "it")
  elif suffix:
    raise ValueError(
        f"output {path}: {suffix} is not a format bidigen writes; use .mp4 "
        "or .gif, or a folder (a name without a suffix, or ending in /)")
  else:
    check_folder(path, overwrite=overwrite)


def write_output(frames: np.ndarray, first_offset: int, path: str, *,
                 fps: int = 8, overwrite: bool = False,
                 info: dict | None = None) -> None:
  """A video (.mp4/.gif) in time order, or a folder of signed frames.

  Written next to the target and renamed into place, so a failed run never
  leaves a half-written file or folder behind. An existing video is replaced
  only with ``overwrite``; a folder as ``output_folder`` says.
  """
  check_output(path, overwrite=overwrite)
  path = os.path.abspath(path)
  offsets = [first_offset + i for i in range(len(frames))]
  if path.lower().endswith(VIDEO_SUFFIXES):
    suffix = os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(suffix=suffix, dir=os.path.dirname(path),
                               prefix=_TMP_PREFIX)
    os.close(fd)
    try:
      if suffix.lower() == ".gif":
        iio.imwrite(tmp, frames, duration=1000 / fps, loop=0)
      else:
        iio.imwrite(tmp, frames, fps=fps, codec="libx264")
      os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private.
      if overwrite:
        os.replace(tmp, path)
      else:  # A link never replaces a file that appeared meanwhile.
        try:
          os.link(tmp, path)
        except FileExistsError:
          raise ValueError(f"output {path} exists; pass --overwrite to "
                           "replace it") from None
    finally:
      if os.path.exists(tmp):
        os.remove(tmp)
    return
  with output_folder(path, overwrite=overwrite, info=info) as tmp:
    for frame, off in zip(frames, offsets):
      Image.fromarray(frame).save(os.path.join(tmp, frame_name(off)))
    Image.fromarray(contact_sheet(frames, offsets)).save(
        os.path.join(tmp, "contact_sheet.png"))
