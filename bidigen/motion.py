"""What the model generates for a frame, and how that becomes pixels.

Regenerating every frame from noise through TAEF2's 16x16x32 latent cannot
learn appearance on the compute this project has, and caps every frame at
the autoencoder's round trip (~30 dB at 128 px) where copying F0 often does
better. So the model generates what changes instead (``config.model
.target``):

  "latent"    the frame's normalised latent itself (the original design);
  "residual"  the latent's difference from F0's: r_t = z_t - z_0;
  "motion"    where each latent cell of the frame comes from in F0, a flow
              m_t [h, w, 2] in latent cells (frame_t(p) ~ F0(p + m_t(p))),
              and the correction r_t = z_t - warp(z_0, m_t) for what moving
              F0 cannot explain (disocclusions, new content, light).

Latents are normalised by the encoded data's per-channel mean and std
(``latent_stats``); differences are divided by their root mean square over
it (``residual_rms`` per channel, ``motion_rms``; all saved with the model), so
the diffused channels have unit scale, and zero means "F0, unchanged" (no
mean is subtracted). Pixels: the frame is F0 moved in pixel space plus the
decoded correction, decode(z_t) - decode(warp(z_0, m_t)); where the model
leaves the correction at zero a frame is exactly the user's F0, moved, so
TAEF2's loss applies only where something changed.
"""

import jax
import jax.numpy as jnp
import numpy as np

from bidigen.models import taef2

TARGETS = ("latent", "residual", "motion")
MOTION_CHANNELS = 2


def channels(target: str, latent_channels: int = taef2.LATENT_CHANNELS):
  """Channels per frame of what the model generates for ``target``."""
  check_target(target)
  return latent_channels + (MOTION_CHANNELS if target == "motion" else 0)


def check_target(target: str) -> None:
  if target not in TARGETS:
    raise ValueError(f"config.model.target={target!r}; known: "
                     f"{', '.join(TARGETS)}")


def warp(x, fl):
  """Samples x [..., H, W, C] at p + fl(p) (bilinear, edges repeated), with
  fl [..., H, W, 2] in x's pixels ((dx, dy)): warp(F0, m_t) ~ frame t."""
  h, w = x.shape[-3], x.shape[-2]
  ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32),
                        jnp.arange(w, dtype=jnp.float32), indexing="ij")
  y = jnp.clip(ys + fl[..., 1], 0, h - 1)
  xx = jnp.clip(xs + fl[..., 0], 0, w - 1)
  y0, x0 = jnp.floor(y), jnp.floor(xx)
  wy, wx = (y - y0)[..., None], (xx - x0)[..., None]
  y0, x0 = y0.astype(jnp.int32), x0.astype(jnp.int32)
  y1, x1 = jnp.minimum(y0 + 1, h - 1), jnp.minimum(x0 + 1, w - 1)
  flat = x.reshape(x.shape[:-3] + (h * w, x.shape[-1]))
  lead = jnp.broadcast_shapes(flat.shape[:-2], fl.shape[:-3])
  flat = jnp.broadcast_to(flat, lead + flat.shape[-2:])

  def at(yi, xi):
    idx = jnp.broadcast_to((yi * w + xi).reshape(yi.shape[:-2] + (h * w,)),
                           lead + (h * w,))
    out = jnp.take_along_axis(flat, idx[..., None], axis=-2)
    return out.reshape(lead + (h, w, x.shape[-1]))
  top = at(y0, x0) * (1 - wx) + at(y0, x1) * wx
  bottom = at(y1, x0) * (1 - wx) + at(y1, x1) * wx
  return (top * (1 - wy) + bottom * wy).astype(x.dtype)


def upsample_flow(fl, size: int):
  """A flow on the latent grid [..., h, w, 2] (latent cells) as a flow on
  a size x size image (its pixels): motion is resolution-free."""
  h = fl.shape[-3]
  out = jax.image.resize(fl, fl.shape[:-3] + (size, size, 2), "linear")
  return out * (size / h)


def to_model(lat, motion, anchor, *, target: str, residual_rms,
             motion_rms):
  """Normalised latents [B, T, h, w, c] (and their motion from F0 [B, T, h,
  w, 2]; unused unless ``target`` is "motion") -> what the model diffuses.
  ``anchor`` [B, h, w, c] is F0's normalised latent."""
  check_target(target)
  if target == "latent":
    return lat
  a = anchor[:, None]
  if target == "residual":
    return (lat - a) / residual_rms
  moved = warp(a, motion)
  return jnp.concatenate([motion / motion_rms,
                          (lat - moved) / residual_rms], axis=-1)


def from_model(x, anchor, *, target: str, residual_rms, motion_rms):
  """The inverse of ``to_model``: (normalised latents, motion or None)."""
  a = anchor[:, None]
  if target == "latent":
    return x, None
  if target == "residual":
    return a + x * residual_rms, None
  m = x[..., :MOTION_CHANNELS] * motion_rms
  return warp(a, m) + x[..., MOTION_CHANNELS:] * residual_rms, m


def latent_stats(model_config) -> tuple[np.ndarray, np.ndarray]:
  """The per-channel mean and std latents are normalised with, which the
  encode step measured on the training data and training saved in the
  model's config."""
  mean = model_config.latent_mean
  std = model_config.latent_std
  if mean is None or std is None:
    raise ValueError("the config has no latent statistics "
                     "(config.model.latent_mean/latent_std): training sets "
                     "them from the encoded latents")
  return (np.asarray(mean, np.float32), np.asarray(std, np.float32))


def scales(model_config) -> dict:
  """The target and its normalisers from a model's config, as arrays."""
  target = model_config.target
  check_target(target)
  if target == "latent":
    return {"residual_rms": np.ones((), np.float32),
            "motion_rms": np.ones((), np.float32)}
  rms, mrms = model_config.residual_rms, model_config.motion_rms
  if rms is None or (target == "motion" and mrms is None):
    raise ValueError("the config has no residual statistics "
                     "(config.model.residual_rms/motion_rms): training sets "
                     "them from the encoded latents")
  return {"residual_rms": np.asarray(rms, np.float32),
          "motion_rms": np.asarray(1.0 if mrms is None else mrms,
                                   np.float32)}


def pixels(decode, x, f0, anchor, *, target: str, residual_rms, motion_rms,
           strength=1.0):
  """What the model generated [B, T, h, w, c'] -> frames in [-1, 1], at
  F0's size.

  ``decode``: normalised latents [..., h, w, c] -> frames in [-1, 1] of
  the model's resolution R. ``f0`` [B, S, S, 3] in [-1, 1] is the user's
  frame, at R or larger: F0 is moved at its own size and only the decoded
  correction is upscaled (bilinear), so a frame keeps the photo's detail
  wherever the correction is small. ``strength`` scales the motion (0 keeps
  F0 in place, 1 is what the model generated)."""
  kw = dict(target=target, residual_rms=residual_rms, motion_rms=motion_rms)
  size = f0.shape[-2]

  def up(img):  # Decoded [..., R, R, 3] -> [..., S, S, 3].
    if img.shape[-2] == size:
      return img
    return jax.image.resize(img, img.shape[:-3] + (size, size, 3), "linear")
  if target == "latent":
    return up(decode(from_model(x, anchor, **kw)[0]))
  a = anchor[:, None]
  if target == "residual":
    return f0[:, None] + up(decode(from_model(x, anchor, **kw)[0])
                            - decode(a))
  m = x[..., :MOTION_CHANNELS] * motion_rms * strength
  base = warp(a, m)
  lat = base + x[..., MOTION_CHANNELS:] * residual_rms
  moved = warp(f0[:, None], upsample_flow(m, size))
  return moved + up(decode(lat) - decode(base))


def pooled_rms(values: list, weights: list[float]) -> list[float]:
  """Root mean squares of several caches, pooled as training draws them."""
  w = np.asarray(weights, np.float64) / np.sum(weights)
  v = np.stack([np.asarray(x, np.float64) for x in values])
  return np.sqrt(np.tensordot(w, v**2, axes=1)).tolist()
