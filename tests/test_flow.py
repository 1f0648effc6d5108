"""Optical-flow regularisation: the loss, the host-side flows, and a
training run with it on."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from bidigen import diffusion
from bidigen import metrics
from tests.test_evaluate import panning


def moving_latents(shift=1, frames=5, side=12):
  """Latents of a smooth pattern translating ``shift`` px/frame along x,
  and the flow t -> t+1 that describes it."""
  ys, xs = np.mgrid[0:side, 0:side].astype(np.float32)
  lat = np.stack([np.stack([np.sin(0.6 * (xs - shift * t)) + np.cos(0.4 * ys),
                            np.cos(0.5 * (xs - shift * t) + 0.3 * ys)], -1)
                  for t in range(frames)])
  flows = np.zeros((frames - 1, side, side, 2), np.float32)
  flows[..., 0] = shift
  return jnp.asarray(lat[None]), jnp.asarray(flows[None])


def test_warp_moves_latents_by_the_flow():
  lat, flows = moving_latents()
  back = diffusion.warp(lat[0, 1], flows[0, 0])
  np.testing.assert_allclose(back[:, :-1], lat[0, 0, :, :-1], atol=1e-5)


def test_flow_loss_prefers_motion_that_follows_the_flow():
  lat, flows = moving_latents()
  known = jnp.zeros((1, 5)).at[0, 0].set(1.0)
  follows = diffusion.flow_loss(lat, lat, flows, known)
  frozen = jnp.broadcast_to(lat[:, :1], lat.shape)  # Copies of F0.
  still = diffusion.flow_loss(frozen, lat, flows, known)
  backwards = diffusion.flow_loss(lat[:, ::-1], lat, flows, known)
  assert float(follows) < 0.01 < float(still) < float(backwards)
  all_known = jnp.ones((1, 5))
  assert float(diffusion.flow_loss(frozen, lat, flows, all_known)) == 0.0


def test_clip_flows_at_latent_resolution():
  video = panning(2, 3, size=48)[None]
  fl = metrics.clip_flows(video, factor=4)
  assert fl.shape == (1, 2, 12, 12, 2) and fl.dtype == np.float32
  assert abs(np.median(fl[..., 0]) + 0.5) < 0.1  # -2 px / 4.
  assert abs(np.median(fl[..., 1])) < 0.1


@pytest.mark.slow
def test_training_with_flow_regularisation(tmp_path, tiny_data, tiny_config):
  from bidigen import latents
  from bidigen import train
  config = tiny_config.copy_and_resolve_references()
  config.data.data_dir = tiny_data
  config.train.flow_weight = 1.0
  config.train.num_steps = 3
  # The session's latents were encoded without flows: training says so.
  with pytest.raises(ValueError, match="needs flows"):
    train.train(config, str(tmp_path / "refused"))
  config.data.latents_dir = str(tmp_path / "latents_with_flows")
  config.data.encode_clips = 8
  latents.encode(config)
  wd = str(tmp_path / "run")
  train.train(config, wd)
  with open(os.path.join(wd, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  assert len(rows) == 3 and all(
      np.isfinite(r["flow_loss"]) and r["flow_loss"] > 0 for r in rows)
  # The total is the v-loss plus the flow loss at its configured weight.
  np.testing.assert_allclose([r["loss"] for r in rows],
                             [r["v_loss"] + 1.0 * r["flow_loss"]
                              for r in rows], rtol=1e-5)
