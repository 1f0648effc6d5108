"""Masked conditional diffusion on latent video windows.

Continuous-time cosine schedule with v-prediction (as in VDM / Imagen Video):
alpha = cos(pi t / 2), sigma = sin(pi t / 2), v = alpha * eps - sigma * x0.
Known frames are given clean (noise level 0) and excluded from the loss; the
training masks are exactly the ones sampling uses.
"""

import jax
import jax.numpy as jnp

# Mask kinds, in the order `sample_windows` draws them; configs set how
# often each is drawn (config.train.task_probs).
TASKS = ("f0_only", "forward", "backward", "interpolation", "keyframes",
         "bridge")


def alpha_sigma(t):
  t = jnp.clip(t, 0.0, 0.9999)
  return jnp.cos(0.5 * jnp.pi * t), jnp.sin(0.5 * jnp.pi * t)


def sample_windows(rng, clip_frames: int, window: int, max_context: int,
                   batch: int, task_probs):
  """Draws, per example, a window of the clip and which frames are known.

  Returns (start [B] index into the clip, known [B, window] float, task [B]).
  ``f0_only`` centres the window on F0 with F0 known; ``forward`` knows the
  first k frames, ``backward`` the last k (1 <= k <= max_context);
  ``interpolation`` knows the first and the last frame; ``keyframes`` 1 to
  max_context frames anywhere in the window (a user's keyframes, or a video
  the window only touches); ``bridge`` the first k and the last k' (a gap
  between two known stretches, as the sampler closes one: keyframes farther
  apart than a window, or a loop's seam).
  """
  k_task, k_start, k_ctx, k_ctx2, k_pick = jax.random.split(rng, 5)
  task = jax.random.choice(k_task, len(TASKS), (batch,),
                           p=jnp.asarray(task_probs))
  centre = clip_frames // 2
  start = jax.random.randint(k_start, (batch,), 0, clip_frames - window + 1)
  start = jnp.where(task == 0, centre - window // 2, start)
  k = jax.random.randint(k_ctx, (batch,), 1, max_context + 1)[:, None]
  k2 = jax.random.randint(k_ctx2, (batch,), 1, max_context + 1)[:, None]
  # Keep one frame unknown even when 2 * max_context >= window.
  k2 = jnp.minimum(k2, window - 1 - k)
  idx = jnp.arange(window)[None, :]
  # The k frames with the smallest random scores: k distinct, anywhere.
  rank = jnp.argsort(jnp.argsort(
      jax.random.uniform(k_pick, (batch, window)), axis=1), axis=1)
  t = task[:, None]
  known = jnp.select(
      [t == 0, t == 1, t == 2, t == 3, t == 4],
      [idx == window // 2, idx < k, idx >= window - k,
       (idx == 0) | (idx == window - 1), rank < k],
      (idx < k) | (idx >= window - k2))
  return start, known.astype(jnp.float32), task


def warp(lat, fl):
  """Samples latents [h, w, c] at p + fl(p) (bilinear): with fl the flow
  from frame t to t+1, warp(frame t+1, fl) lands on frame t."""
  h, w, _ = lat.shape
  ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32),
                        jnp.arange(w, dtype=jnp.float32), indexing="ij")
  coords = [ys + fl[..., 1], xs + fl[..., 0]]
  return jax.vmap(lambda ch: jax.scipy.ndimage.map_coordinates(
      ch, coords, order=1, mode="nearest"), in_axes=-1, out_axes=-1)(lat)


def flow_loss(x0_hat, x0, flows, known, tau: float = 0.5):
  """Optical-flow regularisation: each predicted frame, warped by the
  ground truth's flow, should land on the predicted frame before it.

  flows [B, W-1, h, w, 2] is the flow t -> t+1 at latent resolution. Pixels
  the flow cannot explain in the ground truth (occlusions, objects entering)
  are down-weighted by how badly the same warp fits the true latents.
  """
  pairs = jax.vmap(jax.vmap(warp))
  truth_err = jnp.mean(jnp.abs(pairs(x0[:, 1:], flows) - x0[:, :-1]), -1)
  weight = jnp.exp(-truth_err / tau)[..., None]
  # Pairs with an unknown frame: known-known pairs carry no gradient.
  weight = weight * (1 - known[:, 1:] * known[:, :-1])[..., None, None, None]
  err = (pairs(x0_hat[:, 1:], flows) - x0_hat[:, :-1]) ** 2
  return jnp.sum(weight * err) / (jnp.sum(weight * jnp.ones_like(err))
                                  + 1e-8)


NOISE_LEVELS = ("uniform", "logit_normal")


def noise_level(rng, shape, kind: str = "uniform"):
  """Training's noise levels t in (0, 1): "uniform", or "logit_normal"
  (sigmoid of a standard normal, as SD3: more of the middle levels, where
  a v-prediction model has the most to learn)."""
  if kind == "uniform":
    return jax.random.uniform(rng, shape)
  if kind == "logit_normal":
    return jax.nn.sigmoid(jax.random.normal(rng, shape))
  raise ValueError(f"noise levels {kind!r}; known: {', '.join(NOISE_LEVELS)}")


def diffusion_loss(apply_fn, params, rng, x0, known, anchor, offsets, text,
                   text_mask, flows=None,
                   flow_weight: float = 0.0, min_snr: float = 0.0,
                   noise_levels: str = "uniform"):
  """Mean squared v-error over the unknown frames of each window.

  ``flows`` with ``flow_weight`` > 0 adds
  ``flow_loss`` on the predicted clean frames. ``min_snr`` > 0 weights each
  example by min(SNR, min_snr) / (SNR + 1), Min-SNR-gamma for v-prediction
  (Hang et al. 2023): the nearly clean levels, whose v-error is mostly
  noise, stop dominating the gradient. Returns (loss, aux).
  """
  b, t = known.shape
  k_t, k_eps = jax.random.split(rng)
  level = noise_level(k_t, (b, 1), noise_levels)
  level = jnp.where(known > 0, 0.0, jnp.broadcast_to(level, (b, t)))
  eps = jax.random.normal(k_eps, x0.shape)
  alpha, sigma = alpha_sigma(level[..., None, None, None])
  z = alpha * x0 + sigma * eps
  z = jnp.where(known[..., None, None, None] > 0, x0, z)
  v_target = alpha * eps - sigma * x0
  v = apply_fn(params, z, known, anchor, offsets, level, text, text_mask)
  weight = (1.0 - known)[..., None, None, None]
  count = jnp.sum(weight * jnp.ones_like(x0))
  if min_snr:
    snr = (alpha / sigma) ** 2
    weight = weight * jnp.minimum(snr, min_snr) / (snr + 1.0)
  err = jnp.sum(weight * (v - v_target) ** 2) / (count + 1e-8)
  aux = {"v_loss": err}
  if flows is not None and flow_weight:
    x0_hat = jnp.where(known[..., None, None, None] > 0, x0,
                       alpha * z - sigma * v)
    aux["flow_loss"] = flow_loss(x0_hat, x0, flows, known)
    err = err + flow_weight * aux["flow_loss"]
  return err, aux


SOLVERS = ("ddim", "dpmpp_2m")


def denoise_window(apply_fn, params, noise, context, known, anchor, offsets,
                   text, text_mask, null_text, null_mask, *, steps: int,
                   guidance: float, use_scan: bool = True,
                   solver: str = "ddim"):
  """Solves the probability-flow ODE over one batch of windows from noise
  to clean latents; known frames stay clean.

  ``solver``: "ddim" (eta = 0, first order) or "dpmpp_2m" (DPM-Solver++(2M),
  Lu et al. 2022: second order in log-SNR from the last two x0 predictions,
  the same one model call per step; first order on the first and the last
  step). Classifier-free guidance runs conditional and unconditional as one
  batch of two; at guidance 1 (the conditional prediction) a branch of the
  same program skips the unconditional half, so guidance stays an argument
  and changing it compiles nothing. With ``use_scan=False`` the same update
  runs in a Python loop: the reference the scanned sampler is tested against.
  """
  if solver not in SOLVERS:
    raise ValueError(f"solver {solver!r}; known: {', '.join(SOLVERS)}")
  b, t = known.shape
  mask = known[..., None, None, None] > 0
  times = jnp.linspace(1.0, 0.0, steps + 1)
  texts = jnp.concatenate([text, null_text], axis=0)
  masks = jnp.concatenate([text_mask, null_mask], axis=0)
  double = lambda a: jnp.concatenate([a, a], axis=0)

  def log_snr(a, s):  # lambda = log(alpha / sigma); +inf at t = 0.
    return jnp.log(a) - jnp.log(s)

  def step(carry, i):
    z, x0_prev, h_prev = carry
    t_now, t_next = times[i], times[i + 1]
    z = jnp.where(mask, context, z)
    level = jnp.where(known > 0, 0.0, t_now)
    def guided():
      v = apply_fn(params, double(z), double(known), double(anchor),
                   double(offsets), double(level), texts, masks)
      v_cond, v_uncond = v[:b], v[b:]
      return v_uncond + guidance * (v_cond - v_uncond)

    def conditional():  # Guidance 1 is the conditional prediction alone.
      return apply_fn(params, z, known, anchor, offsets, level, text,
                      text_mask)
    v = jax.lax.cond(guidance == 1, conditional, guided)
    a_now, s_now = alpha_sigma(t_now)
    a_next, s_next = alpha_sigma(t_next)
    x0 = a_now * z - s_now * v
    if solver == "ddim":
      eps = s_now * z + a_now * v
      return (a_next * x0 + s_next * eps, x0, h_prev), None
    h = log_snr(a_next, s_next) - log_snr(a_now, s_now)
    r = h_prev / h
    second = (1 + 0.5 / r) * x0 - (0.5 / r) * x0_prev
    d = jnp.where((i == 0) | (i == steps - 1), x0, second)
    # z' = (sigma'/sigma) z - alpha' (e^-h - 1) D; at t' = 0 this is D.
    z = jnp.where(i == steps - 1, d,
                  (s_next / s_now) * z - a_next * jnp.expm1(-h) * d)
    return (z, x0, h), None

  carry = (noise, jnp.zeros_like(noise), jnp.ones(()))
  if use_scan:
    carry, _ = jax.lax.scan(step, carry, jnp.arange(steps))
  else:
    for i in range(steps):
      carry, _ = step(carry, i)
  return jnp.where(mask, context, carry[0])
