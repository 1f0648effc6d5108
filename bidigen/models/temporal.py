"""The bidirectional temporal transformer.

Every spatial position attends over the frames of its window in both
directions. Positions enter twice: a learned bias on the relative distance
between two frames (so the same weights extend a clip forwards and backwards),
and, in the UNet, an embedding of each frame's offset from the anchor F0.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from bidigen.models import blocks


class TemporalTransformer(nn.Module):
  num_heads: int
  max_distance: int = 16
  dtype: Any = None
  attention: str = "auto"

  @nn.compact
  def __call__(self, x, num_frames: int):
    bt, h, w, c = x.shape
    b = bt // num_frames
    # [B, T, H, W, C] -> [B, H, W, T, C]: attention runs over T.
    t = x.reshape(b, num_frames, h, w, c).transpose(0, 2, 3, 1, 4)
    pos = jnp.arange(num_frames)
    dist = jnp.clip(pos[None, :] - pos[:, None], -self.max_distance,
                    self.max_distance) + self.max_distance
    table = self.param(
        "relative_bias", nn.initializers.zeros,
        (2 * self.max_distance + 1, self.num_heads))
    bias = table[dist].transpose(2, 0, 1)  # [heads, T, T]
    t = t + blocks.Attention(self.num_heads, self.dtype, self.attention,
                             name="attn")(
        nn.LayerNorm(dtype=self.dtype)(t), bias=bias)
    # Back to frames first before the feed-forward, which is per position
    # and so needs no frame axis: in the attention's frame-minor layout its
    # weight gradients had XLA:CPU copy [hidden, positions] transposes, a few
    # percent of the step.
    x = t.transpose(0, 3, 1, 2, 4).reshape(bt, h, w, c)
    return x + blocks.FeedForward(dtype=self.dtype)(
        nn.LayerNorm(dtype=self.dtype)(x))
