"""The latent video UNet: per-frame ResNet blocks, spatial self-attention,
cross-attention to text, and the bidirectional temporal transformer.

One call denoises a window of T frames. Known frames (the context) come in
clean with noise level 0 and a mask channel; every frame also sees the anchor
F0 latent, which keeps long expansions tied to the image the user gave.
"""

import collections
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from bidigen.models import blocks
from bidigen.models import temporal


def timestep_embedding(t, dim: int, max_period: float = 10_000.0):
  """Sinusoidal features of a continuous value (noise level or offset)."""
  half = dim // 2
  freqs = jnp.exp(-jnp.log(max_period) * jnp.arange(half) / half)
  args = t[..., None].astype(jnp.float32) * freqs
  return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


REMAT = {"none": None, "blocks": None,
         "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


class UNet(nn.Module):
  """Predicts v (the diffusion velocity) for every frame of a window."""
  channels: int = 64
  channel_mult: Sequence[int] = (1, 2, 2)
  attention_levels: Sequence[bool] = (False, True, True)
  num_heads: int = 4
  max_offset: int = 16
  # Activations' and matmuls' dtype (bfloat16 on accelerators); parameters
  # are float32 whatever it is.
  dtype: Any = jnp.float32
  # What the backward pass recomputes instead of keeping, per block (see
  # REMAT): "none", "blocks" or "dots" (keeps only matmul results).
  remat: str = "none"
  # Attention kernel: "auto" (cuDNN flash attention on GPU where it applies,
  # XLA elsewhere), "xla" or "cudnn"; see blocks.attention_implementation.
  attention: str = "auto"
  # The prompt's mean token embedding added to the noise-level embedding
  # that modulates every ResBlock (a zero-initialised projection, so an
  # untrained path changes nothing): a global route for the prompt beside
  # the per-position cross-attention, as adaLN-Zero in DiT.
  pooled_text: bool = False

  def block(self, cls, counts, *args, static=()):
    """``cls(...)(*args)`` named as Flax would name it unwrapped
    (ResBlock_3, ...), so checkpoints load whatever ``remat`` is."""
    name = f"{cls.__name__}_{counts[cls.__name__]}"
    counts[cls.__name__] += 1
    if self.remat != "none":
      cls = nn.remat(cls, policy=REMAT[self.remat], static_argnums=static)
    return cls, name

  @nn.compact
  def __call__(self, x, known, anchor, offsets, noise_level, text, text_mask):
    """Shapes: x [B,T,h,w,c], known/offsets/noise_level [B,T],
    anchor [B,h,w,c_a] (F0's latent), text [B,L,D], text_mask [B,L].
    Returns [B,T,h,w,c]."""
    b, t, h, w, c = x.shape
    emb_dim = 4 * self.channels
    # Offsets beyond the trained range reuse the edge embedding: expansion can
    # go on for any length while positions stay in distribution.
    rel = jnp.clip(offsets, -self.max_offset, self.max_offset)
    emb = (timestep_embedding(noise_level * 1000.0, self.channels)
           + timestep_embedding(rel * 50.0, self.channels))
    d = self.dtype
    if self.remat not in REMAT:
      raise ValueError(f"config.model.remat={self.remat!r}; known: "
                       f"{', '.join(REMAT)}")
    emb = blocks.dense(emb_dim, dtype=d)(emb)
    emb = blocks.dense(emb_dim, dtype=d)(nn.swish(emb)).reshape(b * t,
                                                                emb_dim)
    if self.pooled_text:
      m = text_mask[..., None].astype(text.dtype)
      pooled = jnp.sum(text * m, 1) / jnp.maximum(jnp.sum(m, 1), 1.0)
      glob = nn.Dense(emb_dim, kernel_init=nn.with_logical_partitioning(
          nn.initializers.zeros, ("text", "mlp")), name="pooled_text",
                      dtype=d)(pooled)
      emb = emb + jnp.repeat(glob, t, axis=0)
    counts = collections.Counter()

    def res(width, *args):
      cls, name = self.block(blocks.ResBlock, counts)
      return cls(width, d, name=name)(*args)

    anchor_t = jnp.broadcast_to(anchor[:, None],
                                (b, t, h, w, anchor.shape[-1]))
    mask = jnp.broadcast_to(known[:, :, None, None, None], (b, t, h, w, 1))
    inp = jnp.concatenate([x, mask, anchor_t], axis=-1)
    hs = inp.reshape(b * t, h, w, inp.shape[-1])
    text_rep = jnp.repeat(text, t, axis=0)
    text_mask_rep = jnp.repeat(text_mask, t, axis=0)

    def mix(hs, width, level):
      hs = res(width, hs, emb)
      if self.attention_levels[level]:
        cls, name = self.block(blocks.SpatialTransformer, counts)
        hs = cls(self.num_heads, d, self.attention, name=name)(
            hs, text_rep, text_mask_rep)
      cls, name = self.block(temporal.TemporalTransformer, counts,
                             static=(2,))
      return cls(self.num_heads, max_distance=t, dtype=d,
                 attention=self.attention, name=name)(hs, t)

    hs = blocks.conv(self.channels, dtype=d)(hs)
    skips = [hs]
    levels = len(self.channel_mult)
    for level, mult in enumerate(self.channel_mult):
      hs = mix(hs, self.channels * mult, level)
      skips.append(hs)
      if level < levels - 1:
        hs = blocks.conv(hs.shape[-1], stride=2, dtype=d)(hs)
        skips.append(hs)

    hs = mix(hs, hs.shape[-1], levels - 1)
    hs = res(hs.shape[-1], hs, emb)

    for level, mult in reversed(list(enumerate(self.channel_mult))):
      width = self.channels * mult
      hs = mix(jnp.concatenate([hs, skips.pop()], axis=-1), width, level)
      hs = res(width, jnp.concatenate([hs, skips.pop()], axis=-1), emb)
      if level > 0:
        hs = jnp.repeat(jnp.repeat(hs, 2, axis=1), 2, axis=2)
        hs = blocks.conv(width, dtype=d)(hs)

    hs = nn.swish(blocks.group_norm(hs.shape[-1], d)(hs))
    out = blocks.conv(c, zero=True, dtype=d)(hs)
    # The loss and the sampler's arithmetic stay float32.
    return out.reshape(b, t, h, w, c).astype(jnp.float32)
