"""Training end to end on the tiny config: encode -> train -> checkpoint ->
resume -> sample, through the same entry point a user calls. (Training where
TensorFlow, TFDS and transformers are missing: tests/test_distributed.py.)"""

import json
import os
import pathlib
import shutil

import imageio.v3 as iio
import jax
import numpy as np
import pytest

from bidigen import checkpoints
from bidigen import latents
from bidigen import metrics
from bidigen import sharding
from bidigen import train
from tests.test_cli import run_main


@pytest.fixture(scope="module")
def data_dir(tiny_data):
  return tiny_data


def with_stats(config):
  config = config.copy_and_resolve_references()
  config.model.latent_mean = [0.0] * 32
  config.model.latent_std = [1.0] * 32
  return config


def one_device():
  """A mesh of the first CPU device: a batch of one over all eight would
  compute the same frames eight times over, on two cores."""
  return sharding.make_mesh([("data", 1)], jax.devices()[:1])


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.mark.slow
def test_cli_train_checkpoint_sample_export(tmp_path, tiny_run):
  """The shared run was trained by ``--mode=train`` (tests/conftest.py):
  its progress, metrics, checkpoints and events; then sampling from it,
  exporting it, and sampling the export gives the same frames."""
  wd, stdout = tiny_run
  assert "steps/s" in stdout and "ETA" in stdout
  assert "ms/step" in stdout.split("data wait")[1].splitlines()[0]
  rows = read_metrics(wd)
  assert all(r["data_wait_ms"] > 0 for r in rows)  # next() takes time.
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
  assert all(np.isfinite(r["loss"]) for r in rows)
  assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["3", "6"]
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(wd))
  # The model carries the statistics its latents were normalised with.
  cfg, params = checkpoints.restore_for_sampling(wd)
  meta = latents.read_meta(latents.cache_dir(cfg.data))
  np.testing.assert_allclose(cfg.model.latent_mean, meta["latent_mean"],
                             atol=1e-5)
  np.testing.assert_allclose(cfg.model.latent_std, meta["latent_std"],
                             atol=1e-5)
  assert set(params) == {"unet"}
  # The second EMA (config.train.ema_decays[1]) is kept too; asking for a
  # third is a one-line error.
  assert len(cfg.train.ema_decays) == 2
  _, second = checkpoints.restore_for_sampling(wd, ema=1)
  assert jax.tree.structure(second) == jax.tree.structure(params)
  with pytest.raises(ValueError, match="--ema=2: .* keeps 2 EMAs"):
    checkpoints.restore_for_sampling(wd, ema=2)

  image = os.path.join(str(tmp_path), "f0.png")
  iio.imwrite(image, np.random.default_rng(0).integers(
      0, 255, (48, 64, 3), dtype=np.uint8))
  prompt = "--prompt=a red ball moves to the left" + " and on" * 30
  flags = ("--mode=sample", f"--image={image}", prompt, "--frames_before=2",
           "--frames_after=6", "--seed=3", "--solver=dpmpp_2m")
  folder = str(tmp_path / "frames")
  proc = run_main(*flags, f"--output={folder}", f"--checkpoint={wd}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  # 7 words + 60 + [CLS] [SEP] = 69 tokens; the tiny config reads 32.
  assert ("bidigen: warning: the prompt is 69 tokens long; the text encoder "
          "reads only the first 32") in proc.stderr
  names = sorted(os.listdir(folder))
  expected = [f"frame_{o:+04d}.png" for o in range(-2, 7)]
  assert names == sorted(expected + ["contact_sheet.png", ".bidigen.json"])
  assert "frame_-002.png" in names and "frame_+006.png" in names
  assert iio.imread(os.path.join(folder, "frame_+000.png")).shape == (
      64, 64, 3)
  with open(os.path.join(folder, ".bidigen.json")) as f:
    assert json.load(f)["solver"] == "dpmpp_2m"

  exported = str(tmp_path / "model")
  proc = run_main("--config=configs/synthetic.py:tiny", "--mode=export",
                  f"--workdir={wd}", f"--output={exported}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  again = str(tmp_path / "frames_exported")
  proc = run_main(*flags, f"--output={again}", f"--checkpoint={exported}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  for name in expected:
    np.testing.assert_array_equal(iio.imread(os.path.join(folder, name)),
                                  iio.imread(os.path.join(again, name)))


@pytest.fixture(scope="module")
def straight_run(tiny_run, data_dir, tiny_config):
  """The shared tiny run (trained straight through on one device), and the
  config it was trained with."""
  config = tiny_config.copy_and_resolve_references()
  config.data.data_dir = data_dir
  return config, tiny_run[0]


def test_resume_continues_exactly(tmp_path, straight_run):
  """A run resumed from its step-3 checkpoint, here on 8 devices, logs the
  same losses as the run that went straight through on one."""
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


def test_training_without_encoded_latents_says_how_to_encode(tmp_path,
                                                             tiny_config):
  config = tiny_config.copy_and_resolve_references()
  config.data.data_dir = str(tmp_path / "empty")
  with pytest.raises(FileNotFoundError, match="--mode=encode"):
    train.train(config, str(tmp_path / "run"))


def test_latents_encoded_with_another_config_are_refused(tmp_path, data_dir,
                                                         tiny_config):
  config = tiny_config.copy_and_resolve_references()
  config.data.data_dir = data_dir
  config.model.text.max_length = 16
  with pytest.raises(ValueError, match="text_max_length"):
    train.train(config, str(tmp_path / "run"))


def test_encode_is_deterministic_and_stats_normalise(tmp_path, data_dir,
                                                     tiny_config):
  """A second encode of the same clips writes the same latents; the saved
  statistics are the latents' own per-channel mean and std."""
  config = tiny_config.copy_and_resolve_references()
  config.data.data_dir = data_dir
  config.data.latents_dir = str(tmp_path / "again")
  config.data.encode_clips = 8
  latents.encode(config)
  first = latents.make_loader(latents.cache_dir(config.data),
                              global_batch_size=8, seed=0, shuffle=False,
                              num_epochs=1, shard_index=0, shard_count=1)
  a = next(iter(first))
  default = tiny_config.copy_and_resolve_references()
  default.data.data_dir = data_dir
  ref = latents.make_loader(latents.cache_dir(default.data),
                            global_batch_size=8, seed=0, shuffle=False,
                            num_epochs=1, shard_index=0, shard_count=1)
  b = next(iter(ref))
  np.testing.assert_array_equal(a["latents"], b["latents"])
  assert a["latents"].shape == (8, 17, 8, 8, 32)
  meta = latents.read_meta(config.data.latents_dir)
  lat = a["latents"].reshape(-1, 32)
  np.testing.assert_allclose(meta["latent_mean"], lat.mean(0), atol=2e-3)
  np.testing.assert_allclose(meta["latent_std"], lat.std(0), rtol=2e-3)
  assert meta["num_clips"] == 8
  # Motion from the centre frame, F0 (zero there), and what moving F0
  # leaves to correct: less than the plain difference from F0.
  assert a["motion"].shape == (8, 17, 8, 8, 2)
  np.testing.assert_array_equal(a["motion"][:, 8], 0)
  assert np.abs(a["motion"]).mean() > 0.05
  z0 = a["latents"][:, 8:9]
  np.testing.assert_allclose(
      meta["delta_rms"], np.sqrt(np.sum((a["latents"] - z0) ** 2,
                                        axis=(0, 1, 2, 3)) / (8 * 16 * 64)),
      rtol=2e-3)
  assert np.mean(meta["correction_rms"]) < 0.97 * np.mean(meta["delta_rms"])
  for suffix in ("_mirrored", "_reversed"):
    assert a["text" + suffix].shape == a["text"].shape


def test_one_compiled_step_learns_one_batch_and_updates_the_ema(
    tiny_config, optimized_xla):
  """The train state is the UNet's alone, and its step compiles once.
  Overfitting one fixed batch (same clips, windows and noise at every step)
  must bring the loss down by a clear margin, and the EMA must follow the
  UNet's params by its documented decay, warmed up from this run's step 0;
  each of two EMAs by its own decay."""
  config = with_stats(tiny_config)
  # num_steps sets the schedule's decay. Measured: 0.993 -> 0.714 in 48
  # steps (1e-2 diverges to ~0.98; without the update it stays at 0.993).
  config.train.update(dict(num_steps=48, warmup_steps=1, learning_rate=3e-3,
                           ema_decays=(0.999, 0.5)))
  mesh = one_device()
  trainer = train.Trainer(config, mesh, text_dim=16)
  state = trainer.init(jax.random.key(0))
  assert set(vars(state)) == {"step", "params", "opt_state", "ema"}
  assert len(state.ema) == 2
  ema0 = jax.device_get(state.ema[0])
  rng = np.random.default_rng(0)
  blocks = np.kron(rng.normal(size=(8, 4, 4, 32)), np.ones((1, 2, 2, 1)))
  lat = np.stack([np.roll(blocks, t, axis=2) for t in range(17)], 1)
  batch = sharding.global_batch(mesh, {
      "latents": lat.astype(np.float32),
      "text": rng.normal(size=(8, 32, 16)).astype(np.float32),
      "text_mask": np.ones((8, 32), np.float32)})
  losses = []
  for i in range(48):
    before = jax.device_get((state.step, state.ema))
    state, metrics = trainer.step(state, batch, jax.random.key(1))
    losses.append(float(metrics["loss"]))
    if i == 0:  # Step 1: decay min(decay, 2/11) for both EMAs.
      p1, ema1 = jax.device_get((state.params, state.ema))
      for e1 in ema1:
        for e0, e, p in zip(*map(jax.tree.leaves, (ema0, e1, p1))):
          np.testing.assert_allclose(e, 2 / 11 * e0 + 9 / 11 * p, rtol=1e-5,
                                     atol=1e-6)
  assert losses[-1] < 0.8 * losses[0], losses
  assert int(state.step) == 48
  assert trainer.step._cache_size() == 1

  # The last step's update of each EMA, exactly, by its own decay; and over
  # the run the EMA has moved from the initial weights most of the way to
  # the trained ones, the faster one (0.5) further.
  n = int(before[0]) + 1
  params, emas = jax.device_get((state.params, state.ema))
  moved = [not np.array_equal(a, b) for a, b in
           zip(jax.tree.leaves(ema0), jax.tree.leaves(params))]
  assert sum(moved) > 0.5 * len(moved)  # Zero-initialised outputs gate some.
  for ema, prev, d in zip(emas, before[1], config.train.ema_decays):
    decay = min(d, (1 + n) / (10 + n))
    for e, e0, p in zip(*map(jax.tree.leaves, (ema, prev, params))):
      np.testing.assert_allclose(e, decay * e0 + (1 - decay) * p, atol=1e-6)
  dist = lambda a, b: np.sqrt(sum(np.sum((x - y) ** 2) for x, y in zip(
      jax.tree.leaves(a), jax.tree.leaves(b))))
  assert dist(emas[0], params) < 0.5 * dist(ema0, params)
  assert dist(emas[1], params) < 0.5 * dist(emas[0], params)


def test_nan_loss_stops_the_run(tmp_path, data_dir, tiny_config):
  """A copy of the session's latent cache whose latents are NaN: the loss
  is NaN at step 1 and the run stops there. (The data, not the settings,
  go bad: a setting such as the learning rate is a constant of the
  compiled step, and would compile a step of its own.)"""
  from array_record.python import array_record_module
  config = tiny_config.copy_and_resolve_references()
  config.data.data_dir = data_dir
  src = latents.cache_dir(config.data)
  bad = str(tmp_path / "nan_latents")
  shutil.copytree(src, bad, ignore=shutil.ignore_patterns(latents.RECORDS))
  reader = array_record_module.ArrayRecordReader(
      os.path.join(src, latents.RECORDS))
  writer = array_record_module.ArrayRecordWriter(
      os.path.join(bad, latents.RECORDS), "group_size:1")
  for record in reader.read_all():
    clip = latents.from_bytes(record)
    clip["latents"] = np.full_like(clip["latents"], np.nan)
    writer.write(latents.to_bytes(clip))
  writer.close()
  reader.close()
  config.data.latents_dir = bad
  with pytest.raises(FloatingPointError, match="loss is nan at step 1"):
    train.train(config, str(tmp_path / "run"))


def test_warm_start_from_an_exported_model(tmp_path, straight_run):
  config, first = straight_run
  config = config.copy_and_resolve_references()
  cfg, params = checkpoints.restore_for_sampling(first)
  exported = str(tmp_path / "model")
  checkpoints.export_model(params, cfg, exported)

  # Warm start begins at this run's step 0 (no faked step), from the
  # exported EMA as both the params and the EMA.
  text_dim = latents.read_meta(latents.cache_dir(cfg.data))["text_dim"]
  trainer = train.Trainer(cfg, sharding.make_mesh(cfg.mesh.axes), text_dim)
  state = train.warm_start(trainer, jax.random.key(5), exported)
  assert int(state.step) == 0
  for a, b, c in zip(jax.tree.leaves(state.params),
                     jax.tree.leaves(state.ema[-1]),
                     jax.tree.leaves(params["unet"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(c))
    np.testing.assert_array_equal(np.asarray(b), np.asarray(c))

  # A float16 export: about half the bytes, read back as float32 weights
  # equal to the originals rounded to float16.
  half = str(tmp_path / "model16")
  checkpoints.export_model(params, cfg, half, dtype="float16")
  _, loaded = checkpoints.load_model(half)
  for a, c in zip(jax.tree.leaves(loaded["unet"]),
                  jax.tree.leaves(params["unet"])):
    assert a.dtype == np.float32
    np.testing.assert_array_equal(
        a, np.asarray(c).astype(np.float16).astype(np.float32))
  size = lambda p: sum(f.stat().st_size for f in pathlib.Path(p).rglob("*")
                       if f.is_file())
  assert size(half) < 0.7 * size(exported), (size(half), size(exported))

  # config.train.init_from reaches warm_start, which refuses a model of
  # another architecture before anything compiles.
  config.train.init_from = exported
  config.model.unet.channels = 8
  with pytest.raises(ValueError, match="does not match"):
    train.train(config, str(tmp_path / "third"))


@pytest.mark.slow
def test_motion_target_trains_and_samples_with_keyframes(tmp_path, data_dir,
                                                        tiny_config):
  """The "motion" target with the new recipe (Min-SNR, logit-normal noise
  levels, clips played backwards, the pooled text path, a constant rate)
  trains, saves the statistics it generates in, and samples through the
  Generator users get: F0 and a keyframe exactly the images given, motion
  strength an argument of the same program."""
  from bidigen import sample
  config = tiny_config.copy_and_resolve_references()
  config.data.data_dir = data_dir
  config.model.target = "motion"
  config.model.pooled_text = True
  config.train.update(num_steps=2, checkpoint_every=2, min_snr=5.0,
                      noise_levels="logit_normal", reverse_prob=0.5,
                      schedule="constant")
  wd = str(tmp_path / "run")
  train.train(config, wd)
  meta = latents.read_meta(latents.cache_dir(config.data))
  gen = sample.Generator(wd, mesh=one_device())
  np.testing.assert_allclose(
      gen.config.model.residual_rms,
      np.asarray(meta["correction_rms"]) / np.asarray(meta["latent_std"]),
      rtol=1e-4)
  np.testing.assert_allclose(gen.config.model.motion_rms, meta["motion_rms"],
                             rtol=1e-4)
  rng = np.random.default_rng(0)
  image, key = (rng.integers(0, 255, (1, 64, 64, 3), dtype=np.uint8)
                for _ in range(2))
  run = lambda strength: gen(image, ["the camera pans left"],
                             frames_before=4, frames_after=4, seed=0,
                             steps=2, keyframes={3: key},
                             motion_strength=strength)
  a, b = run(1.0), run(0.0)
  assert a.shape == (1, 9, 64, 64, 3) and len(gen._compiled) == 1
  for out in (a, b):
    np.testing.assert_array_equal(out[:, 4], image)
    np.testing.assert_array_equal(out[:, 7], key)
  # The strength reaches the compiled program: F0 moved by the generated
  # motion, or kept in place, gives other frames away from the keyframe.
  assert np.abs(a[:, 0].astype(int) - b[:, 0]).mean() > 0.5
  with pytest.raises(ValueError, match="motion_strength"):
    run(3.0)

  # Output at the photo's own size (twice the model's): the same program
  # family, F0 and the keyframe exactly as given at that size, and frames
  # that are the model's own, shrunk back, where the photo is smooth.
  from bidigen import media
  cat = os.path.join(media.EXAMPLES, "cat.png")
  low, high = (media.load_image(cat, s)[None] for s in (64, 128))
  key_hi = media.resize_frames(high[0, ::-1], 128)
  out = gen(high, ["the camera pans left"], frames_before=4, frames_after=4,
            seed=0, steps=2, keyframes={3: key_hi})
  assert out.shape == (1, 9, 128, 128, 3)
  np.testing.assert_array_equal(out[:, 4], high)
  np.testing.assert_array_equal(out[0, 7], key_hi)
  ref = gen(low, ["the camera pans left"], frames_before=4, frames_after=4,
            seed=0, steps=2, keyframes={3: media.resize_frames(key_hi, 64)})
  shrunk = media.resize_frames(out, 64)
  assert metrics.psnr(shrunk[0, :3], ref[0, :3]).min() > 22
  with pytest.raises(ValueError, match="from the model's 64"):
    gen(low[:, :32, :32], ["x"], frames_before=1, frames_after=1)
  config.train.mirror_prob = 0.5  # Mirrored clips need their own latents.
  with pytest.raises(ValueError, match="mirrored latents"):
    train.train(config, str(tmp_path / "mirror"))


def test_encode_never_replaces_a_folder_it_did_not_write(tmp_path, data_dir,
                                                         tiny_config):
  config = tiny_config.copy_and_resolve_references()
  config.data.data_dir = data_dir
  config.data.latents_dir = str(tmp_path / "mine")
  os.makedirs(config.data.latents_dir)
  keep = os.path.join(config.data.latents_dir, "notes.txt")
  with open(keep, "w") as f:
    f.write("mine")
  with pytest.raises(ValueError, match="not a latent cache .*notes.txt"):
    latents.encode(config)
  assert os.listdir(config.data.latents_dir) == ["notes.txt"]
