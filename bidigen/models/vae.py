"""A small KL autoencoder: frames <-> latents, trained by this code.

Diffusion runs on its latents (4x smaller per side), which is what makes
video training fit a CPU or a single accelerator.
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from bidigen.models import blocks


class Encoder(nn.Module):
  channels: Sequence[int]
  latent_dim: int

  @nn.compact
  def __call__(self, x):
    h = blocks.conv(self.channels[0])(x)
    for i, width in enumerate(self.channels):
      h = blocks.ResBlock(width)(h)
      if i < len(self.channels) - 1:
        h = blocks.conv(width, stride=2)(h)
    h = blocks.ResBlock(h.shape[-1])(h)
    h = nn.swish(blocks.group_norm(h.shape[-1])(h))
    return blocks.conv(2 * self.latent_dim)(h)


class Decoder(nn.Module):
  channels: Sequence[int]

  @nn.compact
  def __call__(self, z):
    h = blocks.conv(self.channels[-1])(z)
    h = blocks.ResBlock(h.shape[-1])(h)
    for i, width in reversed(list(enumerate(self.channels))):
      h = blocks.ResBlock(width)(h)
      if i > 0:
        h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
        h = blocks.conv(width)(h)
    h = nn.swish(blocks.group_norm(h.shape[-1])(h))
    return blocks.conv(3)(h)


class VAE(nn.Module):
  """Images in [-1, 1], [N, H, W, 3]; latents [N, H/f, W/f, latent_dim]
  with f = 2 ** (len(channels) - 1)."""
  channels: Sequence[int] = (32, 64, 64)
  latent_dim: int = 4

  def setup(self):
    self.encoder = Encoder(self.channels, self.latent_dim)
    self.decoder = Decoder(self.channels)

  def encode(self, x):
    mean, logvar = jnp.split(self.encoder(x), 2, axis=-1)
    return mean, jnp.clip(logvar, -20.0, 10.0)

  def decode(self, z):
    return self.decoder(z)

  def __call__(self, x, rng):
    mean, logvar = self.encode(x)
    z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape)
    return self.decode(z), mean, logvar


def vae_loss(recon, target, mean, logvar, kl_weight: float):
  """L1 reconstruction plus a small KL term that keeps latents near N(0, 1)."""
  rec = jnp.mean(jnp.abs(recon - target))
  kl = 0.5 * jnp.mean(mean**2 + jnp.exp(logvar) - 1.0 - logvar)
  return rec + kl_weight * kl, {"vae_l1": rec, "vae_kl": kl}
