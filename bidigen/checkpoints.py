"""Orbax checkpoints: the training manager, and exported sampling models.

A training workdir holds ``checkpoints/`` (an orbax CheckpointManager whose
items are the train state, the grain iterator and the config as JSON). An
exported model (what ships in ``bidigen/assets/default_model``) holds only
what sampling needs: the EMA UNet params, and ``config.json`` (which holds
the latent mean/std the UNet's latents are normalised by). The autoencoder
is TAEF2, frozen, and ships once in ``bidigen/assets/taef2``. Orbax writes to a temporary folder and renames, so an
interrupted save never leaves a half-written checkpoint behind.
"""

import json
import os

from absl import logging
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

# Orbax saves an array replicated over n devices in n slices, one per
# replica, so that each device copies a part to the host. Below 1 MiB a
# slice costs more in dispatch than it saves in transfer: a model's many
# norms and biases (and every array of a small model) are saved whole by
# replica 0. Measured on the tiny config over 8 CPU devices (two saves of a
# 6-step run, with the wait for them): 12,600 slices a save and 18 s in
# all before, 8 s after.
MIN_SLICE_BYTES = 1 << 20
_verbosity = logging.get_verbosity()
logging.set_verbosity(logging.ERROR)  # Orbax warns of the override.
try:
  ocp.type_handlers.register_type_handler(
      jax.Array, ocp.type_handlers.ArrayHandler(
          min_slice_bytes_for_replica_parallel=MIN_SLICE_BYTES),
      override=True)
finally:
  logging.set_verbosity(_verbosity)

DEFAULT_MODEL = os.path.join(os.path.dirname(__file__), "assets",
                             "default_model")


def manager(workdir: str, max_to_keep: int = 3) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), "checkpoints"),
      options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                           create=True),
      item_names=("state", "data", "config"))


def restore_for_sampling(workdir: str, ema: int = 0):
  """(config, sampling params) from the latest checkpoint of a workdir: the
  weights of its ``ema``-th average (``config.train.ema_decays``).

  Reads the state's structure from the checkpoint's metadata, with no
  trainer, optimizer or text encoder to rebuild it, onto this process's
  first device: a run trained on 8 devices (or a pod) samples on one.
  Keeps only those EMA weights.
  """
  mngr = manager(workdir)
  step = mngr.latest_step()
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints")
  tree = ocp.StandardCheckpointer().metadata(
      os.path.join(mngr.directory, str(step), "state")).item_metadata
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), tree)
  restored = mngr.restore(step, args=ocp.args.Composite(
      config=ocp.args.JsonRestore(), state=ocp.args.StandardRestore(target)))
  config = ml_collections.ConfigDict(restored["config"])
  emas = restored["state"]["ema"]
  if not 0 <= ema < len(emas):
    raise ValueError(f"--ema={ema}: {workdir} keeps {len(emas)} EMAs "
                     f"(config.train.ema_decays="
                     f"{tuple(config.train.ema_decays)})")
  return config, {"unet": jax.tree.map(np.asarray, emas[ema])}


EXPORT_DTYPES = ("float32", "float16")


def export_model(params: dict, config: ml_collections.ConfigDict,
                 path: str, *, overwrite: bool = False,
                 dtype: str = "float32") -> None:
  """Writes a sampling model to ``path`` atomically (temp folder + rename);
  an earlier export there is replaced only with ``overwrite``.

  ``dtype="float16"`` stores the weights at half the size (what ships in
  the package, and what travels to an accelerator within its copy limit);
  ``load_model`` widens them back to float32, the precision the sampler
  computes in, so only the weights' rounding (about 5e-4 relative) differs.
  """
  from bidigen import media  # pylint: disable=import-outside-toplevel
  if dtype not in EXPORT_DTYPES:
    raise ValueError(f"export dtype {dtype!r}; known: "
                     f"{', '.join(EXPORT_DTYPES)}")
  path = os.path.abspath(path)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with media.output_folder(path, overwrite=overwrite) as tmp:
    params = jax.tree.map(
        lambda a: np.asarray(a).astype(dtype) if np.issubdtype(
            np.asarray(a).dtype, np.floating) else np.asarray(a),
        jax.device_get(params))
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(os.path.join(tmp, "params"), params)
    ckpt.wait_until_finished()
    with open(os.path.join(tmp, "config.json"), "w") as f:
      f.write(config.to_json(indent=2))


def load_config(path: str) -> ml_collections.ConfigDict:
  with open(os.path.join(path, "config.json")) as f:
    return ml_collections.ConfigDict(json.load(f))


def load_model(path: str | None = None) -> tuple[ml_collections.ConfigDict,
                                                 dict]:
  """Loads (config, sampling params) from an exported model or a workdir.

  ``None`` means the embedded default model. A training workdir gives the
  latest checkpoint's EMA weights.
  """
  path = os.path.abspath(DEFAULT_MODEL if path is None else path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"checkpoint not found: {path}")
  if os.path.isdir(os.path.join(path, "checkpoints")):
    return restore_for_sampling(path)
  if not os.path.exists(os.path.join(path, "config.json")):
    raise FileNotFoundError(
        f"{path} is neither an exported model (config.json + params/) nor a "
        "training workdir (checkpoints/)")
  config = load_config(path)
  params = ocp.StandardCheckpointer().restore(os.path.join(path, "params"))
  # float16 exports compute in float32 like any other.
  return config, jax.tree.map(
      lambda a: np.asarray(a, np.float32) if a.dtype == np.float16 else a,
      params)
