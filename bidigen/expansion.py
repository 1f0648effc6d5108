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

Frames known besides F0 (keyframes, a video's frames, a loop's seam) change
only the plan: ``plan_windows`` orders the windows on the host, and the
compiled program (``make_program``) takes the plan, the known frames and the
guidance scale as arrays, so requests of one length bucket share it. The
sampler users call, ``sample.Generator``, loads a model and runs it.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bidigen import diffusion
from bidigen import motion
from bidigen import sharding
from bidigen.models import taef2

# fold_in takes unsigned data; offsets are shifted to stay non-negative.
_OFFSET_BASE = 1 << 20


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
  """What ``generate`` takes: the UNet's weights, TAEF2's, the latent
  statistics and the target's normalisers from the model's config."""
  mean, std = motion.latent_stats(model_config)
  return {"unet": unet_params,
          "autoencoder": taef2.load() if autoencoder is None else autoencoder,
          "latent_mean": mean, "latent_std": std,
          **motion.scales(model_config)}


def model_space(params, images, known_motion, target: str):
  """Known frames [B, K, R, R, 3] in [-1, 1] (F0 first) and their motion
  from F0 [B, K, h, w, 2] -> (what the model generates for them, F0's
  normalised latent: the anchor)."""
  lats = to_latents(params, images)
  anchor = lats[:, 0]
  return motion.to_model(lats, known_motion, anchor, target=target,
                         residual_rms=params["residual_rms"],
                         motion_rms=params["motion_rms"]), anchor


# Frames decoded at a time: TAEF2's activations for a whole long request
# at once (2049 frames) asked for 32 GB; a few frames at a time keep the
# peak at the frame buffers.
DECODE_FRAMES = 16


def model_frames(params, x, f0, anchor, target: str, strength=1.0):
  """What the model generated [B, T, h, w, c'] -> frames in [-1, 1], at
  most ``DECODE_FRAMES`` at a time (``lax.map``), in chunks of equal size
  so that padding adds less than one frame per chunk (a 9-frame window is
  one chunk of 9, not 16)."""
  b, t = x.shape[:2]
  n = -(-t // DECODE_FRAMES)
  size = -(-t // n)
  pad = jnp.concatenate(
      [x, jnp.zeros((b, n * size - t) + x.shape[2:], x.dtype)], 1)
  chunks = jnp.moveaxis(pad.reshape((b, n, size) + x.shape[2:]), 1, 0)
  out = jax.lax.map(lambda c: motion.pixels(
      lambda z: to_frames(params, z), c, f0, anchor, target=target,
      residual_rms=params["residual_rms"], motion_rms=params["motion_rms"],
      strength=strength), chunks)
  out = jnp.moveaxis(out, 0, 1)
  return out.reshape((b, n * size) + out.shape[3:])[:, :t]


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
  n = windows.valid.shape[0]

  def step(carry, i, *x):
    carry = run(carry, *x)[0]
    # After the step's frames (the known mask depends on them), not before.
    jax.debug.callback(_report, i + 1, n, carry[1].sum())
    return carry, None
  xs = (jnp.arange(n), windows.pos, windows.offsets, windows.valid)
  if use_scan:
    carry, _ = jax.lax.scan(lambda c, x: step(c, *x), carry, xs)
  else:
    for i in range(n):
      carry, _ = step(carry, *(x[i] for x in xs))
  return carry[0]


# Who hears of a running request's expansion steps: ``(step, steps)``
# after each, from inside the compiled program (``sample.Generator`` sets
# it for one call; a step may be heard once per device).
progress = None


def _report(step, steps, _):
  if progress is not None:
    progress(int(step), int(steps))


def generate(params, images, known_motion, known_pos, known, keys, text,
             text_mask, null_text, null_mask, windows: Windows, guidance,
             strength=1.0, *, unet, steps: int, use_scan: bool = True,
             solver: str = "ddim", target: str = "latent",
             resolution: int | None = None):
  """Frames from the known ones: what every request compiles to.

  images [B, K, H, H, 3] in [-1, 1] are the known frames, F0 first (padding
  repeats F0), at buffer positions known_pos [K], with their motion from F0
  known_motion [B, K, h, w, 2] (``target`` "motion" only; zeros otherwise);
  known [2S + 1] marks them. ``strength`` scales the generated motion.
  Returns uint8 frames [B, 2S + 1, H, H, 3], F0 at S, the known frames
  exactly the images given. Images larger than the model's ``resolution``
  are shrunk for the model, and the frames come out at their size
  (``motion.pixels``).
  """
  b, k = images.shape[:2]
  small = images
  if resolution is not None and images.shape[-2] != resolution:
    small = jax.image.resize(
        images, images.shape[:-3] + (resolution, resolution, 3), "lanczos3")
  xs, anchor = model_space(params, small, known_motion, target)
  buffer = jnp.zeros((b, known.shape[0]) + xs.shape[2:], xs.dtype)
  buffer = buffer.at[:, known_pos].set(xs)
  buffer = fill_latents(params["unet"], buffer, known, anchor, keys, text,
                        text_mask, null_text, null_mask, windows, guidance,
                        unet=unet, steps=steps, use_scan=use_scan,
                        solver=solver)
  frames = model_frames(params, buffer, images[:, 0], anchor, target,
                        strength).at[:, known_pos].set(images)
  return jnp.round((jnp.clip(frames, -1, 1) + 1) * 127.5).astype(jnp.uint8)


def make_program(mesh, *, unet, batch: int, steps: int, solver: str = "ddim",
                 use_scan: bool = True, target: str = "latent",
                 resolution: int | None = None):
  """``generate`` jitted once: samples split over the mesh when they
  divide evenly, everything else replicated. The plan, the known frames,
  the guidance scale and the motion strength are arguments, so requests
  whose arrays have the same shapes (length bucket, window pairs,
  known-frame count) share one compiled program."""
  rep = sharding.replicated(mesh)
  data = (sharding.batch_sharding(mesh) if batch % mesh.devices.size == 0
          else rep)

  def fn(params, images, known_motion, known_pos, known, keys, text,
         text_mask, null_text, null_mask, windows, g, strength):
    return generate(params, images, known_motion, known_pos, known, keys,
                    text, text_mask, null_text, null_mask, windows, g,
                    strength, unet=unet, steps=steps, use_scan=use_scan,
                    solver=solver, target=target, resolution=resolution)
  return jax.jit(fn, in_shardings=(rep, data, data, rep, rep) + (data,) * 5
                 + (rep, rep, rep), out_shardings=data)


def sample_keys(seed: int, batch: int):
  """Sample i of a run with seed S uses fold_in(key(S), i)."""
  root = jax.random.key(seed)
  return jax.vmap(lambda i: jax.random.fold_in(root, i))(np.arange(batch))
