"""Shapes and invariants of the UNet, the latent space and diffusion
masks (TAEF2's own tests, on photographs, are in tests/test_pretrained.py)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bidigen import diffusion
from bidigen import models
from bidigen.models import temporal
from tests.test_diffusion import schedule
from tests.test_diffusion import v_from_x0


@pytest.fixture(scope="module")
def tiny(tiny_config):
  return models.build(tiny_config.model)


def test_latent_shape_is_taef2s(tiny_config):
  assert models.latent_shape(tiny_config.data.resolution) == (8, 8, 32)
  assert models.latent_shape(128) == (16, 16, 32)
  assert models.latent_shape(256) == (32, 32, 32)
  with pytest.raises(ValueError, match="not divisible"):
    models.latent_shape(60)


def test_sampling_latents_round_trip_through_the_saved_statistics():
  """to_latents normalises with the model's mean/std and to_frames undoes
  it: a photo survives encode -> decode as TAEF2 alone would give it."""
  from bidigen import expansion
  from bidigen.models import taef2
  from skimage import data as skdata
  from PIL import Image
  photo = np.asarray(Image.fromarray(skdata.astronaut()).resize((64, 64)))
  x = jnp.asarray(photo[None], jnp.float32) / 127.5 - 1
  ae = taef2.load()
  rng = np.random.default_rng(0)
  params = {"autoencoder": ae,
            "latent_mean": rng.normal(size=32).astype(np.float32),
            "latent_std": rng.uniform(0.5, 2, 32).astype(np.float32)}
  z = expansion.to_latents(params, x)
  raw = taef2.encode(ae, (x + 1) / 2)
  np.testing.assert_allclose(z, (raw - params["latent_mean"])
                             / params["latent_std"], rtol=1e-4, atol=1e-4)
  back = expansion.to_frames(params, z)
  ref = taef2.decode(ae, raw) * 2 - 1
  np.testing.assert_allclose(back, ref, atol=1e-3)
  assert float(jnp.mean(jnp.abs(back - x))) < 0.15


def _unet_inputs(b=2, t=9, text_dim=16):
  rng = np.random.default_rng(0)
  return (jnp.asarray(rng.normal(size=(b, t, 8, 8, 32)), jnp.float32),
          jnp.zeros((b, t)), jnp.asarray(rng.normal(size=(b, 8, 8, 32))),
          jnp.tile(jnp.arange(t) - t // 2, (b, 1)), jnp.full((b, t), 0.5),
          jnp.asarray(rng.normal(size=(b, 5, text_dim)), jnp.float32),
          jnp.ones((b, 5)))


def test_unet_shape_and_text_conditioning(tiny):
  unet = tiny
  args = _unet_inputs()
  params = jax.jit(unet.init)(jax.random.key(0), *args)
  # Output layers start at zero; perturb all params so outputs depend on
  # every input.
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = jax.tree.unflatten(tree, [
      l + 0.05 * jax.random.normal(k, l.shape) for l, k in zip(leaves, keys)])
  apply = jax.jit(unet.apply)  # Op by op, four calls took 40 s on 2 cores.
  out = apply(params, *args)
  assert out.shape == args[0].shape
  other_text = args[5] + 1.0
  out2 = apply(params, *args[:5], other_text, args[6])
  assert not np.allclose(out, out2), "text must reach the output"
  # Masked-out text tokens must not matter.
  mask = jnp.ones((2, 5)).at[:, 3:].set(0)
  a = apply(params, *args[:5], args[5], mask)
  b = apply(params, *args[:5], args[5].at[:, 3:].add(5.0), mask)
  np.testing.assert_allclose(a, b, atol=1e-5)


def test_temporal_transformer_is_bidirectional():
  """Frame 0 depends on the last frame and the last frame on frame 0: one
  set of weights looks both ways."""
  t, c = 5, 8
  layer = temporal.TemporalTransformer(num_heads=2, max_distance=t)
  x = jax.random.normal(jax.random.key(0), (t, 2, 2, c))
  params = layer.init(jax.random.key(1), x, t)
  params = jax.tree.map(lambda p: p + 0.1, params)
  jac = jax.jacobian(lambda x: layer.apply(params, x, t))(x)
  assert np.abs(jac[0, 0, 0, 0, -1]).sum() > 0
  assert np.abs(jac[-1, 0, 0, 0, 0]).sum() > 0


def test_training_masks_cover_the_sampling_tasks():
  probs = (0.2, 0.2, 0.2, 0.1, 0.2, 0.1)
  start, known, task = diffusion.sample_windows(
      jax.random.key(0), clip_frames=17, window=9, max_context=4, batch=1024,
      task_probs=probs)
  start, known, task = map(np.asarray, (start, known, task))
  assert set(task.tolist()) == set(range(6))
  # Each task is drawn in its share (binomial sd < 0.013 at n = 1024).
  np.testing.assert_allclose(np.bincount(task) / len(task), probs, atol=0.04)
  assert ((start >= 0) & (start <= 17 - 9)).all()
  f0 = task == 0
  assert (start[f0] == 4).all()
  assert (known[f0] == np.eye(9)[4]).all()
  fwd, bwd, interp = known[task == 1], known[task == 2], known[task == 3]
  # Forward: a known prefix of 1..4 frames; backward: a known suffix.
  for row in fwd:
    k = int(row.sum())
    assert 1 <= k <= 4 and row[:k].all() and not row[k:].any()
  for row in bwd:
    k = int(row.sum())
    assert 1 <= k <= 4 and row[-k:].all() and not row[:-k].any()
  assert (interp[:, [0, -1]] == 1).all() and (interp[:, 1:-1] == 0).all()
  # Keyframes: 1..4 known frames anywhere, every position and count drawn.
  keys = known[task == 4]
  counts = keys.sum(1)
  assert set(counts.tolist()) == {1, 2, 3, 4}
  assert (keys.sum(0) > 0).all()
  # Scattered, not blocks: random 2..4 of 9 frames are contiguous < 22 %.
  runs = [np.flatnonzero(row) for row in keys if row.sum() > 1]
  assert np.mean([r[-1] - r[0] + 1 == len(r) for r in runs]) < 0.3
  # Bridge: a known prefix of 1..4 and a known suffix of 1..4 frames.
  pairs = set()
  for row in known[task == 5]:
    a = int(np.argmin(row))  # The first unknown frame.
    b = 9 - int(np.argmin(row[::-1]))
    assert row[:a].all() and not row[a:b].any() and row[b:].all()
    pairs.add((a, 9 - b))
  assert pairs == {(a, b) for a in range(1, 5) for b in range(1, 5)}


def test_loss_noises_unknown_frames_and_targets_v():
  """An apply_fn that outputs the true v of its noisy input (plus a known
  error) pins the loss down in closed form: zero for the true v, c^2 for
  an error c on the unknown frames, unchanged by any error on the known
  ones. What it receives must be the noising the loss documents."""
  x0 = jax.random.normal(jax.random.key(0), (2, 9, 4, 4, 4))
  known = jnp.zeros((2, 9)).at[:, :3].set(1.0)
  seen = {}

  def apply_fn(errors, z, known, anchor, offsets, level, text, text_mask):
    seen.update(z=z, level=level, anchor=anchor, offsets=offsets)
    on_unknown, on_known = errors
    k = known[..., None, None, None]
    return (v_from_x0(z, x0, level) + on_unknown * (1 - k)
            + on_known * k)

  offsets = jnp.tile(jnp.arange(9) - 4, (2, 1))
  args = (jax.random.key(1), x0, known, x0[:, 4], offsets,
          jnp.zeros((2, 1, 4)), jnp.ones((2, 1)))
  loss = lambda *e: float(diffusion.diffusion_loss(apply_fn, e, *args)[0])
  assert loss(0.0, 0.0) < 1e-8
  np.testing.assert_allclose(loss(0.5, 0.0), 0.25, rtol=1e-4)
  assert loss(0.0, 100.0) < 1e-8

  z, level = np.asarray(seen["z"]), np.asarray(seen["level"])
  np.testing.assert_array_equal(seen["anchor"], x0[:, 4])
  np.testing.assert_array_equal(seen["offsets"], offsets)
  kn = np.asarray(known) > 0
  # Known frames clean at level 0; one level in (0, 1) per window.
  np.testing.assert_array_equal(z[kn], np.asarray(x0)[kn])
  assert (level[kn] == 0).all()
  assert ((level[~kn] > 0) & (level[~kn] < 1)).all()
  assert (level[:, 3:] == level[:, 3:4]).all()
  assert level[0, 3] != level[1, 3]
  # The unknown frames are x0 noised with standard normal noise.
  a, s = schedule(level[:, 3:, None, None, None])
  eps = (z[:, 3:] - a * np.asarray(x0)[:, 3:]) / s
  assert abs(eps.mean()) < 0.1 and abs(eps.std() - 1) < 0.1


@pytest.mark.parametrize("case", ["self_with_bias", "cross_with_mask"])
def test_attention_matches_softmax_of_the_logits(case):
  """blocks.Attention (jax.nn.dot_product_attention) against the textbook
  softmax(q k^T / sqrt(d) + bias) v with masked keys, written out here, on
  a [B, H, W, T, C] input like the temporal transformer's."""
  from bidigen.models import blocks
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 3, 2, 5, 8)), jnp.float32)
  kw, ctx = {}, x
  if case == "self_with_bias":
    kw["bias"] = jnp.asarray(rng.normal(size=(2, 5, 5)), jnp.float32)
  else:
    ctx = jnp.asarray(rng.normal(size=(2, 3, 2, 4, 8)), jnp.float32)
    kw["context"] = ctx
    kw["context_mask"] = jnp.asarray([[1, 1, 0, 1], [1, 0, 0, 0]],
                                     jnp.float32)[:, None, None]
  attn = blocks.Attention(num_heads=2)
  params = attn.init(jax.random.key(0), x, **kw)
  params = jax.tree.map(  # The zero-initialised output would hide errors.
      lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
  got = attn.apply(params, x, **kw)
  p = nn.unbox(params)["params"]
  lin = lambda name, t: t @ p[name]["kernel"] + p[name]["bias"]
  heads = lambda t: t.reshape(t.shape[:-1] + (2, 4))
  q, k, v = (heads(lin(n, t)) for n, t in (("query", x), ("key", ctx),
                                            ("value", ctx)))
  logits = jnp.einsum("...qhd,...khd->...hqk", q, k) / 2.0
  if "bias" in kw:
    logits = logits + kw["bias"]
  if "context_mask" in kw:
    logits = jnp.where(kw["context_mask"][..., None, None, :] > 0, logits,
                       -1e30)
  out = jnp.einsum("...hqk,...khd->...qhd", jax.nn.softmax(logits, -1), v)
  want = lin("out", out.reshape(out.shape[:-2] + (8,)))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_attention_kernel_is_cudnn_only_where_it_applies():
  """"auto" asks for cuDNN's flash attention on a GPU with half-precision
  activations, a head width it supports and no bias or mask, and XLA's
  everywhere else; an explicit choice is kept and an unknown one names the
  config key."""
  from bidigen.models import blocks
  pick = blocks.attention_implementation
  assert pick("auto", "gpu", jnp.bfloat16, 64) == "cudnn"
  assert pick("auto", "gpu", jnp.float16, 128) == "cudnn"
  assert pick("auto", "gpu", jnp.float32, 64) == "xla"
  assert pick("auto", "gpu", jnp.bfloat16, 18) == "xla"
  assert pick("auto", "gpu", jnp.bfloat16, 256) == "xla"
  # Temporal attention (relative-position bias) and cross-attention (text
  # mask) stay XLA's.
  assert pick("auto", "gpu", jnp.bfloat16, 64, bias=True) == "xla"
  assert pick("auto", "tpu", jnp.bfloat16, 64) == "xla"
  assert pick("auto", "cpu", jnp.bfloat16, 64) == "xla"
  assert pick("xla", "gpu", jnp.bfloat16, 64) == "xla"
  assert pick("cudnn", "cpu", jnp.float32, 18) == "cudnn"
  with pytest.raises(ValueError, match=r"config.model.attention='flash'"):
    pick("flash", "gpu", jnp.bfloat16, 64)


def test_unet_fuses_only_unmasked_attention_on_a_gpu(tiny_config,
                                                    monkeypatch):
  """What the UNet asks jax.nn.dot_product_attention for, traced as on a
  GPU: in bf16, cuDNN for spatial self-attention and XLA for every call
  with a bias or mask (temporal attention's relative bias, the text mask);
  in float32, XLA for all."""
  from bidigen.models import blocks
  real, seen = jax.nn.dot_product_attention, []

  def record(q, k, v, bias=None, mask=None, implementation=None):
    seen.append((implementation, bias is not None or mask is not None))
    return real(q, k, v, bias=bias, mask=mask, implementation="xla")
  monkeypatch.setattr(blocks.jax.nn, "dot_product_attention", record)
  monkeypatch.setattr(blocks.jax, "default_backend", lambda: "gpu")
  b, t = 1, 5
  args = (jnp.zeros((b, t, 8, 8, 32)), jnp.zeros((b, t)),
          jnp.zeros((b, 8, 8, 32)), jnp.zeros((b, t), jnp.int32),
          jnp.zeros((b, t)), jnp.zeros((b, 6, 16)), jnp.ones((b, 6)))
  for dtype, fused in (("bfloat16", "cudnn"), ("float32", "xla")):
    seen.clear()
    cfg = tiny_config.model.copy_and_resolve_references()
    cfg.dtype = dtype
    jax.eval_shape(models.build(cfg).init, jax.random.key(0), *args)
    assert {impl for impl, masked in seen if masked} == {"xla"}, dtype
    assert {impl for impl, masked in seen if not masked} == {fused}, dtype


def test_bfloat16_and_remat_keep_the_parameters_and_the_numbers(tiny_config):
  """Mixed precision: float32 parameters, bfloat16 activations within a few
  percent of float32's output. Rematerialisation (blocks, dots): the same
  parameter names (checkpoints load whatever the policy) and the same
  output and gradients as none."""
  rng = np.random.default_rng(0)
  b, t = 2, 5
  args = (jnp.asarray(rng.normal(size=(b, t, 8, 8, 32)), jnp.float32),
          jnp.asarray([[0, 0, 1, 0, 0]] * b, jnp.float32),
          jnp.asarray(rng.normal(size=(b, 8, 8, 32)), jnp.float32),
          jnp.asarray([np.arange(t) - 2] * b),
          jnp.asarray(rng.uniform(0.1, 0.9, (b, t)), jnp.float32),
          jnp.asarray(rng.normal(size=(b, 6, 16)), jnp.float32),
          jnp.ones((b, 6), jnp.float32))

  def build(**kw):
    cfg = tiny_config.model.copy_and_resolve_references()
    # One level: every kind of block (ResNet, spatial and temporal
    # attention) in a third of the tiny UNet's, so a third of the compiling.
    cfg.unet.update(channel_mult=(1,), attention_levels=(True,))
    cfg.update(kw)
    return models.build(cfg)

  base = build()
  params = nn.unbox(jax.jit(base.init)(jax.random.key(0), *args))
  params = jax.tree.map(  # Zero-initialised outputs would hide errors.
      lambda p: p + 0.05 * rng.normal(size=p.shape).astype(p.dtype), params)
  # Jitted: op by op, these UNets took two minutes on 2 cores. One program
  # a UNet gives its output and the gradient of a loss of it.
  def run(unet):
    def loss(p):
      out = unet.apply(p, *args)
      return jnp.mean(out ** 2), out
    grads, out = jax.jit(jax.grad(loss, has_aux=True))(params)
    return out, grads
  want, grads = run(base)

  half = build(dtype="bfloat16")
  shapes = lambda tree: jax.tree.map(lambda a: (a.shape, a.dtype), tree)
  assert shapes(jax.eval_shape(lambda: nn.unbox(half.init(
      jax.random.key(0), *args)))) == shapes(params)  # float32 parameters.
  got = jax.jit(half.apply)(params, *args)
  assert got.dtype == jnp.float32
  err = float(jnp.linalg.norm(got - want) / jnp.linalg.norm(want))
  assert 0 < err < 0.05, err

  for policy in ("blocks", "dots"):
    unet = build(remat=policy)
    assert shapes(jax.eval_shape(lambda: nn.unbox(unet.init(
        jax.random.key(0), *args)))) == shapes(params)
    out, remat_grads = run(unet)
    np.testing.assert_allclose(out, want, atol=1e-5)
    for g, w in zip(jax.tree.leaves(remat_grads), jax.tree.leaves(grads)):
      np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)
  with pytest.raises(ValueError, match="remat='all'; known: none"):
    jax.eval_shape(build(remat="all").init, jax.random.key(0), *args)


def test_remat_policies_keep_fewer_activations_for_the_backward(tiny_config):
  """What benchmark_memory prints per rematerialisation policy: the bytes
  the UNet's forward keeps for its backward pass, per example, shrink from
  none to dots (matmul results and block inputs) to blocks (block inputs
  only). XLA:CPU's temporaries, which it printed before, are the same under
  every policy."""
  from bidigen import train

  def per_example(policy):
    cfg = tiny_config.copy_and_resolve_references()
    cfg.model.remat = policy
    one, two = (train.kept_activations(cfg, b, text_dim=16) for b in (1, 2))
    return two - one
  kept = {p: per_example(p) for p in ("none", "dots", "blocks")}
  assert kept["none"] > 2 * kept["dots"] > 2 * kept["blocks"] > 0, kept
