"""Training end to end on the tiny config: train -> checkpoint -> resume ->
sample, through the same entry point a user calls."""

import json
import os
import shutil

import imageio.v3 as iio
import jax
import numpy as np
import pytest

from bidigen import sharding
from bidigen import train
from tests.test_cli import run_main


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  from bidigen.data import synthetic
  path = str(tmp_path_factory.mktemp("tfds"))
  synthetic.build(path, "tiny")
  return path


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_cli_train_checkpoint_sample_export(tmp_path, data_dir):
  wd = str(tmp_path / "run")
  proc = run_main("--config=configs/synthetic.py:tiny", "--mode=train",
                  f"--workdir={wd}", f"--config.data.data_dir={data_dir}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "steps/s" in proc.stdout and "ETA" in proc.stdout
  rows = read_metrics(wd)
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
  assert all(np.isfinite(r["loss"]) for r in rows)
  assert [r["phase"] for r in rows] == ["vae"] * 2 + ["diffusion"] * 4
  assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["3", "6"]
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(wd))

  image = os.path.join(str(tmp_path), "f0.png")
  iio.imwrite(image, np.random.default_rng(0).integers(
      0, 255, (48, 64, 3), dtype=np.uint8))
  video = str(tmp_path / "out.mp4")
  proc = run_main("--mode=sample", f"--image={image}",
                  "--prompt=a red ball moves to the left" + " and on" * 30,
                  "--frames_before=4", "--frames_after=4", "--seed=3",
                  f"--output={video}", f"--checkpoint={wd}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  # 7 words + 60 + [CLS] [SEP] = 69 tokens; the tiny config reads 32.
  assert ("bidigen: warning: the prompt is 69 tokens long; the text encoder "
          "reads only the first 32") in proc.stderr
  assert iio.imread(video).shape == (9, 32, 32, 3)

  folder = str(tmp_path / "frames")
  proc = run_main("--mode=sample", f"--image={image}", "--prompt=",
                  "--frames_before=2", "--frames_after=6", "--seed=3",
                  f"--output={folder}", f"--checkpoint={wd}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  names = sorted(os.listdir(folder))
  expected = [f"frame_{o:+04d}.png" for o in range(-2, 7)]
  assert names == sorted(expected + ["contact_sheet.png", ".bidigen.json"])
  assert "frame_-002.png" in names and "frame_+006.png" in names

  exported = str(tmp_path / "model")
  proc = run_main("--config=configs/synthetic.py:tiny", "--mode=export",
                  f"--workdir={wd}", f"--output={exported}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  again = str(tmp_path / "frames_exported")
  proc = run_main("--mode=sample", f"--image={image}", "--prompt=",
                  "--frames_before=2", "--frames_after=6", "--seed=3",
                  f"--output={again}", f"--checkpoint={exported}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  for name in expected:
    np.testing.assert_array_equal(iio.imread(os.path.join(folder, name)),
                                  iio.imread(os.path.join(again, name)))


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, data_dir, tiny_config):
  """A tiny run trained straight through, shared read-only: training is
  most of these tests' time."""
  config = tiny_config.copy_and_resolve_references()
  config.data.data_dir = data_dir
  wd = str(tmp_path_factory.mktemp("straight") / "run")
  train.train(config, wd)
  return config, wd


def test_resume_continues_exactly(tmp_path, straight_run):
  """A run resumed from its step-3 checkpoint logs the same losses as the
  run that went straight through."""
  config, straight_wd = straight_run
  wd = str(tmp_path / "run")
  shutil.copytree(straight_wd, wd)
  straight = read_metrics(wd)
  shutil.rmtree(os.path.join(wd, "checkpoints", "6"))
  with open(os.path.join(wd, "metrics.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in straight[:3])
  train.train(config, wd)
  resumed = read_metrics(wd)
  assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]
  np.testing.assert_allclose([r["loss"] for r in resumed[3:]],
                             [r["loss"] for r in straight[3:]], rtol=1e-5)


def test_training_learns_one_batch_compiling_each_step_once(tiny_config):
  """Overfitting one fixed batch (same clips, windows and noise at every
  step) must bring both phases' losses down by a clear margin, and the EMA
  must follow the UNet's params by its documented decay; each step function
  compiles once."""
  config = tiny_config.copy_and_resolve_references()
  config.train.update(dict(num_steps=22, vae_steps=6, warmup_steps=1,
                           learning_rate=1e-2, vae_learning_rate=5e-3))
  mesh = sharding.make_mesh(config.mesh.axes)
  trainer = train.Trainer(config, mesh, text_dim=16)
  state = trainer.init(jax.random.key(0))
  ema0 = jax.device_get(state.ema)
  rng = np.random.default_rng(0)
  blocks = np.kron(rng.uniform(0, 255, (8, 4, 4, 3)), np.ones((1, 8, 8, 1)))
  video = np.stack([np.roll(blocks, t, axis=2) for t in range(17)], 1)
  batch = sharding.global_batch(mesh, {
      "video": video.astype(np.uint8),
      "text": rng.normal(size=(8, 32, 16)).astype(np.float32),
      "text_mask": np.ones((8, 32), np.float32)})
  losses = []
  for step in range(22):
    before = jax.device_get((state.step, state.ema))
    state, metrics = trainer.step(state, batch, jax.random.key(1), step)
    losses.append(float(metrics["loss"]))
  vae, diff = losses[:6], losses[6:]
  assert vae[-1] < 0.8 * vae[0], vae
  assert diff[-1] < 0.7 * diff[0], diff
  assert int(state.step) == 22
  assert trainer.vae_step._cache_size() == 1
  assert trainer.diffusion_step._cache_size() == 1
  assert float(state.latent_scale) > 0

  # The last step's EMA update, exactly; and over the run the EMA has moved
  # from the initial weights most of the way to the trained ones.
  n = int(before[0]) + 1
  decay = min(config.train.ema_decay, (1 + n) / (10 + n))
  params, ema = jax.device_get((state.params["unet"], state.ema))
  for e, prev, p in zip(*map(jax.tree.leaves, (ema, before[1], params))):
    np.testing.assert_allclose(e, decay * prev + (1 - decay) * p, atol=1e-6)
  dist = lambda a, b: np.sqrt(sum(np.sum((x - y) ** 2) for x, y in zip(
      jax.tree.leaves(a), jax.tree.leaves(b))))
  assert dist(ema, params) < 0.5 * dist(ema0, params)


def test_nan_loss_stops_the_run(tmp_path, data_dir, tiny_config):
  config = tiny_config.copy_and_resolve_references()
  config.data.data_dir = data_dir
  config.train.vae_learning_rate = 1e30
  config.train.warmup_steps = 0
  with pytest.raises(FloatingPointError, match="loss is .* at step"):
    train.train(config, str(tmp_path / "run"))


def test_warm_start_from_an_exported_model(tmp_path, straight_run):
  from bidigen import checkpoints
  config, first = straight_run
  config = config.copy_and_resolve_references()
  cfg, params = train.restore_for_sampling(first)
  exported = str(tmp_path / "model")
  checkpoints.export_model(params, cfg, exported)

  config.train.init_from = exported
  config.train.num_steps = 4
  state = train.train(config, str(tmp_path / "second"))
  rows = read_metrics(str(tmp_path / "second"))
  assert [r["step"] for r in rows] == [3, 4]  # vae_steps=2 are skipped.
  assert all(r["phase"] == "diffusion" for r in rows)
  # The autoencoder is frozen in the diffusion phase: it is the exported one.
  for a, b in zip(jax.tree.leaves(state.params["vae"]),
                  jax.tree.leaves(params["vae"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  np.testing.assert_allclose(float(state.latent_scale),
                             float(params["latent_scale"]))

  config.model.unet.channels = 8
  with pytest.raises(ValueError, match="does not match"):
    train.train(config, str(tmp_path / "third"))
