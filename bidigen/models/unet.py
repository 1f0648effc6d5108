"""The latent video UNet: per-frame ResNet blocks, spatial self-attention,
cross-attention to text, and the bidirectional temporal transformer.

One call denoises a window of T frames. Known frames (the context) come in
clean with noise level 0 and a mask channel; every frame also sees the anchor
F0 latent, which keeps long expansions tied to the image the user gave.
"""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from bidigen.models import blocks
from bidigen.models import temporal


def timestep_embedding(t, dim: int, max_period: float = 10_000.0):
  """Sinusoidal features of a continuous value (noise level or offset)."""
  half = dim // 2
  freqs = jnp.exp(-jnp.log(max_period) * jnp.arange(half) / half)
  args = t[..., None].astype(jnp.float32) * freqs
  return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


class UNet(nn.Module):
  """Predicts v (the diffusion velocity) for every frame of a window."""
  channels: int = 64
  channel_mult: Sequence[int] = (1, 2, 2)
  attention_levels: Sequence[bool] = (False, True, True)
  num_heads: int = 4
  max_offset: int = 16

  @nn.compact
  def __call__(self, x, known, anchor, offsets, noise_level, text, text_mask):
    """Shapes: x [B,T,h,w,c], known/offsets/noise_level [B,T],
    anchor [B,h,w,c], text [B,L,D], text_mask [B,L]. Returns [B,T,h,w,c]."""
    b, t, h, w, c = x.shape
    emb_dim = 4 * self.channels
    # Offsets beyond the trained range reuse the edge embedding: expansion can
    # go on for any length while positions stay in distribution.
    rel = jnp.clip(offsets, -self.max_offset, self.max_offset)
    emb = (timestep_embedding(noise_level * 1000.0, self.channels)
           + timestep_embedding(rel * 50.0, self.channels))
    emb = blocks.dense(emb_dim)(emb)
    emb = blocks.dense(emb_dim)(nn.swish(emb)).reshape(b * t, emb_dim)

    anchor_t = jnp.broadcast_to(anchor[:, None], x.shape)
    mask = jnp.broadcast_to(known[:, :, None, None, None], (b, t, h, w, 1))
    inp = jnp.concatenate([x, mask, anchor_t], axis=-1)
    hs = inp.reshape(b * t, h, w, inp.shape[-1])
    text_rep = jnp.repeat(text, t, axis=0)
    text_mask_rep = jnp.repeat(text_mask, t, axis=0)

    def mix(hs, width, level):
      hs = blocks.ResBlock(width)(hs, emb)
      if self.attention_levels[level]:
        hs = blocks.SpatialTransformer(self.num_heads)(
            hs, text_rep, text_mask_rep)
      return temporal.TemporalTransformer(
          self.num_heads, max_distance=t)(hs, t)

    hs = blocks.conv(self.channels)(hs)
    skips = [hs]
    levels = len(self.channel_mult)
    for level, mult in enumerate(self.channel_mult):
      hs = mix(hs, self.channels * mult, level)
      skips.append(hs)
      if level < levels - 1:
        hs = blocks.conv(hs.shape[-1], stride=2)(hs)
        skips.append(hs)

    hs = mix(hs, hs.shape[-1], levels - 1)
    hs = blocks.ResBlock(hs.shape[-1])(hs, emb)

    for level, mult in reversed(list(enumerate(self.channel_mult))):
      width = self.channels * mult
      hs = mix(jnp.concatenate([hs, skips.pop()], axis=-1), width, level)
      hs = blocks.ResBlock(width)(
          jnp.concatenate([hs, skips.pop()], axis=-1), emb)
      if level > 0:
        hs = jnp.repeat(jnp.repeat(hs, 2, axis=1), 2, axis=2)
        hs = blocks.conv(width)(hs)

    hs = nn.swish(blocks.group_norm(hs.shape[-1])(hs))
    out = blocks.conv(c, zero=True)(hs)
    return out.reshape(b, t, h, w, c)
