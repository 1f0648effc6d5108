"""Speed figures on this machine, next to its own measured matmul peak.

  python -m bidigen.benchmark [--config=configs/synthetic.py] [--repeats=5]

Prints: peak float32 matmul GFLOP/s (jitted 2048x2048 a @ b), the diffusion
train step (s/step, steps/s, XLA's FLOP count and the fraction of peak), and
sampling with the embedded model for 9 and 33 frames (first call with
compilation, then steady state).
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from ml_collections import config_flags  # noqa: E402
import numpy as np  # noqa: E402

config_flags.DEFINE_config_file("config", "configs/synthetic.py",
                                "Config whose train step is timed.")
flags.DEFINE_integer("repeats", 5, "Timed repetitions per figure.")
flags.DEFINE_string("checkpoint", None, "Model to sample with; default: the "
                    "embedded one.")
FLAGS = flags.FLAGS


def timed(fn, repeats):
  jax.block_until_ready(fn())  # Compile and warm up.
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return float(np.median(times))


def flops(jitted, *args) -> float:
  cost = jitted.lower(*args).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return float(cost.get("flops", 0.0))


def peak_matmul(repeats) -> float:
  a = jnp.ones((2048, 2048), jnp.float32)
  f = jax.jit(lambda a, b: a @ b)
  return 2 * 2048**3 / timed(lambda: f(a, a), repeats) / 1e9


def train_step(config, repeats, peak):
  from bidigen import sharding, train
  mesh = sharding.make_mesh(config.mesh.axes)
  trainer = train.Trainer(config, mesh, text_dim=384)
  state = trainer.init(jax.random.key(0))
  b, r = config.train.batch_size, config.data.resolution
  rng = np.random.default_rng(0)
  batch = sharding.global_batch(mesh, {
      "video": rng.integers(0, 255, (b, config.data.num_frames, r, r, 3),
                            dtype=np.uint8),
      "text": rng.normal(size=(b, config.model.text.max_length, 384)).astype(
          np.float32),
      "text_mask": np.ones((b, config.model.text.max_length), np.float32)})
  state = trainer.latent_scale_step(state, batch)
  key = jax.random.key(1)
  n_flops = flops(trainer.diffusion_step, state, batch, key)
  holder = {"state": state}

  def step():
    holder["state"], m = trainer.diffusion_step(holder["state"], batch, key)
    return m
  sec = timed(step, repeats)
  print(f"diffusion train step (batch {b}, {r}px, window "
        f"{config.model.window}): {sec:.3f} s/step = {1 / sec:.2f} steps/s; "
        f"{n_flops / 1e9:.1f} GFLOP/step -> {n_flops / sec / 1e9:.1f} GFLOP/s"
        f" = {100 * n_flops / sec / 1e9 / peak:.0f}% of the matmul peak")


def sampling(checkpoint, repeats):
  from bidigen import media, sample
  t = time.perf_counter()
  gen = sample.Generator(checkpoint)
  print(f"model load: {time.perf_counter() - t:.1f} s")
  image = media.load_image(
      os.path.join(media.EXAMPLES, "red_ball_temple.png"), gen.resolution)
  for side in (4, 16):
    run = lambda: gen(image[None], ["a red ball moves to the right"],
                      frames_before=side, frames_after=side, seed=0)
    t = time.perf_counter()
    run()
    first = time.perf_counter() - t
    sec = timed(run, max(1, repeats // 2))
    print(f"sample {2 * side + 1} frames ({gen.config.sample.steps} DDIM "
          f"steps, guidance on): {sec:.2f} s (first call with compilation "
          f"{first:.1f} s)")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  print(f"devices: {jax.devices()}  cores: {os.cpu_count()}")
  peak = peak_matmul(FLAGS.repeats)
  print(f"peak float32 matmul (jitted 2048x2048 a@b): {peak:.0f} GFLOP/s")
  train_step(FLAGS.config, FLAGS.repeats, peak)
  sampling(FLAGS.checkpoint, FLAGS.repeats)


if __name__ == "__main__":
  app.run(main)
