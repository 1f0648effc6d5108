"""Building blocks shared by the autoencoder and the UNet.

Kernels carry logical axis names (``nn.with_logical_partitioning``) so the
mesh rules in the config, not the modules, decide how parameters are sharded.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def dense(features: int, axes=("embed", "mlp"), name=None,
          dtype=None) -> nn.Dense:
  """``dtype`` is the computation's (bfloat16 for mixed precision);
  parameters stay float32 for the optimizer."""
  return nn.Dense(
      features,
      kernel_init=nn.with_logical_partitioning(
          nn.initializers.lecun_normal(), axes),
      name=name, dtype=dtype)


def conv(features: int, kernel: int = 3, stride: int = 1, zero=False,
         name=None, dtype=None) -> nn.Conv:
  init = (nn.initializers.zeros if zero
          else nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"))
  return nn.Conv(
      features, (kernel, kernel), strides=(stride, stride),
      kernel_init=nn.with_logical_partitioning(
          init, ("conv_h", "conv_w", "conv_in", "conv_out")),
      name=name, dtype=dtype)


def group_norm(channels: int, dtype=None) -> nn.GroupNorm:
  # Flax reduces the statistics in float32 whatever ``dtype`` is.
  return nn.GroupNorm(num_groups=min(8, channels), dtype=dtype)


class ResBlock(nn.Module):
  """Pre-norm residual conv block, optionally modulated by an embedding."""
  features: int
  dtype: Any = None

  @nn.compact
  def __call__(self, x, emb=None):
    d = self.dtype
    h = conv(self.features, dtype=d)(nn.swish(group_norm(x.shape[-1], d)(x)))
    if emb is not None:
      scale_shift = dense(2 * self.features, dtype=d)(nn.swish(emb))
      scale, shift = jnp.split(scale_shift[:, None, None, :], 2, axis=-1)
      h = group_norm(self.features, d)(h) * (1 + scale) + shift
    else:
      h = group_norm(self.features, d)(h)
    h = conv(self.features, zero=True, dtype=d)(nn.swish(h))
    if x.shape[-1] != self.features:
      x = conv(self.features, kernel=1, dtype=d)(x)
    return x + h


ATTENTION = ("auto", "xla", "cudnn")


def attention_implementation(choice: str, backend: str, dtype, head_dim: int,
                             bias: bool = False) -> str:
  """``jax.nn.dot_product_attention``'s implementation for ``choice``.

  jax's own default (None) is XLA everywhere, which materialises the logits;
  "auto" asks for cuDNN's fused flash attention on a GPU where it applies:
  bf16 or fp16 activations, a head width that is a multiple of 8 up to 128,
  and no bias or mask. cuDNN wants a bias (a mask becomes one) at the full
  query length and always computes its gradient, and has no backward pass
  for odd lengths with one, so the temporal window (17 frames, relative
  bias) and the masked cross-attention to text stay XLA's; spatial
  self-attention, the long one (1024 positions at 256 px), is fused. XLA
  everywhere else (CPU, TPU, float32)."""
  if choice not in ATTENTION:
    raise ValueError(f"config.model.attention={choice!r}; known: "
                     f"{', '.join(ATTENTION)}")
  if choice != "auto":
    return choice
  fused = (backend == "gpu" and head_dim % 8 == 0 and head_dim <= 128
           and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) and not bias)
  return "cudnn" if fused else "xla"


class Attention(nn.Module):
  """Multi-head attention; ``bias`` is added to the logits (e.g. positions).
  ``attention`` picks the kernel (see ``attention_implementation``)."""
  num_heads: int
  dtype: Any = None
  attention: str = "auto"

  @nn.compact
  def __call__(self, x, context=None, context_mask=None, bias=None):
    context = x if context is None else context
    width = x.shape[-1]
    head = width // self.num_heads
    q = dense(width, name="query", dtype=self.dtype)(x)
    k = dense(width, name="key", dtype=self.dtype)(context)
    v = dense(width, name="value", dtype=self.dtype)(context)
    split = lambda t: t.reshape((-1,) + t.shape[-2:-1] + (self.num_heads,
                                                          head))
    lead = x.shape[:-2]  # Attention runs over axis -2; the rest is batch.
    mask = None
    if context_mask is not None:
      keys = context_mask.shape[-1]
      mask = jnp.broadcast_to(context_mask > 0, lead + (keys,)).reshape(
          (-1, 1, 1, keys))
    if bias is not None:
      bias = jnp.broadcast_to(bias, (1,) * (4 - bias.ndim) + bias.shape)
      bias = bias.astype(q.dtype)
    impl = attention_implementation(
        self.attention, jax.default_backend(), q.dtype, head,
        bias is not None or mask is not None)
    out = jax.nn.dot_product_attention(split(q), split(k), split(v),
                                       bias=bias, mask=mask,
                                       implementation=impl)
    out = out.reshape(lead + (out.shape[1], width))
    return nn.Dense(
        width, kernel_init=nn.with_logical_partitioning(
            nn.initializers.zeros, ("mlp", "embed")), name="out",
        dtype=self.dtype)(out)


class FeedForward(nn.Module):
  mult: int = 4
  dtype: Any = None

  @nn.compact
  def __call__(self, x):
    width = x.shape[-1]
    h = nn.gelu(dense(width * self.mult, dtype=self.dtype)(x))
    return nn.Dense(
        width, kernel_init=nn.with_logical_partitioning(
            nn.initializers.zeros, ("mlp", "embed")), dtype=self.dtype)(h)


class SpatialTransformer(nn.Module):
  """Self-attention within a frame, then cross-attention to text tokens."""
  num_heads: int
  dtype: Any = None
  attention: str = "auto"

  @nn.compact
  def __call__(self, x, text, text_mask):
    b, h, w, c = x.shape
    d = self.dtype
    norm = lambda: nn.LayerNorm(dtype=d)
    t = x.reshape(b, h * w, c)
    t = t + Attention(self.num_heads, d, self.attention, name="self_attn")(
        norm()(t))
    ctx = dense(c, axes=("text", "embed"), name="text_proj", dtype=d)(text)
    t = t + Attention(self.num_heads, d, self.attention, name="cross_attn")(
        norm()(t), context=ctx, context_mask=text_mask)
    t = t + FeedForward(dtype=d)(norm()(t))
    return t.reshape(b, h, w, c)
