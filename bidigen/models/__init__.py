"""Model construction from the config's ``model`` section.

The autoencoder is not built here: it is TAEF2 (``bidigen.models.taef2``),
pretrained and frozen, the same for every config.
"""

import jax.numpy as jnp

from bidigen.models import taef2
from bidigen.models.unet import UNet


def build(model_config) -> UNet:
  """The diffusion UNet, from explicit config values."""
  return UNet(channels=model_config.unet.channels,
              channel_mult=tuple(model_config.unet.channel_mult),
              attention_levels=tuple(model_config.unet.attention_levels),
              num_heads=model_config.unet.num_heads,
              max_offset=model_config.unet.max_offset,
              dtype=jnp.dtype(model_config.dtype),
              remat=model_config.remat,
              attention=model_config.attention,
              pooled_text=model_config.pooled_text)


def latent_shape(resolution: int) -> tuple[int, int, int]:
  """TAEF2's latent [h, w, c] for square frames of ``resolution``."""
  if resolution % taef2.FACTOR:
    raise ValueError(f"resolution {resolution} is not divisible by the "
                     f"autoencoder's downsampling factor {taef2.FACTOR}")
  side = resolution // taef2.FACTOR
  return side, side, taef2.LATENT_CHANNELS
