"""Recursive bidirectional expansion, as one jitted program.

A first window F-h..F+h is denoised around F0. Each expansion step then
denoises a forward window (its first ``context`` frames already known) and a
backward window (its last ``context`` frames known) as one batch, and writes
both into a frame buffer; a ``lax.scan`` runs the steps, with the DDIM loop
scanned inside. F0's latent conditions every window as a global anchor.
Frames go to and from TAEF2's latent space (frozen, pretrained), normalised
per channel by the statistics saved with the model.
Noise is drawn per sample key and frame offset, so the same seed gives the
same frames however the batch is split over devices.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bidigen import diffusion
from bidigen import sharding
from bidigen.models import taef2

# fold_in takes unsigned data; offsets are shifted to stay non-negative.
_OFFSET_BASE = 1 << 20
# Expansion has no length limit of its own; this keeps one request's frame
# buffer within a machine's memory.
MAX_FRAMES_PER_SIDE = 1024
# Past these, a request is a mistake rather than a setting: quality stops
# improving long before.
MAX_STEPS = 1000
MAX_GUIDANCE = 50.0
MAX_SEED = 2**31 - 1


def plan(frames_before: int, frames_after: int, window: int, context: int):
  """(half window, new frames per step, expansion steps, buffer side)."""
  half = window // 2
  new = window - context
  need = max(frames_before, frames_after)
  steps = max(0, -(-(need - half) // new))
  return half, new, steps, half + steps * new


def bucket(frames_before: int, frames_after: int, window: int,
           context: int) -> int:
  """Frames per side that one compiled sampler serves for this request:
  the expansion steps rounded up to a power of two (0, 1, 2, 4, ...), so
  that lengths within a bucket reuse one program. Noise is drawn per frame
  offset, so the frames of the requested range are the same as without the
  bucket; the extra ones are cut off."""
  half, new, steps, _ = plan(frames_before, frames_after, window, context)
  steps = 0 if steps == 0 else 1 << (steps - 1).bit_length()
  return half + steps * new


class Windows(NamedTuple):
  """The windows one request denoises, in order, as arrays the compiled
  sampler takes (so that a new plan of the same sizes compiles nothing).

  Positions index the frame buffer, whose entry ``side`` is F0; ``offsets``
  are what the model is told (consecutive within a window; past a loop's
  seam they keep counting). ``first_*`` is one window alone; ``pos``/
  ``offsets``/``valid`` [steps, 2, W] are pairs run as one batch, a pair's
  two windows independent of each other (``valid`` False: padding).
  """
  first_pos: np.ndarray
  first_offsets: np.ndarray
  pos: np.ndarray
  offsets: np.ndarray
  valid: np.ndarray


def plan_windows(known, frames_before: int, frames_after: int, window: int,
                 context: int, *,
                 loop: bool = False) -> tuple[Windows, int, int]:
  """Orders the windows that generate F-N..F+M around the known frames.

  ``known``: offsets of the frames given (F0's, 0, among them). Only F0:
  a window centred on it (the ``f0_only`` task), then forward and backward
  windows, each with ``context`` known frames. Gaps between known frames
  are filled before the ends, from both sides, and closed by one window
  holding known frames on both sides (the ``bridge`` task), so a keyframe
  farther than a window away is reached with context around the gap, not
  run into. ``loop``: F+M is followed by F-N, and the seam is such a gap.
  Windows in one round never write a frame another reads.

  Returns (windows, side, steps): the buffer's half length and the pair
  count, rounded up so that requests of similar size share one compiled
  sampler.
  """
  n, m, w = int(frames_before), int(frames_after), int(window)
  size = n + 1 + m
  if loop and size <= w:
    raise ValueError(f"a loop needs more frames than the model's window "
                     f"({w}); asked for {size}")
  canon = (lambda o: (o + n) % size - n) if loop else (lambda o: o)
  have = {canon(int(o)) for o in known}
  if 0 not in have or any(not -n <= o <= m for o in have):
    raise ValueError(f"known offsets {sorted(have)} must include 0 and lie "
                     f"in [-{n}, {m}]")
  need = set(range(-n, m + 1))

  def run_left(a, limit):   # Known frames ending at a, at most limit.
    k = 0
    while k < limit and canon(a - k) in have:
      k += 1
    return k

  def run_right(b, limit):
    k = 0
    while k < limit and canon(b + k) in have:
      k += 1
    return k

  def gaps():
    """(first unknown, last unknown) of each run of needed unknown frames,
    in unwrapped offsets; interior ones (known on both sides) first."""
    todo = sorted(need - have)
    if not todo:
      return [], []
    runs, start = [], todo[0]
    for a, b in zip(todo, todo[1:] + [None]):
      if b != a + 1:
        runs.append([start, a])
        start = b
    if loop and len(runs) > 1 and runs[0][0] == -n and runs[-1][1] == m:
      runs[-1][1] = runs.pop(0)[1] + size  # The run across the seam.
    # Short gaps first: a window closing one may hold frames of the next.
    inner = sorted((r for r in runs
                    if loop or (r[0] - 1 in have and r[1] + 1 in have)),
                   key=lambda r: r[1] - r[0])
    edges = [r for r in runs if r not in inner]
    return inner, edges

  def candidates():
    inner, edges = gaps()
    out = []
    for p, q in inner:
      g, a, b = q - p + 1, p - 1, q + 1
      cl, cr = run_left(a, w), run_right(b, w)
      if g + 2 <= w:  # Bridge: a and b in one window, context both sides.
        # Of the windows holding a and b: one that generates no frame
        # beside a known frame it does not hold, then the fewest unknown
        # frames beyond a and b, then context split evenly.
        def cost(start):
          frames = [canon(start + i) for i in range(w)]
          spill = [f for f in frames[:a - start] + frames[b - start + 1:]
                   if f not in have]
          beside = sum(canon(f + d) in have and canon(f + d) not in frames
                       for f in spill for d in (-1, 1))
          return beside, len(spill), abs((a - start) - (start + w - 1 - b))
        out.append(min(range(b - w + 1, a + 1), key=cost))
      else:
        # Forward from a and backward from b, each stopping short of the
        # frame beside the other end (that one is for a window holding
        # both): when a lone keyframe leaves exactly w - 1 frames, the
        # window takes one unknown frame beyond its known end instead.
        out.append(min(a - min(cl, context) + 1, b - 1 - w))
        out.append(max(b + min(cr, context) - w, a + 2))
    if not out:
      for p, q in edges:
        if p > 0:   # After the last known frame: forward.
          out.append(p - min(run_left(p - 1, w), context))
        else:       # Before the first one: backward.
          out.append(q + min(run_right(q + 1, w), context) + 1 - w)
    return out

  rounds = []
  if have == {0}:
    rounds.append([-(w // 2)])
    have.update(canon(o) for o in range(-(w // 2), w - w // 2))
  while need - have:
    written, read, chosen = set(), set(), []
    for start in candidates():
      frames = {canon(start + i) for i in range(w)}
      new = frames - have
      if not new or frames & written or new & read:
        continue
      chosen.append(start)
      written |= new
      read |= frames
    have |= written
    rounds.append(chosen)

  half, new = w // 2, w - context
  if not rounds:
    rounds = [[-half]]
  reach = max(abs(canon(s + i)) for r in rounds for s in r for i in range(w))
  first, pairs = rounds[0][0], []
  for r in [rounds[0][1:]] + rounds[1:]:
    pairs += [r[i:i + 2] for i in range(0, len(r), 2)]
  side = bucket(reach, reach, w, context)
  steps = 0 if not pairs else 1 << (len(pairs) - 1).bit_length()
  idx = np.arange(w)
  posn = lambda s: np.array([canon(s + i) for i in idx]) + side
  pos = np.tile(posn(first), (steps, 2, 1))
  offs = np.tile(first + idx, (steps, 2, 1))
  valid = np.zeros((steps, 2), bool)
  for i, pair in enumerate(pairs):
    for j, s in enumerate(pair):
      pos[i, j], offs[i, j], valid[i, j] = posn(s), s + idx, True
  windows = Windows(posn(first).astype(np.int32),
                    (first + idx).astype(np.int32), pos.astype(np.int32),
                    offs.astype(np.int32), valid)
  return windows, side, steps


def to_latents(params, images):
  """Frames [..., R, R, 3] in [-1, 1] -> normalised latents, as trained."""
  z = taef2.encode(params["autoencoder"], (images + 1.0) / 2.0)
  return (z.astype(jnp.float32) - params["latent_mean"]) / params["latent_std"]


def to_frames(params, latents):
  """Normalised latents -> frames in [-1, 1]."""
  z = latents * params["latent_std"] + params["latent_mean"]
  return taef2.decode(params["autoencoder"], z).astype(jnp.float32) * 2 - 1


def model_params(unet_params: dict, model_config, autoencoder=None) -> dict:
  """What ``expand`` takes: the UNet's weights, TAEF2's, and the latent
  statistics from the model's config."""
  from bidigen import checkpoints  # pylint: disable=import-outside-toplevel
  mean, std = checkpoints.latent_stats(model_config)
  return {"unet": unet_params,
          "autoencoder": taef2.load() if autoencoder is None else autoencoder,
          "latent_mean": mean, "latent_std": std}


def frame_noise(keys, offsets, shape):
  """Standard normal noise for each (sample key, frame offset)."""
  one = lambda k, o: jax.random.normal(
      jax.random.fold_in(k, o + _OFFSET_BASE), shape)
  return jax.vmap(jax.vmap(one, (None, 0)), (0, 0))(keys, offsets)


def fill_latents(unet_params, buffer, known, anchor, keys, text, text_mask,
                 null_text, null_mask, windows: Windows, guidance, *, unet,
                 steps: int, use_scan: bool = True, solver: str = "ddim"):
  """Denoises the planned windows into the frame buffer, in normalised
  latent space: buffer [B, 2S + 1, h, w, c] holds the known frames at their
  positions (F0 at S), known [2S + 1] says which; anchor [B, h, w, c] is
  F0's latent. Each window reads what the buffer knows by then, so a window
  after others continues them; returns the filled buffer."""
  b, lat = buffer.shape[0], buffer.shape[2:]
  side = (buffer.shape[1] - 1) // 2
  denoise = functools.partial(
      diffusion.denoise_window, unet.apply, unet_params, steps=steps,
      guidance=guidance, use_scan=use_scan, solver=solver)

  def run(carry, pos, offsets, valid):
    """pos/offsets [P, W], valid [P]: P windows as one batch of P * B."""
    buffer, known = carry
    p, w = pos.shape
    tile = lambda a: jnp.concatenate([a] * p, axis=0)
    per = lambda a: jnp.repeat(a, b, axis=0)  # [P, W] -> [P * B, W].
    ctx = jnp.concatenate([buffer[:, pos[j]] for j in range(p)])
    out = denoise(frame_noise(tile(keys), per(pos - side), lat), ctx,
                  per(known[pos]), tile(anchor), per(offsets), tile(text),
                  tile(text_mask), tile(null_text), tile(null_mask))
    for j in range(p):
      old = buffer[:, pos[j]]
      buffer = buffer.at[:, pos[j]].set(
          jnp.where(valid[j], out[j * b:(j + 1) * b], old))
      known = known.at[pos[j]].max(valid[j].astype(known.dtype))
    return (buffer, known), None

  carry = run((buffer, known), windows.first_pos[None],
              windows.first_offsets[None], jnp.ones((1,), bool))[0]
  xs = (windows.pos, windows.offsets, windows.valid)
  if use_scan:
    carry, _ = jax.lax.scan(lambda c, x: run(c, *x), carry, xs)
  else:
    for i in range(windows.valid.shape[0]):
      carry, _ = run(carry, *(x[i] for x in xs))
  return carry[0]


def generate(params, images, known_pos, known, keys, text, text_mask,
             null_text, null_mask, windows: Windows, guidance, *, unet,
             steps: int, use_scan: bool = True, solver: str = "ddim"):
  """Frames from the known ones: what every request compiles to.

  images [B, K, H, W, 3] in [-1, 1] are the known frames, F0 first (padding
  repeats F0), at buffer positions known_pos [K]; known [2S + 1] marks
  them. Returns uint8 frames [B, 2S + 1, H, W, 3], F0 at S, the known
  frames exactly the images given.
  """
  b, k = images.shape[:2]
  lats = to_latents(params, images)
  anchor = lats[:, 0]
  buffer = jnp.zeros((b, known.shape[0]) + lats.shape[2:], lats.dtype)
  buffer = buffer.at[:, known_pos].set(lats)
  buffer = fill_latents(params["unet"], buffer, known, anchor, keys, text,
                        text_mask, null_text, null_mask, windows, guidance,
                        unet=unet, steps=steps, use_scan=use_scan,
                        solver=solver)
  frames = to_frames(params, buffer).at[:, known_pos].set(images)
  return jnp.round((jnp.clip(frames, -1, 1) + 1) * 127.5).astype(jnp.uint8)


def expand(params, images, keys, text, text_mask, null_text, null_mask, *,
           unet, window: int, context: int, frames_before: int,
           frames_after: int, steps: int, guidance: float,
           use_scan: bool = True, solver: str = "ddim"):
  """Generates frames F-N..F+M around each image (F0 only known).

  Args: images [B, H, W, 3] in [-1, 1]; keys [B] (one PRNG key per sample);
  text/text_mask the prompt's tokens [B, L, D] / [B, L]; null_* the empty
  prompt's, for guidance. Returns uint8 frames [B, N + 1 + M, H, W, 3] whose
  F0 is the input image itself.
  """
  windows, side, _ = plan_windows((0,), frames_before, frames_after, window,
                                  context)
  frames = generate(params, images[:, None], jnp.array([side]),
                    jnp.zeros(2 * side + 1).at[side].set(1.0), keys, text,
                    text_mask, null_text, null_mask, windows, guidance,
                    unet=unet, steps=steps, use_scan=use_scan, solver=solver)
  return frames[:, side - frames_before:side + frames_after + 1]


def expand_latents(unet_params, anchor, keys, text, text_mask, null_text,
                   null_mask, *, unet, window: int, context: int,
                   frames_before: int, frames_after: int, steps: int,
                   guidance: float, use_scan: bool = True,
                   solver: str = "ddim", keyframes=None, loop: bool = False):
  """The expansion itself, in normalised latent space: anchor [B, h, w, c]
  is F0's latent, keyframes {offset: latents [B, h, w, c]} any others;
  returns latents [B, N + 1 + M, h, w, c]. Kept apart from the autoencoder
  so that it can be checked against a model whose answer is known."""
  keyframes = keyframes or {}
  windows, side, _ = plan_windows((0, *keyframes), frames_before,
                                  frames_after, window, context, loop=loop)
  buffer = jnp.zeros((anchor.shape[0], 2 * side + 1) + anchor.shape[1:])
  known = jnp.zeros(2 * side + 1)
  for o, lat in {0: anchor, **keyframes}.items():
    buffer, known = buffer.at[:, side + o].set(lat), known.at[side + o].set(1)
  buffer = fill_latents(unet_params, buffer, known, anchor, keys, text,
                        text_mask, null_text, null_mask, windows, guidance,
                        unet=unet, steps=steps, use_scan=use_scan,
                        solver=solver)
  return buffer[:, side - frames_before:side + frames_after + 1]


def make_program(mesh, *, unet, batch: int, steps: int, solver: str = "ddim",
                 use_scan: bool = True):
  """``generate`` jitted once: samples split over the mesh when they
  divide evenly, everything else replicated. The plan, the known frames and
  the guidance scale are arguments, so requests whose arrays have the same
  shapes (length bucket, window pairs, known-frame count) share one
  compiled program."""
  rep = sharding.replicated(mesh)
  data = (sharding.batch_sharding(mesh) if batch % mesh.devices.size == 0
          else rep)

  def fn(params, images, known_pos, known, keys, text, text_mask, null_text,
         null_mask, windows, g):
    return generate(params, images, known_pos, known, keys, text, text_mask,
                    null_text, null_mask, windows, g, unet=unet, steps=steps,
                    use_scan=use_scan, solver=solver)
  return jax.jit(fn, in_shardings=(rep, data, rep, rep) + (data,) * 5
                 + (rep, rep), out_shardings=data)


def make_sampler(mesh, *, unet, batch: int, guidance: float, window: int,
                 context: int, frames_before: int, frames_after: int,
                 steps: int, solver: str = "ddim", use_scan: bool = True):
  """``expand`` for one length, compiled once. The guidance scale is an
  argument of the compiled program, not a constant in it:
  ``sampler(..., guidance=g)`` changes it without compiling again
  (``guidance`` here is the default)."""
  program = make_program(mesh, unet=unet, batch=batch, steps=steps,
                         solver=solver, use_scan=use_scan)
  windows, side, _ = plan_windows((0,), frames_before, frames_after, window,
                                  context)
  known = np.zeros(2 * side + 1, np.float32)
  known[side] = 1

  def sampler(params, images, keys, text, text_mask, null_text, null_mask,
              guidance=guidance):
    frames = program(params, images[:, None], np.array([side]), known, keys,
                     text, text_mask, null_text, null_mask, windows,
                     np.float32(guidance))
    return frames[:, side - frames_before:side + frames_after + 1]
  sampler._cache_size = program._cache_size  # For the compile-count tests.
  return sampler


def sample_keys(seed: int, batch: int):
  """Sample i of a run with seed S uses fold_in(key(S), i)."""
  root = jax.random.key(seed)
  return jax.vmap(lambda i: jax.random.fold_in(root, i))(np.arange(batch))


def check_settings(frames_before: int, frames_after: int,
                   steps: int | None = None, guidance: float | None = None,
                   seed: int = 0) -> None:
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


class Generator:
  """A loaded model, ready to sample: what the CLI, GUI and Colab share.

  Loads the weights and the text encoder once, builds no trainer or
  optimizer; each (length bucket, steps, batch, solver) compiles once and
  is reused, whatever the guidance.
  """

  def __init__(self, checkpoint: str | None = None, mesh=None):
    from bidigen import checkpoints, models, text
    self.config, loaded = checkpoints.load_model(checkpoint)
    self.params = model_params(loaded["unet"], self.config.model)
    self.mesh = mesh or sharding.make_mesh([("data", -1)])
    self.unet = models.build(self.config.model)
    self.resolution = self.config.data.resolution
    mt = self.config.model.text
    self.encoder = text.load_text_encoder(mt.kind, mt.path, mt.max_length)
    self.params = jax.device_put(self.params,
                                 sharding.replicated(self.mesh))
    self._compiled = {}

  def __call__(self, images: np.ndarray, prompts, *, frames_before: int,
               frames_after: int, seed: int = 0, steps: int | None = None,
               guidance: float | None = None, keys=None,
               solver: str | None = None, keyframes=None,
               loop: bool = False) -> np.ndarray:
    """uint8 images [B, R, R, 3] -> uint8 frames [B, N + 1 + M, R, R, 3].

    ``keyframes`` {offset: uint8 [B, R, R, 3] or [R, R, 3]}: frames known
    besides F0 (a user's keyframes, or a video's frames to extend); each
    appears exactly at its offset. ``loop``: F+M leads back into F-N.
    """
    steps = self.config.sample.steps if steps is None else steps
    # An unknown solver is refused by diffusion.denoise_window, naming
    # the known ones.
    solver = solver or self.config.sample.get("solver", "ddim")
    guidance = (self.config.sample.guidance if guidance is None
                else guidance)
    check_settings(frames_before, frames_after, steps, guidance, seed)
    r = self.resolution
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1:] != (r, r, 3):
      raise ValueError(f"images must be [B, {r}, {r}, 3], got {images.shape}")
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
    windows, side, _ = plan_windows(
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
      self._compiled[key] = make_program(self.mesh, unet=self.unet, batch=b,
                                         steps=steps, solver=solver)
    text, tmask = self.encoder.encode(list(prompts))
    null, null_mask = self.encoder.encode([""] * b)
    keys = sample_keys(seed, b) if keys is None else keys
    x = np.stack(known, 1).astype(np.float32) / 127.5 - 1.0
    frames = np.asarray(self._compiled[key](
        self.params, x, pos, mask, keys, text, tmask, null, null_mask,
        windows, np.float32(guidance)))
    return frames[:, side - frames_before:side + frames_after + 1]


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


# Frames of a --video read at most: each is a known frame the sampler
# encodes, and beyond this a clip is better cut by the user.
MAX_VIDEO_FRAMES = 256


def run(*, image: str | None, prompt: str, frames_before: int,
        frames_after: int, seed: int, output: str | None,
        overwrite: bool = False, checkpoint: str | None = None,
        guidance: float | None = None, steps: int | None = None,
        solver: str | None = None, video: str | None = None,
        video_frame: int | None = None, keyframes=(), loop: bool = False,
        config=None) -> np.ndarray:
  """The ``--mode=sample`` command: an image (and keyframes) or a video in,
  a video or folder out."""
  import os
  import sys
  import time
  from bidigen import media
  del config  # The model's own config (saved with it) decides everything.
  if image and video:
    raise ValueError("give --image or --video, not both")
  if not image and not video:
    raise ValueError("--image (or --video) is required for --mode=sample")
  if not output:
    raise ValueError("--output is required for --mode=sample (.mp4, .gif "
                     "or a folder)")
  check_settings(frames_before, frames_after, steps, guidance, seed)
  keys = [parse_keyframe(k) for k in keyframes]
  offsets = [o for _, o in keys]
  if len(set(offsets)) < len(offsets) or 0 in offsets:
    raise ValueError(f"--keyframe offsets {offsets} must differ and not be "
                     f"0 (F0 is the --image)")
  media.check_output(output, overwrite=overwrite)
  # Bad input fails before the model loads.
  for path in [image] * bool(image) + [p for p, _ in keys]:
    media.load_image(path, 8)
  if video:
    media.load_video(video, 8, 1.0, 1)
  t0 = time.time()
  gen = Generator(checkpoint)
  known = {}
  before, after = frames_before, frames_after
  if video:
    clip = media.load_video(video, gen.resolution, gen.config.sample.fps,
                            MAX_VIDEO_FRAMES)
    i0 = len(clip) // 2 if video_frame is None else video_frame
    if not 0 <= i0 < len(clip):
      raise ValueError(f"--video_frame={i0}, but {video} has {len(clip)} "
                       f"frames at {gen.config.sample.fps:g} fps")
    frame0 = clip[i0]
    known = {i - i0: f for i, f in enumerate(clip) if i != i0}
    before, after = i0 + frames_before, len(clip) - 1 - i0 + frames_after
    check_settings(before, after)
  else:
    frame0 = media.load_image(image, gen.resolution)
  for path, o in keys:
    if o in known:
      raise ValueError(f"--keyframe={path}@{o}: F{o:+d} is a frame of the "
                       f"video already")
    if not -before <= o <= after:
      raise ValueError(f"--keyframe={path}@{o} is outside the frames asked "
                       f"for (F{-before:+d} to F{after:+d}); raise "
                       f"--frames_{'before' if o < 0 else 'after'}")
    known[o] = media.load_image(path, gen.resolution)
  cut = gen.encoder.too_long(prompt)
  if cut:
    print(f"bidigen: warning: {cut}", file=sys.stderr, flush=True)
  total = before + 1 + after
  print(f"sampling {total} frames ({before} before, {after} after"
        f"{', ' + str(len(known)) + ' known' if known else ''}"
        f"{', looped' if loop else ''}) at {gen.resolution}px, prompt "
        f"{prompt!r} ...", flush=True)
  frames = gen(frame0[None], [prompt], frames_before=before,
               frames_after=after, seed=seed, steps=steps,
               guidance=guidance, solver=solver,
               keyframes={o: f[None] for o, f in known.items()},
               loop=loop)[0]
  media.write_output(
      frames, -before, output, fps=gen.config.sample.fps,
      overwrite=overwrite,
      info={"image": image and os.path.abspath(image),
            "video": video and os.path.abspath(video),
            "video_frame": video and i0,
            "keyframes": {str(o): os.path.abspath(p) for p, o in keys},
            "loop": loop, "prompt": prompt, "seed": seed,
            "frames_before": before, "frames_after": after,
            "steps": steps or gen.config.sample.steps,
            "solver": solver or gen.config.sample.get("solver", "ddim"),
            "guidance": (gen.config.sample.guidance if guidance is None
                         else guidance),
            "checkpoint": checkpoint or "embedded default model"})
  print(f"wrote {output} ({total} frames) in {time.time() - t0:.1f}s")
  return frames
