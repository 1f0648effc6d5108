"""The expansion sampler: plan, scan == loop, determinism, devices, F0."""

import jax
import numpy as np
import pytest

from bidigen import models
from bidigen import sample
from bidigen import sharding
from bidigen import train


@pytest.mark.parametrize("before,after,steps,side", [
    (4, 4, 0, 4), (0, 0, 0, 4), (5, 0, 1, 9), (16, 16, 3, 19),
    (3, 12, 2, 14)])
def test_plan_covers_the_requested_frames(before, after, steps, side):
  half, new, n, s = sample.plan(before, after, window=9, context=4)
  assert (half, new, n, s) == (4, 5, steps, side)
  assert s >= max(before, after)


@pytest.fixture(scope="module")
def setup(tiny_config):
  """A tiny model with random (but non-trivial) weights: the sampler's
  plumbing does not need a trained one."""
  mesh = sharding.make_mesh(tiny_config.mesh.axes)
  config = tiny_config.copy_and_resolve_references()
  config.model.latent_mean = [0.1] * 32
  config.model.latent_std = [0.9] * 32
  unet = models.build(config.model)
  state = jax.jit(lambda k: train.init_state(
      k, unet=unet, tx=train.make_optimizer(config.train),
      latent_shape=(8, 8, 32), window=9, text_shape=(24, 16)))(
          jax.random.key(0))
  leaves, tree = jax.tree.flatten(jax.tree.map(np.asarray, state.ema))
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = sample.model_params(jax.tree.unflatten(tree, [
      l + 0.02 * jax.random.normal(k, l.shape) for l, k in zip(leaves, keys)]),
      config.model)
  rng = np.random.default_rng(0)
  b = 8
  inputs = (rng.uniform(-1, 1, (b, 64, 64, 3)).astype(np.float32),
            sample.sample_keys(0, b),
            rng.normal(size=(b, 24, 16)).astype(np.float32),
            np.ones((b, 24), np.float32),
            np.zeros((b, 24, 16), np.float32), np.ones((b, 24), np.float32))
  kw = dict(unet=unet, window=9, context=4,
            frames_before=6, frames_after=10, steps=2, guidance=2.0)
  return mesh, params, inputs, kw


def test_scan_sampler_matches_loop_reference(setup):
  mesh, params, inputs, kw = setup
  scan = sample.make_sampler(mesh, batch=8, **kw)(params, *inputs)
  loop = jax.jit(lambda p, *a: sample.expand(p, *a, use_scan=False, **kw))(
      params, *inputs)
  scan, loop = np.asarray(scan, int), np.asarray(loop, int)
  assert scan.shape == (8, 17, 64, 64, 3)
  assert np.abs(scan - loop).max() <= 1
  assert (scan == loop).mean() > 0.999


def test_same_seed_same_frames_and_f0_is_the_input(setup):
  mesh, params, inputs, kw = setup
  f = sample.make_sampler(mesh, batch=8, **kw)
  a = np.asarray(f(params, *inputs))
  b = np.asarray(f(params, *inputs))
  np.testing.assert_array_equal(a, b)
  images = inputs[0]
  np.testing.assert_array_equal(
      a[:, 6], np.round((images + 1) * 127.5).astype(np.uint8))
  other = (inputs[0], sample.sample_keys(1, 8)) + inputs[2:]
  c = np.asarray(f(params, *other))
  assert np.abs(a.astype(int) - c).mean() > 1, "another seed, other frames"
  # Generated frames are not copies of F0.
  assert np.abs(a[:, 0].astype(int) - a[:, 6]).mean() > 1


def test_eight_devices_give_the_frames_of_one(setup):
  mesh, params, inputs, kw = setup
  assert mesh.devices.size == 8
  eight = np.asarray(sample.make_sampler(mesh, batch=8, **kw)(
      params, *inputs), int)
  one_mesh = sharding.make_mesh([("data", 1)], jax.devices()[:1])
  one = np.asarray(sample.make_sampler(one_mesh, batch=8, **kw)(
      params, *inputs), int)
  # XLA compiles a per-device batch of 1 and of 8 differently; float
  # rounding may move a pixel by one level, never more.
  assert np.abs(eight - one).max() <= 1
  assert (eight == one).mean() > 0.999


def test_sample_i_does_not_depend_on_the_batch(setup):
  """fold_in(seed, i) per sample: the first sample of a batch of 8 equals
  the same sample run alone."""
  mesh, params, inputs, kw = setup
  eight = np.asarray(sample.make_sampler(mesh, batch=8, **kw)(
      params, *inputs), int)
  one = np.asarray(sample.make_sampler(mesh, batch=1, **kw)(
      params, *(x[:1] for x in inputs)), int)
  assert np.abs(eight[:1] - one).max() <= 1
