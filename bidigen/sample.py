"""The sampler users call: a loaded model (``Generator``), the checks on a
request's settings, and the ``--mode=sample`` command (``run``).

The expansion itself, the window plan and the one compiled program every
request runs, is ``bidigen.expansion``; this module loads a model, encodes
prompts, pads requests so that lengths in a bucket share a program, and
writes the output.
"""

import dataclasses

import jax
import numpy as np

from bidigen import expansion
from bidigen import media
from bidigen import sharding

# Expansion has no length limit of its own; this keeps one request's frame
# buffer within a machine's memory.
MAX_FRAMES_PER_SIDE = 1024
# Past these, a request is a mistake rather than a setting: quality stops
# improving long before.
MAX_STEPS = 1000
MAX_GUIDANCE = 50.0
MAX_SEED = 2**31 - 1
# Beyond twice the model's own motion, frames tear: F0 moved that far has
# little left to show.
MAX_MOTION_STRENGTH = 2.0
# Frames above the model's resolution (the photo's own size): F0 moved at
# that size plus the upscaled correction. The pixel budget keeps a long
# request's float32 frames within ~1.6 GB (2049 frames, the longest
# request, at 256 px; 512 at 512 px).
MAX_OUTPUT_RESOLUTION = 1024
MAX_OUTPUT_PIXELS = 2049 * 256 * 256


def check_settings(frames_before: int, frames_after: int,
                   steps: int | None = None, guidance: float | None = None,
                   seed: int = 0, motion_strength: float = 1.0) -> None:
  """Raises ValueError naming the first setting out of range (None: the
  model's default, checked where it is read)."""
  for name, n, low, high in (
      ("frames_before", frames_before, 0, MAX_FRAMES_PER_SIDE),
      ("frames_after", frames_after, 0, MAX_FRAMES_PER_SIDE),
      ("steps", 1 if steps is None else steps, 1, MAX_STEPS),
      ("seed", seed, 0, MAX_SEED)):
    if (isinstance(n, bool) or not isinstance(n, (int, np.integer))
        or not low <= n <= high):
      raise ValueError(f"{name} must be a whole number in [{low}, {high}], "
                       f"got {n!r}")
  if guidance is not None and not (isinstance(guidance, (int, float, np.number))
                                   and 0 <= guidance <= MAX_GUIDANCE):
    # NaN fails the comparison too: it would fill every frame with NaN.
    raise ValueError(f"guidance must be in [0, {MAX_GUIDANCE:g}], got "
                     f"{guidance!r}")
  if not (isinstance(motion_strength, (int, float, np.number))
          and 0 <= motion_strength <= MAX_MOTION_STRENGTH):
    raise ValueError(f"motion_strength must be in [0, "
                     f"{MAX_MOTION_STRENGTH:g}], got {motion_strength!r}")


def check_output_resolution(size: int, resolution: int, frames: int) -> None:
  """Raises ValueError unless ``frames`` frames of ``size`` px are a
  request the model of ``resolution`` px serves: from its resolution to
  ``MAX_OUTPUT_RESOLUTION``, within ``MAX_OUTPUT_PIXELS`` in all."""
  if not resolution <= size <= MAX_OUTPUT_RESOLUTION:
    raise ValueError(f"output resolution {size}px: must be from the model's "
                     f"{resolution} to {MAX_OUTPUT_RESOLUTION}")
  if frames * size * size > MAX_OUTPUT_PIXELS:
    raise ValueError(f"{frames} frames at {size}px are over "
                     f"{MAX_OUTPUT_PIXELS / 1e6:.0f} megapixels in all: ask "
                     f"for fewer frames or a smaller output resolution")


class Generator:
  """A loaded model, ready to sample: what the CLI, GUI and Colab share.

  Loads the weights and the text encoder once, builds no trainer or
  optimizer; each (length bucket, steps, batch, solver) compiles once and
  is reused, whatever the guidance.
  """

  def __init__(self, checkpoint: str | None = None, mesh=None):
    from bidigen import checkpoints, models, text
    self.config, loaded = checkpoints.load_model(checkpoint)
    self.params = expansion.model_params(loaded["unet"], self.config.model)
    self.mesh = mesh or sharding.make_mesh([("data", -1)])
    self.unet = models.build(self.config.model)
    self.resolution = self.config.data.resolution
    mt = self.config.model.text
    self.encoder = text.load_text_encoder(mt.kind, mt.path, mt.max_length)
    self.params = jax.device_put(self.params,
                                 sharding.replicated(self.mesh))
    self.target = self.config.model.target
    self._compiled = {}

  def known_motion(self, frames: np.ndarray) -> np.ndarray:
    """uint8 known frames [B, K, R, R, 3], F0 first -> their motion from F0
    [B, K, h, w, 2], as the encode step labels training clips (OpenCV DIS,
    in latent cells); zeros where the model generates no motion."""
    from bidigen import metrics  # pylint: disable=import-outside-toplevel
    from bidigen.models import taef2  # pylint: disable=import-outside-toplevel
    b, k, r = frames.shape[:3]
    h = r // taef2.FACTOR
    if self.target != "motion":
      return np.zeros((b, k, h, h, 2), np.float32)
    return np.stack([metrics.motion_from(f, f[0], taef2.FACTOR)
                     for f in frames])

  def __call__(self, images: np.ndarray, prompts, *, frames_before: int,
               frames_after: int, seed: int = 0, steps: int | None = None,
               guidance: float | None = None, keys=None,
               solver: str | None = None, keyframes=None,
               loop: bool = False, motion_strength: float = 1.0,
               progress=None) -> np.ndarray:
    """uint8 images [B, S, S, 3] -> uint8 frames [B, N + 1 + M, S, S, 3].

    S is the model's resolution R, or larger (up to
    ``MAX_OUTPUT_RESOLUTION``): the model works at R and the frames are F0
    moved at S plus the correction upscaled. ``keyframes`` {offset: uint8
    [B, S, S, 3] or [S, S, 3]}: frames known besides F0 (a user's
    keyframes, or a video's frames to extend); each appears exactly at its
    offset. ``loop``: F+M leads back into F-N.
    ``motion_strength`` scales the motion a "motion" model generates (0
    keeps F0 in place; 1, the default, is the model's own). ``progress``
    (step, steps) hears of each expansion step as it ends (of a replicated
    request, once per device).
    """
    steps = self.config.sample.steps if steps is None else steps
    # An unknown solver is refused by diffusion.denoise_window, naming
    # the known ones.
    solver = solver or self.config.sample.solver
    guidance = (self.config.sample.guidance if guidance is None
                else guidance)
    check_settings(frames_before, frames_after, steps, guidance, seed,
                   motion_strength)
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[2:] != (images.shape[1], 3):
      raise ValueError(f"images must be square RGB [B, S, S, 3], got "
                       f"{images.shape}")
    r = images.shape[1]
    check_output_resolution(r, self.resolution,
                            frames_before + frames_after + 1)
    b = images.shape[0]
    if len(prompts) != b:
      raise ValueError(f"{len(prompts)} prompts for {b} images")
    known = [images]
    for o, frame in sorted((keyframes or {}).items()):
      frame = np.asarray(frame)
      if frame.ndim == 3:  # One image for the whole batch.
        frame = np.broadcast_to(frame, (b,) + frame.shape)
      if frame.shape != (b, r, r, 3) or o == 0 or not (
          -frames_before <= o <= frames_after):
        raise ValueError(
            f"keyframe at F{o:+d}: must be a [{r}, {r}, 3] image at an "
            f"offset in [-{frames_before}, {frames_after}] other than 0 "
            f"(F0 is the image), got shape {frame.shape}")
      known.append(frame)
    offsets = [0] + sorted(keyframes or {})
    windows, side, _ = expansion.plan_windows(
        offsets, frames_before, frames_after, self.config.model.window,
        self.config.model.context_frames, loop=loop)
    # Known frames padded to a power of two with copies of F0 (written
    # twice, the same value), so that counts in a bucket share a program.
    pad = 1 << (len(known) - 1).bit_length()
    known += [images] * (pad - len(known))
    pos = np.array(offsets + [0] * (pad - len(offsets)), np.int32) + side
    mask = np.zeros(2 * side + 1, np.float32)
    mask[pos] = 1
    key = (steps, b, solver)
    if key not in self._compiled:
      self._compiled[key] = expansion.make_program(
          self.mesh, unet=self.unet, batch=b, steps=steps, solver=solver,
          target=self.target, resolution=self.resolution)
    text, tmask = self.encoder.encode(list(prompts))
    null, null_mask = self.encoder.encode([""] * b)
    keys = expansion.sample_keys(seed, b) if keys is None else keys
    frames_in = np.stack(known, 1)
    x = frames_in.astype(np.float32) / 127.5 - 1.0
    expansion.progress = progress
    try:
      frames = np.asarray(self._compiled[key](
          self.params, x, self.known_motion(media.resize_frames(
              frames_in, self.resolution)), pos, mask, keys, text,
          tmask, null, null_mask, windows, np.float32(guidance),
          np.float32(motion_strength)))
    finally:
      expansion.progress = None
    return frames[:, side - frames_before:side + frames_after + 1]

  def sample(self, req: "Request", prompt: str, **settings) -> np.ndarray:
    """One ``Request``'s frames, uint8 [N + 1 + M, S, S, 3], for
    ``prompt``; ``settings`` (seed, steps, guidance, solver,
    motion_strength, progress) as in ``__call__``."""
    return self(req.frame0[None], [prompt], frames_before=req.frames_before,
                frames_after=req.frames_after, loop=req.loop,
                keyframes={o: f[None] for o, f in req.known.items()},
                **settings)[0]


def parse_keyframe(spec: str) -> tuple[str, int]:
  """"PATH@OFFSET" -> (path, offset); the last @ splits, so paths may
  hold one."""
  path, at, offset = spec.rpartition("@")
  try:
    if not at or not path:
      raise ValueError
    return path, int(offset)
  except ValueError:
    raise ValueError(f"--keyframe={spec}: expected PATH@OFFSET, for "
                     f"example end.png@16 or start.png@-8") from None


# Frames of a video read at most (CLI, GUI and Colab alike): each is a
# known frame the sampler encodes, and beyond this a clip is better cut by
# the user. A longer video is read up to here, so a 10-minute or 4K file
# costs no more time or memory than this many frames.
MAX_VIDEO_FRAMES = 256
# The farthest a keyframe can be from F0 (a video's frames plus the most
# frames asked beyond them): offsets are checked against this until the
# request's own range is known.
MAX_KEYFRAME_OFFSET = MAX_FRAMES_PER_SIDE + MAX_VIDEO_FRAMES


@dataclasses.dataclass(frozen=True)
class Request:
  """One video asked for, however it was given (an image or a video,
  keyframes, a loop): F0 uint8 [S, S, 3], the frames known besides it
  {offset: uint8 [S, S, 3]}, the frames wanted on each side, and whether
  F+M leads back into F-N. ``request`` builds and checks it; the CLI, the
  GUI and Colab send it to ``Generator.sample``."""
  frame0: np.ndarray
  known: dict
  frames_before: int
  frames_after: int
  loop: bool = False
  video_frame: int | None = None  # F0's frame of the video, if one.


def check_keyframes(offsets, frames_before: int, frames_after: int,
                    taken=()) -> None:
  """The one rule for keyframe offsets: each in [-N, M], not 0 (F0 is the
  image), not twice, not on a frame already ``taken`` (a video's)."""
  seen = set(taken)
  for o in offsets:
    if o == 0:
      raise ValueError("a keyframe at F+0: F0 is the image itself")
    if o in seen:
      raise ValueError(f"a keyframe at F{o:+d}: that frame is "
                       + ("a frame of the video" if o in taken else
                          "given twice"))
    if not -frames_before <= o <= frames_after:
      raise ValueError(
          f"a keyframe at F{o:+d} is outside the frames asked for "
          f"(F{-frames_before:+d} to F{frames_after:+d}): ask for more "
          f"frames {'before' if o < 0 else 'after'} F0")
    seen.add(o)


def from_video(clip: np.ndarray, i0: int, frames_before: int,
               frames_after: int) -> tuple:
  """A video extended both ways, as a request: F0 its frame ``i0``, every
  other frame known at its offset from F0, and ``frames_before`` /
  ``frames_after`` counted beyond the video's ends. Returns (F0, {offset:
  frame}, frames before F0, frames after F0)."""
  if not 0 <= i0 < len(clip):
    raise ValueError(f"video frame {i0} picked as F0, but the video has "
                     f"{len(clip)} frames (0 to {len(clip) - 1})")
  known = {i - i0: f for i, f in enumerate(clip) if i != i0}
  before, after = i0 + frames_before, len(clip) - 1 - i0 + frames_after
  check_settings(before, after)
  return clip[i0], known, before, after


def request(size: int, fps: float, *, frames_before: int, frames_after: int,
            image: str | None = None, video: str | None = None,
            video_frame: int | None = None, keyframes=(),
            loop: bool = False) -> Request:
  """A user's request, read at ``size`` px and checked: ``image`` (a path)
  or ``video`` (a path, its frame ``video_frame`` F0, the middle one by
  default, ``frames_before``/``frames_after`` counted beyond its ends),
  ``keyframes`` [(path, offset)]. Every mistake is one ValueError (or
  FileNotFoundError) naming it."""
  if bool(image) == bool(video):
    raise ValueError("give an image or a video, not both" if image else
                     "an image (or a video) is required")
  check_settings(frames_before, frames_after)
  known = {}
  before, after = frames_before, frames_after
  if video:
    clip = media.load_video(video, size, fps, MAX_VIDEO_FRAMES)
    video_frame = len(clip) // 2 if video_frame is None else video_frame
    frame0, known, before, after = from_video(clip, video_frame, before,
                                              after)
  else:
    frame0 = media.load_image(image, size)
  check_keyframes([o for _, o in keyframes], before, after, taken=known)
  for path, o in keyframes:
    known[o] = media.load_image(path, size)
  return Request(frame0, known, before, after, bool(loop),
                 video_frame if video else None)


def progress_lines(t0: float, every: float = 5.0):
  """A ``progress`` for ``Generator``: a line at most every ``every``
  seconds (and at the last step), each step once however many devices
  report it."""
  import time  # pylint: disable=import-outside-toplevel
  last = {"step": 0, "time": t0}

  def report(step: int, steps: int) -> None:
    now = time.time()
    if step <= last["step"] or (now - last["time"] < every and step < steps):
      return
    last.update(step=step, time=now)
    print(f"  expansion step {step}/{steps}, {now - t0:.0f} s", flush=True)
  return report


def run(*, image: str | None, prompt: str, frames_before: int,
        frames_after: int, seed: int, output: str | None,
        overwrite: bool = False, checkpoint: str | None = None,
        guidance: float | None = None, steps: int | None = None,
        solver: str | None = None, video: str | None = None,
        video_frame: int | None = None, keyframes=(), loop: bool = False,
        motion_strength: float = 1.0, output_resolution: int | None = None,
        config=None) -> np.ndarray:
  """The ``--mode=sample`` command: an image (and keyframes) or a video in,
  a video or folder out, at the model's resolution or ``output_resolution``
  (the inputs are read at that size)."""
  import os
  import sys
  import time
  del config  # The model's own config (saved with it) decides everything.
  if image and video:
    raise ValueError("give --image or --video, not both")
  if not image and not video:
    raise ValueError("--image (or --video) is required for --mode=sample")
  if not output:
    raise ValueError("--output is required for --mode=sample (.mp4, .gif "
                     "or a folder)")
  check_settings(frames_before, frames_after, steps, guidance, seed,
                 motion_strength)
  keys = [parse_keyframe(k) for k in keyframes]
  # A video's length is known once it is read; until then, the offsets'
  # range is checked only against the farthest any request reaches.
  far = MAX_KEYFRAME_OFFSET
  check_keyframes([o for _, o in keys], far if video else frames_before,
                  far if video else frames_after)
  media.check_output(output, overwrite=overwrite)
  # Bad input fails before the model loads.
  for path in [image] * bool(image) + [p for p, _ in keys]:
    media.load_image(path, 8)
  if video:
    media.load_video(video, 8, 1.0, 1)
  t0 = time.time()
  gen = Generator(checkpoint)
  size = output_resolution or gen.resolution
  check_output_resolution(size, gen.resolution,
                          frames_before + frames_after + 1)
  req = request(size, gen.config.sample.fps, frames_before=frames_before,
                frames_after=frames_after, image=image, video=video,
                video_frame=video_frame, keyframes=keys, loop=loop)
  cut = gen.encoder.too_long(prompt)
  if cut:
    print(f"bidigen: warning: {cut}", file=sys.stderr, flush=True)
  before, after = req.frames_before, req.frames_after
  total = before + 1 + after
  model_size = (f" (the model at {gen.resolution}px)"
                if size > gen.resolution else "")
  print(f"sampling {total} frames ({before} before, {after} after"
        f"{', ' + str(len(req.known)) + ' known' if req.known else ''}"
        f"{', looped' if loop else ''}) at {size}px{model_size}, prompt "
        f"{prompt!r} ...", flush=True)
  frames = gen.sample(req, prompt, seed=seed, steps=steps,
                      guidance=guidance, solver=solver,
                      motion_strength=motion_strength,
                      progress=progress_lines(time.time()))
  media.write_output(
      frames, -before, output, fps=gen.config.sample.fps,
      overwrite=overwrite,
      info={"image": image and os.path.abspath(image),
            "video": video and os.path.abspath(video),
            "video_frame": req.video_frame,
            "keyframes": {str(o): os.path.abspath(p) for p, o in keys},
            "loop": loop, "prompt": prompt, "seed": seed,
            "motion_strength": motion_strength, "output_resolution": size,
            "frames_before": before, "frames_after": after,
            "steps": steps or gen.config.sample.steps,
            "solver": solver or gen.config.sample.solver,
            "guidance": (gen.config.sample.guidance if guidance is None
                         else guidance),
            "checkpoint": checkpoint or "embedded default model"})
  print(f"wrote {output} ({total} frames) in {time.time() - t0:.1f}s")
  return frames
