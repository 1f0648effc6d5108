"""Training on a mixture of latent caches: grain's weighted, per-process
draws, the pooled latent statistics a model is saved with, and the
sources of configs/mixture.py."""

import os

import numpy as np
import pytest

from bidigen import checkpoints
from bidigen import latents
from bidigen import train
from tests.test_cli import ROOT
from tests.test_cli import run_main


def write_cache(path: str, value: float, count: int) -> None:
  """A latent cache in the format --mode=encode writes, whose clip i holds
  latents value + i / 1000 (so a record says which cache and clip it is)."""
  from array_record.python import array_record_module
  os.makedirs(path)
  writer = array_record_module.ArrayRecordWriter(
      os.path.join(path, latents.RECORDS), "group_size:1")
  for i in range(count):
    writer.write(latents.to_bytes({
        "latents": np.full((3, 1, 1, 2), value + i / 1000, np.float32),
        "text": np.zeros((2, 4), np.float16),
        "text_mask": np.ones(2, np.uint8)}))
  writer.close()


def test_mixture_draws_by_weight_deterministically_per_process(tmp_path):
  """grain's mixing of two caches: about the configured share from each,
  each cache's records all drawn before any repeats, the same stream for the
  same seed, and two processes reading the rows one process would."""
  a, b = str(tmp_path / "a"), str(tmp_path / "b")
  write_cache(a, 0.0, 40)
  write_cache(b, 1.0, 10)

  def rows(seed, shard_index=0, shard_count=1, batches=40):
    loader = latents.make_mixture_loader(
        [a, b], [0.75, 0.25], seed=seed, global_batch_size=8,
        shard_index=shard_index, shard_count=shard_count)
    it = iter(loader)
    return np.concatenate([next(it)["latents"][:, 0, 0, 0, 0]
                           for _ in range(batches)])

  one = rows(0)
  from_b = one >= 1
  assert abs(from_b.mean() - 0.25) < 0.03, from_b.mean()
  # The first 40 draws from a and the first 10 from b are each cache's
  # records once (shuffled, not in file order).
  first_a = np.round(one[~from_b][:40] * 1000).astype(int)
  assert sorted(first_a) == list(range(40))
  assert list(first_a) != list(range(40))
  assert sorted(np.round((one[from_b][:10] - 1) * 1000).astype(int)) == list(
      range(10))
  np.testing.assert_array_equal(one, rows(0))
  assert not np.array_equal(one, rows(1))
  # Process i of 2 reads rows 4i..4i+3 of each global batch of 8.
  p0, p1 = rows(0, 0, 2), rows(0, 1, 2)
  both = np.concatenate([p0.reshape(-1, 4), p1.reshape(-1, 4)], 1).ravel()
  np.testing.assert_array_equal(both, one)


def test_pooled_stats_are_the_weighted_mixture_s():
  rng = np.random.default_rng(0)
  x = rng.normal(1.0, 2.0, (3000, 4))
  y = rng.normal(-2.0, 0.5, (1000, 4))
  meta = lambda z: {"latent_mean": z.mean(0), "latent_std": z.std(0)}
  mean, std = latents.pooled_stats([meta(x), meta(y)], [0.6, 0.2])
  # Each row weighted by its cache's share (0.75 / 0.25) over its rows.
  w = np.r_[np.full(len(x), 0.75 / len(x)), np.full(len(y), 0.25 / len(y))]
  z = np.concatenate([x, y])
  want_mean = w @ z
  np.testing.assert_allclose(mean, want_mean, rtol=1e-9)
  np.testing.assert_allclose(std, np.sqrt(w @ (z - want_mean) ** 2),
                             rtol=1e-9)


def test_mixture_sources_are_checked(tiny_config):
  import ml_collections
  data = tiny_config.data.copy_and_resolve_references()
  one = data.to_dict()
  data.sources = ml_collections.ConfigDict({
      "a": dict(one, weight=1.0), "b": dict(one, weight=0.0)})
  assert list(latents.sources(data)) == ["a"]  # Weight 0 leaves b out.
  data.sources.b.resolution = 128
  data.sources.b.weight = 1.0
  with pytest.raises(ValueError, match="sources.b.resolution=128 differs"):
    latents.sources(data)
  data.sources.b.resolution = data.resolution
  data.sources.a.weight = -1.0
  with pytest.raises(ValueError, match="sources.a.weight must be >= 0"):
    latents.sources(data)
  data.sources.a.weight = 0.0
  data.sources.b.weight = 0.0
  with pytest.raises(ValueError, match="no source has a weight above 0"):
    latents.sources(data)


@pytest.mark.slow
def test_training_on_a_mixture_saves_its_pooled_stats(tmp_path, tiny_data,
                                                      tiny_config):
  """Encode and train through a mixture config: each source encoded into
  its own cache (the session's is kept as it is), and the model saved with
  the statistics of the mixture it trained on."""
  import ml_collections
  config = tiny_config.copy_and_resolve_references()
  config.data.data_dir = tiny_data
  config.train.num_steps = 2
  config.train.checkpoint_every = 2
  one = config.data.to_dict()
  second = str(tmp_path / "second")
  config.data.sources = ml_collections.ConfigDict({
      "first": dict(one, weight=3.0),
      "second": dict(one, weight=1.0, latents_dir=second, encode_clips=4)})
  first = latents.cache_dir(config.data)
  before = os.path.getmtime(os.path.join(first, latents.META))
  assert latents.encode(config) == [first, second]
  assert os.path.getmtime(os.path.join(first, latents.META)) == before
  metas = [latents.read_meta(p) for p in (first, second)]
  assert metas[1]["num_clips"] == 4
  wd = str(tmp_path / "run")
  train.train(config, wd)
  cfg, _ = checkpoints.restore_for_sampling(wd)
  mean, std = latents.pooled_stats(metas, [3.0, 1.0])
  np.testing.assert_allclose(cfg.model.latent_mean, mean, atol=2e-6)
  np.testing.assert_allclose(cfg.model.latent_std, std, atol=2e-6)
  assert not np.allclose(cfg.model.latent_mean, metas[0]["latent_mean"],
                         atol=1e-4)


def test_mixture_config_sources_follow_the_top_level(tmp_path):
  """configs/mixture.py through the flags a user passes: three sources with
  their weights; data_dir set once reaches each source's."""
  proc = run_main("--config=configs/mixture.py", "--mode=encode",
                  f"--config.data.data_dir={tmp_path}/nope",
                  "--config.data.sources.synthetic.weight=0",
                  "--config.data.sources.camera.weight=0",
                  "--config.data.sources.clips.manual_dir="
                  f"{tmp_path}/no_clips")
  # Only the clips source is left, and it says where its videos are missing.
  assert proc.returncode != 0
  assert f"{tmp_path}/no_clips" in proc.stderr.splitlines()[-1], proc.stderr
  import importlib.util
  spec = importlib.util.spec_from_file_location(
      "mixture_cfg", os.path.join(ROOT, "configs", "mixture.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.data.data_dir = str(tmp_path)
  srcs = latents.sources(config.data)
  assert {k: w for k, (_, w) in srcs.items()} == module.WEIGHTS
  assert {s.data_dir for s, _ in srcs.values()} == {str(tmp_path)}
  assert srcs["camera"][0].manual_dir == srcs["clips"][0].manual_dir
  assert config.model.text.max_length == 64 and config.eval.data == "clips"
