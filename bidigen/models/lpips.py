"""LPIPS (Zhang et al. 2018, VGG variant) from a local weights file.

The published network cannot be downloaded at run time here, so the weights
come from an ``.npz`` holding the two published state dicts under their own
names: torchvision's VGG16 ``features.N.weight/bias`` and LPIPS's
``linK.model.1.weight`` (``vgg.pth``). Convert once, where torch exists:

  sd = torchvision.models.vgg16(weights="IMAGENET1K_V1").features.state_dict()
  sd = {f"features.{k}": v for k, v in sd.items()}
  sd |= torch.load("lpips/weights/v0.1/vgg.pth")
  np.savez("lpips_vgg.npz", **{k: v.numpy() for k, v in sd.items()})
"""

import jax
import jax.numpy as jnp
import numpy as np

# VGG16 "features": conv indices, with the 2x2 max pools before 5, 10, 17, 24.
CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
POOL_BEFORE = (5, 10, 17, 24)
TAPS = (2, 7, 14, 21, 28)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
WIDTHS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)
_SHIFT = np.array([-0.030, -0.088, -0.188], np.float32)
_SCALE = np.array([0.458, 0.448, 0.450], np.float32)


def load(path: str) -> dict:
  """Weights from the .npz; a missing or misshapen entry is one line."""
  with np.load(path) as f:
    params = {k: np.asarray(f[k], np.float32) for k in f.files}
  cin = 3
  for i, w in zip(CONVS, WIDTHS):
    key = f"features.{i}.weight"
    if params.get(key, np.zeros(0)).shape != (w, cin, 3, 3):
      raise ValueError(f"{path}: {key} must have shape {(w, cin, 3, 3)}")
    cin = w
  for k, c in enumerate((64, 128, 256, 512, 512)):
    key = f"lin{k}.model.1.weight"
    if params.get(key, np.zeros(0)).shape != (1, c, 1, 1):
      raise ValueError(f"{path}: {key} must have shape {(1, c, 1, 1)}")
  return params


def _features(params, x):
  feats = []
  for i in CONVS:
    if i in POOL_BEFORE:
      x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1),
                                (1, 2, 2, 1), "VALID")
    w = jnp.transpose(params[f"features.{i}.weight"], (2, 3, 1, 0))  # HWIO
    x = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO",
                                                        "NHWC"))
    x = jax.nn.relu(x + params[f"features.{i}.bias"])
    if i in TAPS:
      feats.append(x)
  return feats


@jax.jit
def distance(params, a, b):
  """LPIPS between uint8 image batches [N, H, W, 3] -> [N]."""
  scale = lambda u: ((u.astype(jnp.float32) / 127.5 - 1) - _SHIFT) / _SCALE
  total = 0.0
  for k, (fa, fb) in enumerate(zip(_features(params, scale(a)),
                                   _features(params, scale(b)))):
    norm = lambda f: f / (jnp.sqrt(jnp.sum(f ** 2, -1, keepdims=True))
                          + 1e-10)
    d = (norm(fa) - norm(fb)) ** 2
    lin = params[f"lin{k}.model.1.weight"].reshape(-1)
    total = total + jnp.mean(d @ lin, axis=(1, 2))
  return total
