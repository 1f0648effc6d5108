"""What the model generates (bidigen.motion): the targets invert exactly,
the warp is OpenCV's, and pixels nothing changed stay the user's."""

import jax.numpy as jnp
import numpy as np
import pytest

from bidigen import latents
from bidigen import metrics
from bidigen import motion


def _clip(rng, b=2, t=5, h=6, c=4):
  lat = rng.normal(size=(b, t, h, h, c)).astype(np.float32)
  mot = rng.uniform(-1.5, 1.5, (b, t, h, h, 2)).astype(np.float32)
  mot[:, t // 2] = 0
  return lat, mot


@pytest.mark.parametrize("target", motion.TARGETS)
def test_targets_invert_exactly(target):
  rng = np.random.default_rng(0)
  lat, mot = _clip(rng)
  anchor = lat[:, 2]
  kw = dict(target=target, residual_rms=rng.uniform(0.5, 2, 4).astype(
      np.float32), motion_rms=np.float32(0.7))
  x = motion.to_model(lat, mot, anchor, **kw)
  assert x.shape[-1] == motion.channels(target, 4)
  back, m = motion.from_model(x, anchor, **kw)
  np.testing.assert_allclose(back, lat, atol=1e-5)
  if target == "motion":
    np.testing.assert_allclose(m, mot, atol=1e-6)
    # F0 is all zeros: no motion and nothing to correct.
    np.testing.assert_allclose(x[:, 2], 0, atol=1e-6)
  elif target == "residual":
    np.testing.assert_allclose(x[:, 2], 0, atol=1e-6)
  with pytest.raises(ValueError, match="config.model.target"):
    motion.check_target("frames")


def test_warp_is_opencvs_bilinear_with_edges_repeated():
  rng = np.random.default_rng(1)
  img = rng.uniform(0, 255, (20, 24, 3)).astype(np.float32)
  fl = rng.uniform(-4, 4, (20, 24, 2)).astype(np.float32)
  from scipy import ndimage
  ys, xs = np.mgrid[0:20, 0:24].astype(np.float32)
  coords = [ys + fl[..., 1], xs + fl[..., 0]]
  want = np.stack([ndimage.map_coordinates(img[..., c], coords, order=1,
                                           mode="nearest")
                   for c in range(3)], -1)
  got = np.asarray(motion.warp(jnp.asarray(img), jnp.asarray(fl)))
  np.testing.assert_allclose(got, want, atol=1e-3)
  # OpenCV's remap (the metrics' and the labels' warp) agrees up to its
  # fixed-point weights (1/32 of a pixel).
  np.testing.assert_allclose(got, metrics.warp(img, fl), atol=255 / 32)
  # Batched the way the sampler calls it: one image, many flows.
  many = np.asarray(motion.warp(jnp.asarray(img)[None],
                                jnp.stack([fl, -fl])))
  np.testing.assert_allclose(many[1], motion.warp(img, -fl), atol=1e-3)


def test_motion_labels_move_f0_onto_the_frame():
  """A frame that is F0 shifted right by 8 pixels: its label says each cell
  comes from 1 latent cell (8 px) to the left in F0, and F0 warped by the
  label upsampled to pixels gives the frame back away from the edge."""
  rng = np.random.default_rng(2)
  base = np.kron(rng.uniform(0, 255, (16, 20, 3)), np.ones((8, 8, 1)))
  base = np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
  f0 = base[:, 16:144]
  moved = base[:, 8:136]  # The camera panned left: content moves right.
  m = metrics.motion_from(np.stack([moved, f0]), f0, factor=8)
  np.testing.assert_array_equal(m[1], 0)  # F0's own label: exactly zero.
  inner = m[0, 2:-2, 2:-2]
  np.testing.assert_allclose(np.median(inner[..., 0]), -1.0, atol=0.1)
  np.testing.assert_allclose(np.median(inner[..., 1]), 0.0, atol=0.1)
  px = np.asarray(motion.upsample_flow(jnp.asarray(m[0]), 128))
  back = np.asarray(motion.warp(jnp.asarray(f0, jnp.float32),
                                jnp.asarray(px)))
  assert metrics.psnr(back[16:-16, 16:-16].round().astype(np.uint8),
                      moved[16:-16, 16:-16]) > 30


def test_unchanged_pixels_stay_the_users():
  """With no motion and no correction, every frame is F0 to the pixel
  (whatever the decoder does); with motion alone it is F0 moved in pixel
  space; the latent target instead decodes every frame."""
  rng = np.random.default_rng(3)
  f0 = rng.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  anchor = rng.normal(size=(2, 4, 4, 5)).astype(np.float32)
  decode = lambda z: jnp.tanh(jnp.repeat(jnp.repeat(
      z[..., :3], 8, -3), 8, -2))  # Any decoder: it must cancel.
  kw = dict(residual_rms=np.float32(0.5), motion_rms=np.float32(2.0))
  still = motion.pixels(decode, jnp.zeros((2, 3, 4, 4, 5)), f0, anchor,
                        target="residual", **kw)
  np.testing.assert_allclose(still, np.broadcast_to(f0[:, None], still.shape),
                             atol=1e-6)
  x = np.zeros((2, 3, 4, 4, 7), np.float32)
  x[..., 0] = 0.25  # 0.5 latent cells right: 4 pixels at 32 px.
  out = np.asarray(motion.pixels(decode, x, f0, anchor, target="motion",
                                 **kw))
  want = metrics.warp(f0[0], np.broadcast_to(np.float32([4, 0]),
                                             (32, 32, 2)).copy())
  np.testing.assert_allclose(out[0, 1], want, atol=2 / 32)
  # The motion strength scales it: 0 is F0 in place.
  out0 = np.asarray(motion.pixels(decode, x, f0, anchor, target="motion",
                                  strength=0.0, **kw))
  np.testing.assert_allclose(out0[:, 1], f0, atol=1e-6)
  lat = motion.pixels(decode, x[..., :5], f0, anchor, target="latent", **kw)
  assert np.abs(np.asarray(lat)[:, 0] - f0).mean() > 0.1

  # F0 at twice the decoder's size: frames come out at F0's size, F0's own
  # pixels where nothing changed, moved at that size (8 px at 64 px).
  big = rng.uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)
  still = motion.pixels(decode, jnp.zeros((2, 3, 4, 4, 5)), big, anchor,
                        target="residual", **kw)
  np.testing.assert_allclose(still, np.broadcast_to(big[:, None], still.shape),
                             atol=1e-6)
  out = np.asarray(motion.pixels(decode, x, big, anchor, target="motion",
                                 **kw))
  assert out.shape == (2, 3, 64, 64, 3)
  want = metrics.warp(big[0], np.broadcast_to(np.float32([8, 0]),
                                              (64, 64, 2)).copy())
  np.testing.assert_allclose(out[0, 1], want, atol=2 / 32)


def test_captions_swap_direction_words():
  assert (latents.swap_words("The camera pans left over a cat", latents.MIRRORED)
          == "The camera pans right over a cat")
  assert (latents.swap_words("Left of it, a ball moves to the right",
                             latents.MIRRORED)
          == "Right of it, a ball moves to the left")
  rev = latents.swap_words("the camera zooms in and tilts up; a sign falls",
                           latents.REVERSED)
  assert rev == "the camera zooms out and tilts down; a sign rises"
  # Only whole words: "uplifting" and "in a" are not directions.
  assert (latents.swap_words("an uplifting walk in a park", latents.REVERSED)
          == "an uplifting walk in a park")


def test_pooled_rms_weights_as_training_draws():
  got = motion.pooled_rms([[1.0, 2.0], [3.0, 2.0]], [3, 1])
  np.testing.assert_allclose(got, [np.sqrt(0.75 + 2.25), 2.0])


def test_augment_reverses_or_mirrors_clips_with_their_captions():
  """Played backwards: frames and motion in reverse order (F0 stays the
  centre), the reversed caption. Mirrored: the mirrored clip's own latents,
  motion flipped with x negated, the mirrored caption. Never both."""
  import jax
  from bidigen import train
  rng = np.random.default_rng(4)
  b, t, h = 64, 5, 3
  batch = {k: rng.normal(size=s).astype(np.float32) for k, s in (
      ("latents", (b, t, h, h, 4)), ("latents_mirrored", (b, t, h, h, 4)),
      ("motion", (b, t, h, h, 2)), ("text", (b, 2, 3)),
      ("text_mirrored", (b, 2, 3)), ("text_reversed", (b, 2, 3)),
      ("text_mask", (b, 2)), ("text_mask_mirrored", (b, 2)),
      ("text_mask_reversed", (b, 2)))}
  rev = train.augment(batch, jax.random.key(0), mirror_prob=0.0,
                      reverse_prob=1.0)
  np.testing.assert_array_equal(rev["latents"], batch["latents"][:, ::-1])
  np.testing.assert_array_equal(rev["motion"], batch["motion"][:, ::-1])
  np.testing.assert_array_equal(rev["text"], batch["text_reversed"])
  mir = train.augment(batch, jax.random.key(0), mirror_prob=1.0,
                      reverse_prob=0.0)
  np.testing.assert_array_equal(mir["latents"], batch["latents_mirrored"])
  np.testing.assert_array_equal(mir["motion"][..., 0],
                                -batch["motion"][:, :, :, ::-1, 0])
  np.testing.assert_array_equal(mir["text_mask"],
                                batch["text_mask_mirrored"])
  half = train.augment(batch, jax.random.key(1), mirror_prob=0.5,
                       reverse_prob=0.5)
  mirrored = np.all(half["latents"] == batch["latents_mirrored"],
                    axis=(1, 2, 3, 4))
  reversed_ = np.all(half["latents"] == batch["latents"][:, ::-1],
                     axis=(1, 2, 3, 4))
  assert (mirrored ^ reversed_).all() and 10 < mirrored.sum() < 54
  np.testing.assert_array_equal(half["text"][reversed_],
                                batch["text_reversed"][reversed_])
