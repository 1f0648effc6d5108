"""A small video classifier whose features give a Fréchet distance that is
always available (FVD's I3D weights cannot be downloaded here).

Trained by evaluation on the synthetic train split to tell camera motion and
the first object's direction from a 9-frame window at 32px: features that
see motion, which is what a video distribution metric must compare.
"""

import flax.linen as nn
import jax.numpy as jnp

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
