"""A small video classifier whose features give a Fréchet distance that is
always available (FVD's I3D weights cannot be downloaded here).

Trained (``train``, by evaluation) on the synthetic train split to tell
camera motion and the first object's direction from a 9-frame window at
32px: features that see motion, which is what a video distribution metric
must compare.
"""

import os
import time

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from bidigen import data as data_lib
from bidigen.data import synthetic

SIDE = 32


class VideoClassifier(nn.Module):
  num_camera: int
  num_direction: int
  features: int = 64

  @nn.compact
  def __call__(self, video):
    """video [B, T, 32, 32, 3] in [-1, 1] -> (features, camera, direction
    logits)."""
    x = video
    for width in (16, 32, 64):
      x = nn.Conv(width, (3, 3, 3), padding="SAME")(x)
      x = nn.swish(nn.GroupNorm(num_groups=8)(x))
      x = nn.max_pool(x, (1, 2, 2), (1, 2, 2))
    x = jnp.concatenate([x.mean(axis=(1, 2, 3)),
                         # Motion: mean temporal difference of the features.
                         jnp.abs(x[:, 1:] - x[:, :-1]).mean(axis=(1, 2, 3))],
                        axis=-1)
    feats = nn.Dense(self.features)(x)
    h = nn.swish(feats)
    return (feats, nn.Dense(self.num_camera)(h),
            nn.Dense(self.num_direction)(h))


def to_input(video: np.ndarray) -> np.ndarray:
  """uint8 [..., T, R, R, 3] -> float [-1, 1] at 32px (area average)."""
  r = video.shape[-2]
  f = max(1, r // SIDE)
  v = video.astype(np.float32)
  v = v.reshape(v.shape[:-3] + (r // f, f, r // f, f, 3)).mean(axis=(-4, -2))
  return v / 127.5 - 1


def train(builder, path: str, steps: int, window: int, seed: int = 0):
  """Trains (or loads from ``path``) the classifier on the synthetic
  ``builder``'s train split; returns (uint8 videos [N, T, R, R, 3] ->
  features, test accuracy dict)."""
  model = VideoClassifier(len(synthetic.CAMERA_MOTIONS),
                          len(synthetic.DIRECTIONS) + 1)
  init = model.init(jax.random.key(0),
                    jnp.zeros((1, window, SIDE, SIDE, 3)))

  def labels(batch):
    d = batch["object_direction"][:, 0]
    return batch["camera_motion"], np.where(d < 0, len(synthetic.DIRECTIONS), d)

  def windows(video, rng):
    t = video.shape[1]
    s = rng.integers(0, t - window + 1, len(video))
    return np.stack([v[i:i + window] for v, i in zip(video, s)])

  if os.path.exists(path):
    with open(path, "rb") as f:
      saved = flax.serialization.msgpack_restore(f.read())
    params, accuracy = saved["params"], saved["accuracy"]
  else:
    tx = optax.adam(2e-3)
    params, opt = init, tx.init(init)

    @jax.jit
    def step(params, opt, x, cam, dirn):
      def loss_fn(p):
        _, lc, ld = model.apply(p, x)
        return (optax.softmax_cross_entropy_with_integer_labels(lc, cam).mean()
                + optax.softmax_cross_entropy_with_integer_labels(
                    ld, dirn).mean())
      loss, g = jax.value_and_grad(loss_fn)(params)
      up, opt = tx.update(g, opt, params)
      return optax.apply_updates(params, up), opt, loss

    it = iter(data_lib.make_loader(builder, "train", global_batch_size=16,
                                   seed=seed, shard_index=0,
                                   shard_count=1))
    rng = np.random.default_rng(seed)
    t0 = time.time()
    for i in range(steps):
      b = next(it)
      cam, dirn = labels(b)
      params, opt, loss = step(params, opt,
                               to_input(windows(b["video"], rng)), cam,
                               dirn)
      if (i + 1) % max(1, steps // 4) == 0:
        print(f"  feature classifier: step {i + 1}/{steps} loss "
              f"{float(loss):.3f} ({time.time() - t0:.0f}s)", flush=True)
    test = next(iter(data_lib.make_loader(
        builder, "test", global_batch_size=min(
            64, data_lib.pipeline.num_examples(builder, "test")),
        seed=0, shuffle=False, num_epochs=1, shard_index=0, shard_count=1)))
    cam, dirn = labels(test)
    _, lc, ld = model.apply(params, to_input(windows(test["video"],
                                                           rng)))
    accuracy = {"camera": float(np.mean(np.argmax(lc, -1) == cam)),
                "direction": float(np.mean(np.argmax(ld, -1) == dirn))}
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
      f.write(flax.serialization.msgpack_serialize(
          {"params": jax.device_get(params), "accuracy": accuracy}))
    os.replace(tmp, path)
  apply = jax.jit(lambda p, x: model.apply(p, x)[0])
  return (lambda video: np.asarray(apply(params, to_input(video))),
          accuracy)
