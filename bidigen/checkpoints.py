"""Orbax checkpoints: the training manager, and exported sampling models.

A training workdir holds ``checkpoints/`` (an orbax CheckpointManager whose
items are the train state, the grain iterator and the config as JSON). An
exported model (what ships in ``bidigen/assets/default_model``) holds only
what sampling needs: autoencoder params, EMA UNet params, the latent scale,
and ``config.json``. Orbax writes to a temporary folder and renames, so an
interrupted save never leaves a half-written checkpoint behind.
"""

import json
import os

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from bidigen import media

DEFAULT_MODEL = os.path.join(os.path.dirname(__file__), "assets",
                             "default_model")


def manager(workdir: str, max_to_keep: int = 3) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), "checkpoints"),
      options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                           create=True),
      item_names=("state", "data", "config"))


def sampling_params(state) -> dict:
  """What sampling needs from a train state, as plain arrays."""
  return {"vae": nn.unbox(state.params["vae"]),
          "unet": nn.unbox(state.ema),
          "latent_scale": state.latent_scale}


def export_model(params: dict, config: ml_collections.ConfigDict,
                 path: str, *, overwrite: bool = False) -> None:
  """Writes a sampling model to ``path`` atomically (temp folder + rename);
  an earlier export there is replaced only with ``overwrite``."""
  path = os.path.abspath(path)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with media.output_folder(path, overwrite=overwrite) as tmp:
    params = jax.tree.map(np.asarray, jax.device_get(params))
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
    from bidigen import train  # The train state lives there.
    return train.restore_for_sampling(path)
  if not os.path.exists(os.path.join(path, "config.json")):
    raise FileNotFoundError(
        f"{path} is neither an exported model (config.json + params/) nor a "
        "training workdir (checkpoints/)")
  config = load_config(path)
  params = ocp.StandardCheckpointer().restore(os.path.join(path, "params"))
  return config, params
