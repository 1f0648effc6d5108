"""TAEF2: the tiny autoencoder of the FLUX.2 latent space, frozen, in Flax.

A port of ``Encoder(latent_channels=32, use_midblock_gn=True)`` and the
matching ``Decoder`` of madebyollin/taesd (``taesd.py``, the ``flux_2``
variant: the three lowest-resolution blocks of each side carry a GroupNorm
"pool" branch). About 1.3M parameters a side; 8x down/up-sampling and 32
latent channels. It is a pretrained feature extractor, never trained here:
``encode``/``decode`` are pure functions of the loaded params, fit for jit.

Images are NHWC floats in [0, 1] at this interface (the taesd convention, not
[-1, 1]); latents are the raw encoder outputs, standard deviation about 0.9.
Weights: ``bidigen/assets/taef2/*.npz``, converted once from the published
``.pth`` by this module's command, ``python -m bidigen.models.taef2``.
"""

import argparse
import os
import shutil
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bidigen import pretrained

LATENT_CHANNELS = 32
FACTOR = 8  # Spatial down/up-sampling.
WIDTH = 64


def _conv(features, name, stride=1, bias=True, kernel=3):
  # PyTorch pads 1 on both sides, also when striding: not Flax's "SAME".
  return nn.Conv(features, (kernel, kernel), strides=stride,
                 padding=kernel // 2, use_bias=bias, name=name)


class Block(nn.Module):
  """taesd's Block(64, 64): three 3x3 convs, identity skip, ReLU after the
  sum; with ``pool`` a GroupNorm branch first adds image-wide statistics
  (GroupNorm normalises over the whole frame), which FLUX.2's latents need.
  """
  pool: bool = False

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    if self.pool:
      h = _conv(4 * c, "pool_0", bias=False, kernel=1)(x)
      h = nn.GroupNorm(num_groups=4, epsilon=1e-5, use_fast_variance=False,
                       name="pool_1")(h)
      x = x + _conv(c, "pool_3", bias=False, kernel=1)(nn.relu(h))
    h = nn.relu(_conv(c, "conv_0")(x))
    h = nn.relu(_conv(c, "conv_2")(h))
    return nn.relu(_conv(c, "conv_4")(h) + x)


# The layers of upstream's nn.Sequential, by index (the index names each
# module, so the converter maps state-dict keys without a table):
# ("conv", stride, bias, out) | ("block", pool) | ("up",) | ("clamp",)
# | ("relu",).
def _encoder_layers(latent_channels, gn):
  layers = [("conv", 1, True, WIDTH), ("block", False)]
  for level in range(3):
    layers += [("conv", 2, False, WIDTH)] + [("block", gn and level == 2)] * 3
  return layers + [("conv", 1, True, latent_channels)]


def _decoder_layers(gn):
  layers = [("clamp",), ("conv", 1, True, WIDTH), ("relu",)]
  for level in range(3):
    layers += [("block", gn and level == 0)] * 3
    layers += [("up",), ("conv", 1, False, WIDTH)]
  return layers + [("block", False), ("conv", 1, True, 3)]


def _run(layers, x):
  for i, layer in enumerate(layers):
    kind, name = layer[0], f"layers_{i}"
    if kind == "conv":
      x = _conv(layer[3], name, stride=layer[1], bias=layer[2])(x)
    elif kind == "block":
      x = Block(pool=layer[1], name=name)(x)
    elif kind == "up":  # nn.Upsample(scale_factor=2): nearest.
      x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    elif kind == "clamp":  # Soft clamp of the latents to (-3, 3).
      x = jnp.tanh(x / 3) * 3
    else:
      x = nn.relu(x)
  return x


class Encoder(nn.Module):
  """Images [N, H, W, 3] in [0, 1] -> latents [N, H/8, W/8, 32]."""
  latent_channels: int = LATENT_CHANNELS
  use_midblock_gn: bool = True

  @nn.compact
  def __call__(self, x):
    return _run(_encoder_layers(self.latent_channels, self.use_midblock_gn),
                x)


class Decoder(nn.Module):
  """Latents [N, h, w, 32] -> images [N, 8h, 8w, 3], about [0, 1]."""
  use_midblock_gn: bool = True

  @nn.compact
  def __call__(self, z):
    return _run(_decoder_layers(self.use_midblock_gn), z)


def from_torch(state: dict, part: str) -> dict:
  """Upstream state dict -> this module's params (float16 kept).

  ``3.pool.1.weight`` -> ``layers_3/pool_1/scale``; conv kernels OIHW ->
  HWIO. Every key must land on a parameter of the module and every
  parameter must be filled, or this raises.
  """
  model = Encoder() if part == "encoder" else Decoder()
  shape = (1, 16, 16, 3) if part == "encoder" else (1, 2, 2, LATENT_CHANNELS)
  want = jax.eval_shape(model.init, jax.random.key(0),
                        jnp.zeros(shape))["params"]
  params = {}
  for key, value in state.items():
    *path, leaf = key.split(".")
    if value.ndim == 4:
      value, leaf = np.transpose(value, (2, 3, 1, 0)), "kernel"
    elif leaf == "weight":
      leaf = "scale"  # GroupNorm's affine weight.
    names = [f"layers_{path[0]}"] + [f"{a}_{b}" for a, b in
                                     zip(path[1::2], path[2::2])]
    node = params
    for n in names:
      node = node.setdefault(n, {})
    node[leaf] = value
  got = jax.tree_util.tree_map(lambda a: a.shape, params)
  need = jax.tree_util.tree_map(lambda a: a.shape, want)
  if got != need:
    raise ValueError(f"TAEF2 {part}: the state dict does not match the "
                     "Flax module (wrong file or variant)")
  return params


def load(directory: str = pretrained.TAEF2_DIR, dtype=jnp.float32) -> dict:
  """{"encoder": params, "decoder": params}, frozen weights for encode/decode.

  Reads the converted .npz (no pickle) after checking the sha256 recorded in
  ``bidigen.pretrained``; a wrong or truncated file is a one-line error.
  """
  out = {}
  for part in ("encoder", "decoder"):
    name = f"{part}.npz"
    tree = pretrained.read_npz(os.path.join(directory, name),
                               pretrained.TAEF2_NPZ_SHA256[name])
    out[part] = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), tree)
  return out


def _flat(x):
  """[..., H, W, C] -> [N, H, W, C] and the function that undoes it."""
  lead = x.shape[:-3]
  return x.reshape((-1,) + x.shape[-3:]), lambda y: y.reshape(
      lead + y.shape[-3:])


def encode(params: dict, images: jax.Array) -> jax.Array:
  """Images [..., H, W, 3] in [0, 1] (H, W multiples of 8) -> latents
  [..., H/8, W/8, 32]. Leading axes (batch, time) are folded together."""
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise ValueError(f"TAEF2 takes float images in [0, 1], got "
                     f"{images.dtype}")
  if images.shape[-3] % FACTOR or images.shape[-2] % FACTOR:
    raise ValueError(f"TAEF2 needs sides divisible by {FACTOR}, got "
                     f"{images.shape[-3:-1]}")
  x, unflat = _flat(images)
  p = jax.lax.stop_gradient(params["encoder"])  # Frozen: never trained here.
  dtype = jax.tree_util.tree_leaves(p)[0].dtype
  z = Encoder().apply({"params": p}, x.astype(dtype))
  return unflat(z)


def decode(params: dict, latents: jax.Array) -> jax.Array:
  """Latents [..., h, w, 32] -> images [..., 8h, 8w, 3] clipped to [0, 1]."""
  z, unflat = _flat(latents)
  p = jax.lax.stop_gradient(params["decoder"])
  dtype = jax.tree_util.tree_leaves(p)[0].dtype
  x = Decoder().apply({"params": p}, z.astype(dtype))
  return unflat(jnp.clip(x, 0, 1))


def convert(src: str, out: str) -> list[str]:
  """The published TAEF2 .pth files -> float16 .npz in Flax layout."""
  os.makedirs(out, exist_ok=True)
  written = []
  for part in ("encoder", "decoder"):
    pth = f"taef2_{part}.pth"
    state = pretrained.read_torch_zip(os.path.join(src, pth),
                                     pretrained.TAEF2_PTH_SHA256[pth])
    params = from_torch(state, part)
    path = os.path.join(out, f"{part}.npz")
    pretrained.write_npz(path, params)
    written.append(path)
  shutil.copyfile(os.path.join(src, "LICENSE"), os.path.join(out, "LICENSE"))
  with open(os.path.join(out, "SOURCE.md"), "w") as f:
    f.write(
        "# TAEF2 weights (FLUX.2 latent space), converted\n\n"
        "From `taef2_encoder.pth` / `taef2_decoder.pth` of madebyollin/taesd "
        "(commit 5cccb12dc72074a4be35680c3b108548a7c69978), MIT licence "
        "(LICENSE here). Converted by `python -m bidigen.models.taef2`: "
        "float16 as published, conv kernels OIHW -> HWIO, keys renamed to "
        "the Flax modules of `bidigen/models/taef2.py`.\n\n"
        "| file | sha256 |\n|---|---|\n"
        + "".join(f"| {os.path.basename(p)} | "
                  f"{pretrained.sha256_file(p)} |\n" for p in written))
  return written


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(
      prog="python -m bidigen.models.taef2",
      description="Convert the published TAEF2 .pth files into the "
      "package's .npz (bidigen/assets/taef2/).")
  parser.add_argument("--src", required=True, help="folder with "
                      "taef2_{encoder,decoder}.pth and LICENSE")
  parser.add_argument("--out", default=pretrained.TAEF2_DIR)
  args = parser.parse_args(argv)
  try:
    for path in convert(args.src, args.out):
      print(f"{path}  sha256 {pretrained.sha256_file(path)}")
  except (OSError, ValueError) as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  main()
