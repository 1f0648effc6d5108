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


def expand(params, images, keys, text, text_mask, null_text, null_mask, *,
           unet, window: int, context: int, frames_before: int,
           frames_after: int, steps: int, guidance: float,
           use_scan: bool = True, solver: str = "ddim"):
  """Generates frames F-N..F+M around each image.

  Args: images [B, H, W, 3] in [-1, 1]; keys [B] (one PRNG key per sample);
  text/text_mask the prompt's tokens [B, L, D] / [B, L]; null_* the empty
  prompt's, for guidance. Returns uint8 frames [B, N + 1 + M, H, W, 3] whose
  F0 is the input image itself.
  """
  lats = expand_latents(
      params["unet"], to_latents(params, images), keys, text, text_mask,
      null_text, null_mask, unet=unet, window=window, context=context,
      frames_before=frames_before, frames_after=frames_after, steps=steps,
      guidance=guidance, use_scan=use_scan, solver=solver)
  frames = to_frames(params, lats)
  frames = frames.at[:, frames_before].set(images)
  return jnp.round((jnp.clip(frames, -1, 1) + 1) * 127.5).astype(jnp.uint8)


def expand_latents(unet_params, anchor, keys, text, text_mask, null_text,
                   null_mask, *, unet, window: int, context: int,
                   frames_before: int, frames_after: int, steps: int,
                   guidance: float, use_scan: bool = True,
                   solver: str = "ddim"):
  """The expansion itself, in normalised latent space: anchor [B, h, w, c]
  is F0's latent; returns latents [B, N + 1 + M, h, w, c]. Kept apart from
  the autoencoder so that it can be checked against a model whose answer
  is known."""
  b = anchor.shape[0]
  lat = anchor.shape[1:]
  half, new, n_steps, side = plan(frames_before, frames_after, window,
                                  context)
  denoise = functools.partial(
      diffusion.denoise_window, unet.apply, unet_params, steps=steps,
      guidance=guidance, use_scan=use_scan, solver=solver)
  idx = jnp.arange(window)

  # The first window, centred on F0.
  offsets = jnp.broadcast_to(idx - half, (b, window))
  known = jnp.broadcast_to((idx == half).astype(jnp.float32), (b, window))
  first = denoise(frame_noise(keys, offsets, lat),
                  jnp.broadcast_to(anchor[:, None], (b, window) + lat),
                  known, anchor, offsets, text, text_mask, null_text,
                  null_mask)
  buffer = jnp.zeros((b, 2 * side + 1) + lat)
  buffer = jax.lax.dynamic_update_slice_in_dim(buffer, first, side - half, 1)

  # Both directions as one batch of 2B windows per expansion step.
  two = lambda a: jnp.concatenate([a, a], axis=0)
  known2 = jnp.concatenate([
      jnp.broadcast_to((idx < context).astype(jnp.float32), (b, window)),
      jnp.broadcast_to((idx >= window - context).astype(jnp.float32),
                       (b, window))])

  def step(buffer, s):
    fwd = side + half - context + 1 + s * new
    bwd = side - (half - context + window + s * new)
    ctx = jnp.concatenate([
        jax.lax.dynamic_slice_in_dim(buffer, fwd, window, 1),
        jax.lax.dynamic_slice_in_dim(buffer, bwd, window, 1)])
    offs = jnp.concatenate([jnp.broadcast_to(fwd - side + idx, (b, window)),
                            jnp.broadcast_to(bwd - side + idx, (b, window))])
    out = denoise(frame_noise(two(keys), offs, lat), ctx, known2, two(anchor),
                  offs, two(text), two(text_mask), two(null_text),
                  two(null_mask))
    buffer = jax.lax.dynamic_update_slice_in_dim(buffer, out[:b], fwd, 1)
    buffer = jax.lax.dynamic_update_slice_in_dim(buffer, out[b:], bwd, 1)
    return buffer, None

  if use_scan:
    buffer, _ = jax.lax.scan(step, buffer, jnp.arange(n_steps))
  else:
    for s in range(n_steps):
      buffer, _ = step(buffer, s)
  return buffer[:, side - frames_before:side + frames_after + 1]


def make_sampler(mesh, *, unet, batch: int, guidance: float, **kwargs):
  """``expand`` jitted once: samples split over the mesh when they divide
  evenly, parameters replicated. The guidance scale is an argument of the
  compiled program, not a constant in it: ``sampler(..., guidance=g)``
  changes it without compiling again (``guidance`` here is the default)."""
  rep = sharding.replicated(mesh)
  data = (sharding.batch_sharding(mesh) if batch % mesh.devices.size == 0
          else rep)

  def fn(params, images, keys, text, text_mask, null_text, null_mask, g):
    return expand(params, images, keys, text, text_mask, null_text,
                  null_mask, unet=unet, guidance=g, **kwargs)
  jitted = jax.jit(fn, in_shardings=(rep,) + (data,) * 6 + (rep,),
                   out_shardings=data)

  def sampler(params, images, keys, text, text_mask, null_text, null_mask,
              guidance=guidance):
    return jitted(params, images, keys, text, text_mask, null_text,
                  null_mask, np.float32(guidance))
  sampler._cache_size = jitted._cache_size  # For the compile-count tests.
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
               solver: str | None = None) -> np.ndarray:
    """uint8 images [B, R, R, 3] -> uint8 frames [B, N + 1 + M, R, R, 3]."""
    steps = self.config.sample.steps if steps is None else steps
    # An unknown solver is refused by diffusion.denoise_window, naming
    # the known ones.
    solver = solver or self.config.sample.get("solver", "ddim")
    guidance = (self.config.sample.guidance if guidance is None
                else guidance)
    check_settings(frames_before, frames_after, steps, guidance, seed)
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1:] != (self.resolution,
                                                self.resolution, 3):
      raise ValueError(f"images must be [B, {self.resolution}, "
                       f"{self.resolution}, 3], got {images.shape}")
    b = images.shape[0]
    if len(prompts) != b:
      raise ValueError(f"{len(prompts)} prompts for {b} images")
    window = self.config.model.window
    context = self.config.model.context_frames
    side = bucket(frames_before, frames_after, window, context)
    key = (side, steps, b, solver)
    if key not in self._compiled:
      self._compiled[key] = make_sampler(
          self.mesh, unet=self.unet, batch=b, window=window, context=context,
          frames_before=side, frames_after=side, steps=steps,
          guidance=float(guidance), solver=solver)
    text, mask = self.encoder.encode(list(prompts))
    null, null_mask = self.encoder.encode([""] * b)
    keys = sample_keys(seed, b) if keys is None else keys
    x = images.astype(np.float32) / 127.5 - 1.0
    frames = np.asarray(self._compiled[key](
        self.params, x, keys, text, mask, null, null_mask,
        guidance=float(guidance)))
    return frames[:, side - frames_before:side + frames_after + 1]


def run(*, image: str | None, prompt: str, frames_before: int,
        frames_after: int, seed: int, output: str | None,
        overwrite: bool = False, checkpoint: str | None = None,
        guidance: float | None = None, steps: int | None = None,
        solver: str | None = None, config=None) -> np.ndarray:
  """The ``--mode=sample`` command: one image in, a video or folder out."""
  import os
  import sys
  import time
  from bidigen import media
  del config  # The model's own config (saved with it) decides everything.
  if not image:
    raise ValueError("--image is required for --mode=sample")
  if not output:
    raise ValueError("--output is required for --mode=sample (.mp4, .gif "
                     "or a folder)")
  check_settings(frames_before, frames_after, steps, guidance, seed)
  media.check_output(output, overwrite=overwrite)
  media.load_image(image, 8)  # Bad input fails before the model loads.
  t0 = time.time()
  gen = Generator(checkpoint)
  frame0 = media.load_image(image, gen.resolution)
  cut = gen.encoder.too_long(prompt)
  if cut:
    print(f"bidigen: warning: {cut}", file=sys.stderr, flush=True)
  total = frames_before + 1 + frames_after
  print(f"sampling {total} frames ({frames_before} before, {frames_after} "
        f"after) at {gen.resolution}px, prompt {prompt!r} ...", flush=True)
  frames = gen(frame0[None], [prompt], frames_before=frames_before,
               frames_after=frames_after, seed=seed, steps=steps,
               guidance=guidance, solver=solver)[0]
  media.write_output(
      frames, -frames_before, output, fps=gen.config.sample.fps,
      overwrite=overwrite,
      info={"image": os.path.abspath(image), "prompt": prompt, "seed": seed,
            "frames_before": frames_before, "frames_after": frames_after,
            "steps": steps or gen.config.sample.steps,
            "solver": solver or gen.config.sample.get("solver", "ddim"),
            "guidance": (gen.config.sample.guidance if guidance is None
                         else guidance),
            "checkpoint": checkpoint or "embedded default model"})
  print(f"wrote {output} ({total} frames) in {time.time() - t0:.1f}s")
  return frames
