"""The sampler users call (``sample.Generator``) on the tests' tiny run:
what loading a workdir builds, and that requests reuse one compiled
program per length bucket while keyframes, loops and guidance change."""

import time

import jax
import numpy as np
import pytest

from bidigen import sharding
from bidigen import train


def one_device():
  """A mesh of the first CPU device: a batch of one over all eight would
  compute the same frames eight times over, on two cores."""
  return sharding.make_mesh([("data", 1)], jax.devices()[:1])


@pytest.fixture(scope="module")
def workdir(tiny_run):
  """The shared tiny run (tests/conftest.py), read-only."""
  return tiny_run[0]


def test_loading_a_workdir_builds_no_trainer_and_one_text_encoder(
    workdir, monkeypatch):
  """Sampling from a training workdir reads the EMA weights as saved: no
  trainer, no optimizer, and the text encoder is loaded once."""
  from bidigen import sample
  from bidigen import text

  def refuse(*args, **kwargs):
    raise AssertionError("sampling built training machinery")
  monkeypatch.setattr(train, "Trainer", refuse)
  monkeypatch.setattr(train, "make_optimizer", refuse)
  loads = []
  real = text.load_text_encoder
  monkeypatch.setattr(text, "load_text_encoder",
                      lambda *a, **k: loads.append(a) or real(*a, **k))
  gen = sample.Generator(workdir)
  assert len(loads) == 1
  assert set(gen.params) == {"unet", "autoencoder", "latent_mean",
                             "latent_std", "residual_rms", "motion_rms"}


def test_generator_keyframes_and_loops_reuse_one_program(workdir):
  """Keyframes, loops and plain expansion are one compiled program: a
  request compiles only for new array shapes (buffer, window pairs, known
  frames), so moving a keyframe or switching the loop on does not. Known
  frames come out exactly as given."""
  from bidigen import sample
  gen = sample.Generator(workdir, mesh=one_device())
  rng = np.random.default_rng(0)
  image, other = rng.integers(0, 255, (2, 1, 64, 64, 3), dtype=np.uint8)
  # Perturbed weights, so that what a window knows shows in its frames (the
  # 6-step run's copy F0 whatever they are told).
  gen.params = dict(gen.params, unet=jax.device_put(jax.tree.map(
      lambda p: p + 0.02 * rng.normal(size=p.shape).astype(p.dtype),
      jax.device_get(gen.params["unet"])), sharding.replicated(gen.mesh)))
  run = lambda **kw: gen(image, ["a red ball moves left"], frames_before=6,
                         frames_after=9, seed=1, steps=2, **kw)
  plain, looped = run(), run(loop=True)
  programs = lambda: sum(f._cache_size() for f in gen._compiled.values())
  assert programs() == 1
  assert looped.shape == plain.shape == (1, 16, 64, 64, 3)
  np.testing.assert_array_equal(looped[:, 6], image)
  # The loop closes its seam with a window across it: the ends change.
  assert np.abs(looped[:, 0].astype(int) - plain[:, 0]).mean() > 1
  a, b = run(keyframes={-5: other}), run(keyframes={-6: other[0]})
  assert programs() == 2
  np.testing.assert_array_equal(a[:, 1], other)
  np.testing.assert_array_equal(b[:, 0], other)
  np.testing.assert_array_equal(a[:, 6], image)
  with pytest.raises(ValueError, match="offset in"):
    run(keyframes={12: other})


def test_generator_compiles_once_per_length_bucket(workdir):
  """Frame counts within a bucket (expansion steps rounded up to a power of
  two) and any guidance scale reuse one compiled sampler, and give the
  frames an exact-length program gives."""
  from bidigen import expansion
  from bidigen import sample
  from tests import test_sample
  gen = sample.Generator(workdir, mesh=one_device())
  image = np.random.default_rng(0).integers(0, 255, (1, 64, 64, 3),
                                            dtype=np.uint8)
  run = lambda before, after: gen(image, ["a red ball moves left"],
                                  frames_before=before, frames_after=after,
                                  seed=1, steps=2)
  c, d = run(9, 5), run(6, 9)  # One expansion step each: one bucket.
  assert c.shape[1] == 15 and d.shape[1] == 16 and len(gen._compiled) == 1
  assert all(f._cache_size() == 1 for f in gen._compiled.values())
  np.testing.assert_array_equal(c[:, 3:], d[:, :12])
  cfg = gen.config
  exact = test_sample.make_sampler(
      gen.mesh, unet=gen.unet, batch=1, window=cfg.model.window,
      context=cfg.model.context_frames, frames_before=9, frames_after=5,
      steps=2, guidance=float(cfg.sample.guidance))
  text, mask = gen.encoder.encode(["a red ball moves left"])
  null, null_mask = gen.encoder.encode([""])
  want = np.asarray(exact(gen.params, image.astype(np.float32) / 127.5 - 1,
                          expansion.sample_keys(1, 1), text, mask, null,
                          null_mask), int)
  assert want.shape == c.shape
  assert np.abs(want - c.astype(int)).max() <= 1
  # Another guidance scale is an argument of the same program: nothing
  # compiles, the scale reaches it, and the frames are those an exact
  # program gives for it. Perturbed weights make the prompt matter (the
  # 6-step run's barely tell it from the empty one's).
  rng = np.random.default_rng(2)
  gen.params = dict(gen.params, unet=jax.device_put(jax.tree.map(
      lambda p: p + 0.02 * rng.normal(size=p.shape).astype(p.dtype),
      jax.device_get(gen.params["unet"])), sharding.replicated(gen.mesh)))
  guided, e = (gen(image, ["a red ball moves left"], frames_before=9,
                   frames_after=5, seed=1, steps=2, guidance=g)
               for g in (cfg.sample.guidance, 0.0))
  assert len(gen._compiled) == 1
  assert all(f._cache_size() == 1 for f in gen._compiled.values())
  assert np.abs(e.astype(int) - guided).mean() > 1
  want = np.asarray(exact(gen.params, image.astype(np.float32) / 127.5 - 1,
                          expansion.sample_keys(1, 1), text, mask, null,
                          null_mask, guidance=0.0), int)
  assert np.abs(want - e.astype(int)).max() <= 1


def test_a_request_reports_each_expansion_step_once_compiled(workdir,
                                                             capsys):
  """``progress`` hears every expansion step in order, from inside the one
  compiled program (a call without it reuses that program);
  sample.progress_lines prints each step once, however often it is told."""
  from bidigen import expansion
  from bidigen import sample
  gen = sample.Generator(workdir, mesh=one_device())
  image = np.random.default_rng(0).integers(0, 255, (1, 64, 64, 3),
                                            dtype=np.uint8)
  heard = []
  run = lambda **kw: gen(image, ["a red ball moves left"], frames_before=20,
                         frames_after=12, seed=1, steps=2, **kw)
  with_progress = run(progress=lambda k, n: heard.append((k, n)))
  cfg = gen.config.model
  n = expansion.plan_windows([0], 20, 12, cfg.window,
                             cfg.context_frames)[0].valid.shape[0]
  assert n > 2 and heard == [(k, n) for k in range(1, n + 1)]
  np.testing.assert_array_equal(run(), with_progress)
  assert all(f._cache_size() == 1 for f in gen._compiled.values())
  assert expansion.progress is None  # Set for one call only.
  capsys.readouterr()
  lines = sample.progress_lines(time.time(), every=0.0)
  for k in (1, 1, 2, 2, 1, 3):  # Told twice (two devices), or late.
    lines(k, 3)
  printed = capsys.readouterr().out.splitlines()
  assert [line.split(",")[0] for line in printed] == [
      f"  expansion step {k}/3" for k in (1, 2, 3)]
