"""Model construction from the config's ``model`` section."""

from bidigen.models.unet import UNet
from bidigen.models.vae import VAE


def build(model_config) -> tuple[VAE, UNet]:
  """The autoencoder and the UNet, from explicit config values."""
  vae = VAE(channels=tuple(model_config.vae.channels),
            latent_dim=model_config.vae.latent_dim)
  unet = UNet(channels=model_config.unet.channels,
              channel_mult=tuple(model_config.unet.channel_mult),
              attention_levels=tuple(model_config.unet.attention_levels),
              num_heads=model_config.unet.num_heads,
              max_offset=model_config.unet.max_offset)
  return vae, unet


def latent_shape(model_config, resolution: int) -> tuple[int, int, int]:
  factor = 2 ** (len(model_config.vae.channels) - 1)
  if resolution % factor:
    raise ValueError(f"resolution {resolution} is not divisible by the "
                     f"autoencoder's downsampling factor {factor}")
  side = resolution // factor
  return side, side, model_config.vae.latent_dim
