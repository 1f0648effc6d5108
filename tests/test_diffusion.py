"""The DDIM sampler against oracles: models whose right answer is known in
closed form, so the sampler is checked against the schedule's mathematics
rather than against itself."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bidigen import diffusion


def schedule(t):
  """alpha, sigma of the cosine schedule, written here independently of
  diffusion.alpha_sigma (t = 1 is clipped as the module documents)."""
  t = np.clip(np.asarray(t, np.float64), 0.0, 0.9999)
  return np.cos(0.5 * np.pi * t), np.sin(0.5 * np.pi * t)


def v_from_x0(z, x0, level):
  """The v that a perfect model outputs at noisy z when the clean frames
  are x0: z = a x0 + s eps and v = a eps - s x0 give v = (a z - x0) / s."""
  t = jnp.clip(level, 0.0, 0.9999)[..., None, None, None]
  a, s = jnp.cos(0.5 * jnp.pi * t), jnp.sin(0.5 * jnp.pi * t)
  return jnp.where(s > 0, (a * z - x0) / jnp.maximum(s, 1e-12), 0.0)


def gaussian_v(mu: float, s: float):
  """The optimal v-predictor for data x0 ~ N(mu, s^2) per element:
  E[x0 | z] = mu + a s^2 / (a^2 s^2 + sigma^2) (z - a mu)."""
  def apply_fn(params, z, known, anchor, offsets, level, text, text_mask):
    del params, known, anchor, offsets, text, text_mask
    t = jnp.clip(level, 0.0, 0.9999)[..., None, None, None]
    a, sig = jnp.cos(0.5 * jnp.pi * t), jnp.sin(0.5 * jnp.pi * t)
    x0 = mu + a * s ** 2 / (a ** 2 * s ** 2 + sig ** 2) * (z - a * mu)
    return v_from_x0(z, x0, level)
  return apply_fn


def window_inputs(b=3, t=5, shape=(4, 4, 2), seed=0):
  rng = np.random.default_rng(seed)
  f = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)
  known = jnp.zeros((b, t)).at[:, 1].set(1.0)
  return dict(noise=f(b, t, *shape), context=f(b, t, *shape), known=known,
              anchor=f(b, *shape),
              offsets=jnp.broadcast_to(jnp.arange(t) - 1, (b, t)),
              text=f(b, 3, 4), text_mask=jnp.ones((b, 3)),
              null_text=jnp.zeros((b, 3, 4)), null_mask=jnp.ones((b, 3)))


@pytest.mark.parametrize("use_scan", [True, False])
def test_ddim_with_the_true_v_returns_x0_and_guides_linearly(use_scan):
  """A model that outputs the true v for fixed clean frames (x_cond with the
  prompt, x_uncond without) must give back exactly
  x_uncond + g (x_cond - x_uncond) on the unknown frames, and the context on
  the known ones, whatever the noise and the number of steps."""
  inp = window_inputs()
  rng = np.random.default_rng(1)
  x_cond, x_uncond = (jnp.asarray(rng.normal(size=inp["noise"].shape),
                                  jnp.float32) for _ in range(2))

  b = x_cond.shape[0]
  batches = []  # The batch of every call the sampler runs (not traces).

  def apply_fn(params, z, known, anchor, offsets, level, text, text_mask):
    del params, known, anchor, offsets, text_mask
    jax.debug.callback(lambda n: batches.append(int(n)), z.shape[0])
    cond = jnp.any(text != 0, axis=(1, 2))[:, None, None, None, None]
    tile = lambda x: jnp.concatenate([x] * (z.shape[0] // b))
    x0 = jnp.where(cond, tile(x_cond), tile(x_uncond))
    return v_from_x0(z, x0, level)

  unknown = np.asarray(inp["known"]) == 0
  for steps, guidance in ((1, 1.0), (3, 0.0), (4, 3.0), (2, 1.0)):
    batches.clear()
    out = np.asarray(diffusion.denoise_window(
        apply_fn, None, steps=steps, guidance=guidance, use_scan=use_scan,
        **inp))
    want = x_uncond + guidance * (x_cond - x_uncond)
    np.testing.assert_allclose(out[unknown], np.asarray(want)[unknown],
                               atol=2e-4, err_msg=f"{steps=} {guidance=}")
    np.testing.assert_array_equal(out[~unknown],
                                  np.asarray(inp["context"])[~unknown])
    # Guidance 1 is the conditional call alone: no unconditional half.
    assert batches == [b if guidance == 1 else 2 * b] * steps, batches


def test_ddim_on_gaussian_data_follows_the_probability_flow():
  """Data x0 ~ N(mu, s^2) per element: the optimal v-predictor is analytic,
  E[x0 | z] = mu + a s^2 / (a^2 s^2 + sigma^2) (z - a mu), and each DDIM step
  maps z - a mu linearly, by (a a' s^2 + sigma sigma') / (a^2 s^2 + sigma^2).
  So the output is mu + F (noise - a_1 mu) exactly, with F the product of
  those factors, and with many steps its mean and std are the data's."""
  mu, s, steps = 0.7, 0.3, 200
  inp = window_inputs(b=16, t=5, shape=(8, 8, 4))

  out = np.asarray(diffusion.denoise_window(
      gaussian_v(mu, s), None, steps=steps, guidance=1.0, **inp))
  a, sig = schedule(np.linspace(1.0, 0.0, steps + 1))
  factor = np.prod((a[:-1] * a[1:] * s ** 2 + sig[:-1] * sig[1:])
                   / (a[:-1] ** 2 * s ** 2 + sig[:-1] ** 2))
  unknown = np.asarray(inp["known"]) == 0
  noise = np.asarray(inp["noise"], np.float64)[unknown]
  np.testing.assert_allclose(out[unknown], mu + factor * (noise - a[0] * mu),
                             atol=1e-3)
  np.testing.assert_array_equal(out[~unknown],
                                np.asarray(inp["context"])[~unknown])
  gen = out[unknown]
  assert abs(gen.mean() - mu) < 0.02, gen.mean()
  assert abs(gen.std() / s - 1) < 0.03, gen.std()


def test_alpha_sigma_is_the_cosine_schedule():
  t = np.linspace(0.0, 1.0, 11)
  a, s = diffusion.alpha_sigma(jnp.asarray(t, jnp.float32))
  want_a, want_s = schedule(t)
  np.testing.assert_allclose(a, want_a, atol=1e-6)
  np.testing.assert_allclose(s, want_s, atol=1e-6)
  np.testing.assert_allclose(np.asarray(a) ** 2 + np.asarray(s) ** 2, 1.0,
                             atol=1e-6)


def test_frame_noise_depends_only_on_key_and_offset():
  """What makes the same seed give the same frames however the frames are
  split into windows and the samples into batches."""
  from bidigen import expansion
  keys = expansion.sample_keys(0, 3)
  shape = (2, 2, 1)
  a = np.asarray(expansion.frame_noise(keys, jnp.asarray(
      [[-2, -1, 0, 1, 2]] * 3), shape))
  b = np.asarray(expansion.frame_noise(keys[::-1], jnp.asarray(
      [[1, 2, 3]] * 3), shape))
  # Same (key, offset) anywhere in the window or the batch: same noise.
  np.testing.assert_array_equal(a[:, 3:], b[::-1, :2])
  # Another offset or another key: other noise.
  assert not np.allclose(a[:, 0], a[:, 1])
  assert not np.allclose(a[0], a[1])
  keys1 = expansion.sample_keys(1, 3)
  c = np.asarray(expansion.frame_noise(keys1, jnp.asarray(
      [[-2, -1, 0, 1, 2]] * 3), shape))
  assert not np.allclose(a, c)


def test_dpm_solver_follows_the_gaussian_flow_closer_in_few_steps():
  """On N(mu, s^2) data the probability-flow ODE maps noise z_1 to
  mu + s / sqrt(a_1^2 s^2 + sigma_1^2) (z_1 - a_1 mu) exactly.
  DPM-Solver++(2M) must land closer to it than DDIM in 8, 16 and 32 steps,
  by a margin that grows with the steps (second order against first;
  measured errors 0.21 / 0.29, 0.043 / 0.154, 0.005 / 0.079): the first
  step from pure noise and the last to t = 0 are first order in both, and
  dominate at 8. It gives back x0 exactly when the model knows it."""
  mu, s = 0.7, 0.3
  inp = window_inputs(b=4, t=5, shape=(4, 4, 2))

  gaussian = gaussian_v(mu, s)
  a1, s1 = schedule(np.array(1.0))
  unknown = np.asarray(inp["known"]) == 0
  noise = np.asarray(inp["noise"], np.float64)[unknown]
  exact = mu + s / np.sqrt(a1 ** 2 * s ** 2 + s1 ** 2) * (noise - a1 * mu)
  err = {}
  for steps in (8, 16, 32):
    for solver in diffusion.SOLVERS:
      out = np.asarray(diffusion.denoise_window(
          gaussian, None, steps=steps, guidance=1.0, solver=solver, **inp))
      err[solver, steps] = np.abs(out[unknown] - exact).max()
      np.testing.assert_array_equal(out[~unknown],
                                    np.asarray(inp["context"])[~unknown])
  for steps, ratio in ((8, 0.8), (16, 0.35), (32, 0.1)):
    assert err["dpmpp_2m", steps] < ratio * err["ddim", steps], err

  x0 = jnp.asarray(np.random.default_rng(2).normal(
      size=inp["noise"].shape), jnp.float32)
  known_x0 = lambda p, z, k, an, o, level, tx, m: v_from_x0(
      z, jnp.concatenate([x0] * (z.shape[0] // x0.shape[0])), level)
  for use_scan in (True, False):
    out = np.asarray(diffusion.denoise_window(
        known_x0, None, steps=5, guidance=1.0, solver="dpmpp_2m",
        use_scan=use_scan, **inp))
    np.testing.assert_allclose(out[unknown], np.asarray(x0)[unknown],
                               atol=2e-4)
  with pytest.raises(ValueError, match="solver 'euler'; known: ddim"):
    diffusion.denoise_window(gaussian, None, steps=2, guidance=1.0,
                             solver="euler", **inp)
