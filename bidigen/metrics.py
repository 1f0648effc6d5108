"""Video metrics for evaluation: pixels, flow, distributions, prompt adherence.

Pure NumPy/OpenCV functions on uint8 frames [..., H, W, 3], so each one can be
checked on clips with a known answer.
"""

import cv2
import numpy as np
from scipy import linalg
from skimage import metrics as skm


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """PSNR in dB over the last three axes (identical frames give 100)."""
  err = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2,
                axis=(-3, -2, -1))
  return np.where(err > 0, 10 * np.log10(255.0 ** 2 / np.maximum(err, 1e-10)),
                  100.0)


def ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """SSIM per frame over the last three axes (skimage, 7x7 windows)."""
  lead = a.shape[:-3]
  fa = a.reshape((-1,) + a.shape[-3:])
  fb = b.reshape((-1,) + b.shape[-3:])
  out = [skm.structural_similarity(x, y, channel_axis=-1, data_range=255)
         for x, y in zip(fa, fb)]
  return np.asarray(out).reshape(lead)


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
  """Fréchet distance between Gaussians fitted to feature sets [N, D]."""
  mu1, mu2 = x.mean(0), y.mean(0)
  s1 = np.atleast_2d(np.cov(x, rowvar=False))
  s2 = np.atleast_2d(np.cov(y, rowvar=False))
  covmean = linalg.sqrtm(s1 @ s2)
  if not np.isfinite(covmean).all():  # Near-singular: regularise.
    eps = np.eye(len(s1)) * 1e-6
    covmean = linalg.sqrtm((s1 + eps) @ (s2 + eps))
  covmean = np.real(covmean)
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2)
               - 2 * np.trace(covmean))


# --- Optical flow (OpenCV DIS) ---------------------------------------------

def flow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Dense flow [H, W, 2] (pixels) taking frame a to frame b."""
  dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
  ga = cv2.cvtColor(np.ascontiguousarray(a), cv2.COLOR_RGB2GRAY)
  gb = cv2.cvtColor(np.ascontiguousarray(b), cv2.COLOR_RGB2GRAY)
  return dis.calc(ga, gb, None)


def clip_flows(video: np.ndarray, factor: int = 1) -> np.ndarray:
  """Flow t -> t+1 of clips [B, T, H, W, 3] -> [B, T-1, H/f, W/f, 2], area
  averaged and scaled to a grid ``factor`` times coarser (the latents').

  Training's flow regularisation computes it on the fly on the host: DIS
  at these sizes costs milliseconds per clip, far below a step, and any
  dataset (synthetic or prepared video) gets it without re-preparing.
  """
  b, t, h, w, _ = video.shape
  out = np.stack([np.stack([flow(c[i], c[i + 1]) for i in range(t - 1)])
                  for c in video])
  out = out.reshape(b, t - 1, h // factor, factor, w // factor, factor, 2)
  return (out.mean(axis=(3, 5)) / factor).astype(np.float32)


def motion_from(frames: np.ndarray, ref: np.ndarray,
                factor: int = 1) -> np.ndarray:
  """Where each pixel of frames [T, H, W, 3] comes from in ``ref``
  (frame(p) ~ ref(p + m(p))): [T, H/f, W/f, 2], area averaged and scaled
  to a grid ``factor`` times coarser (the latents'). A frame equal to
  ``ref`` gets exactly zero: the label of "nothing moved"."""
  t, h, w, _ = frames.shape
  out = np.stack([np.zeros((h, w, 2), np.float32) if np.array_equal(f, ref)
                  else flow(f, ref) for f in frames])
  out = out.reshape(t, h // factor, factor, w // factor, factor, 2)
  return (out.mean(axis=(2, 4)) / factor).astype(np.float32)


def warp(frame: np.ndarray, fl: np.ndarray) -> np.ndarray:
  """Samples ``frame`` at p + fl(p): warps frame b back onto a when fl is
  the flow a -> b."""
  h, w = fl.shape[:2]
  gx, gy = np.meshgrid(np.arange(w, dtype=np.float32),
                       np.arange(h, dtype=np.float32))
  return cv2.remap(frame, gx + fl[..., 0], gy + fl[..., 1],
                   cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def warp_errors(frames: np.ndarray) -> np.ndarray:
  """Mean absolute error (0-1) of each next frame warped onto the previous
  one by their flow: [T] -> [T - 1]. Low means motion a flow explains."""
  out = []
  for a, b in zip(frames[:-1], frames[1:]):
    back = warp(b, flow(a, b)).astype(np.float32)
    out.append(np.mean(np.abs(back - a.astype(np.float32))) / 255.0)
  return np.asarray(out)


def flow_epe(frames: np.ndarray, truth: np.ndarray) -> np.ndarray:
  """End-point error (px) between consecutive-frame flows of generated and
  ground-truth frames: [T] -> [T - 1]."""
  return np.asarray([
      np.mean(np.linalg.norm(flow(a, b) - flow(c, d), axis=-1))
      for a, b, c, d in zip(frames[:-1], frames[1:], truth[:-1], truth[1:])])


def seam_ratio(errors: np.ndarray, centre: int) -> float:
  """Warp error of the two steps touching F0 (index ``centre`` of the
  frames) over that of the other steps: about 1 when F0 shows no jump."""
  at = [centre - 1, centre]
  rest = np.delete(errors, at)
  return float(np.mean(errors[at]) / max(np.mean(rest), 1e-6))


def extrapolate(prev: np.ndarray, last: np.ndarray, count: int) -> np.ndarray:
  """The linear-flow baseline: the motion prev -> last continued for
  ``count`` frames (each new frame is ``last`` warped by k times it)."""
  fl = flow(last, prev)  # Where each pixel of `last` came from.
  return np.stack([warp(last, k * fl) for k in range(1, count + 1)])


def interpolate(a: np.ndarray, b: np.ndarray, count: int) -> np.ndarray:
  """The flow-interpolation baseline: ``count`` frames between a and b,
  each a blend of a and b warped towards it along the flows both ways
  (the linear-motion approximation of the flow at time t, as in Super
  SloMo, Jiang et al. 2018)."""
  f_ab, f_ba = flow(a, b), flow(b, a)
  out = []
  for k in range(1, count + 1):
    t = k / (count + 1)
    f_ta = -(1 - t) * t * f_ab + t * t * f_ba
    f_tb = (1 - t) ** 2 * f_ab - t * (1 - t) * f_ba
    mix = ((1 - t) * warp(a, f_ta).astype(np.float32)
           + t * warp(b, f_tb).astype(np.float32))
    out.append(np.clip(np.round(mix), 0, 255).astype(np.uint8))
  return np.stack(out)


def sharpness(frames: np.ndarray) -> np.ndarray:
  """Mean gradient magnitude of each frame's luminance (central
  differences), over the last three axes: blur lowers it, noise raises it."""
  y = frames.astype(np.float32) @ np.float32([0.299, 0.587, 0.114])
  gy, gx = np.gradient(y, axis=(-2, -1))
  return np.sqrt(gx ** 2 + gy ** 2).mean(axis=(-2, -1))


def colour_drift(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """How far the mean colours of frames a and b are apart, in levels of
  255 (the mean over R, G, B of the absolute difference of the channel
  means), over the last three axes."""
  mean = lambda x: x.astype(np.float64).mean(axis=(-3, -2))
  return np.abs(mean(a) - mean(b)).mean(-1)


def loop_seam(frames: np.ndarray) -> float:
  """How visible a loop's seam is: the difference from the last frame back
  to the first over the mean difference of consecutive frames (about 1:
  no seam; a clip that does not loop reads well above)."""
  x = frames.astype(np.float32)
  steps = np.abs(np.diff(x, axis=0)).mean()
  return float(np.abs(x[-1] - x[0]).mean() / max(steps, 1e-6))


# Camera motions a global flow can show, one pair per axis of motion; a
# combination is one of each pair at most, in this order ("pan_left+zoom_in").
CAMERA_AXES = (("pan_left", "pan_right"), ("pan_up", "pan_down"),
               ("zoom_in", "zoom_out"), ("rotate_cw", "rotate_ccw"))


def camera_scores(fl: np.ndarray) -> dict[str, float]:
  """How strongly a flow [H, W, 2] (a -> b) shows each camera motion, in px.

  Pans: the median flow (the camera moves against the content). Zoom and
  roll: the median scale and angle by which the flow, less that pan, moves
  pixels about the centre, as the motion they give at twice the median
  radius (about the edge, relative to the centre). Each score reads one axis
  of a combined motion, and a roll however large reads as no zoom. A camera
  rolling clockwise turns the content anticlockwise on screen (y is down).
  """
  h, w = fl.shape[:2]
  dx, dy = float(np.median(fl[..., 0])), float(np.median(fl[..., 1]))
  gx, gy = np.meshgrid(np.arange(w) - (w - 1) / 2, np.arange(h) - (h - 1) / 2)
  z = gx + 1j * gy
  far = np.abs(z) >= 2  # Near the centre a ratio is noise.
  ratio = (z + (fl[..., 0] - dx) + 1j * (fl[..., 1] - dy))[far] / z[far]
  r = float(np.median(np.abs(z[far])))
  div = 2 * r * (float(np.median(np.abs(ratio))) - 1)
  curl = 2 * r * float(np.median(np.angle(ratio)))  # Clockwise on screen.
  return {"pan_left": dx, "pan_right": -dx, "pan_up": dy, "pan_down": -dy,
          "zoom_in": div, "zoom_out": -div, "rotate_cw": -curl,
          "rotate_ccw": curl}


def classify_camera(scores: dict[str, float], threshold: float = 0.75,
                    combined: bool = False) -> str:
  """The strongest motion above ``threshold`` px ("static" if none), or with
  ``combined`` every axis's motion above it, joined by "+"."""
  if not combined:
    best = max(scores, key=scores.get)
    return best if scores[best] > threshold else "static"
  parts = [max(axis, key=scores.get) for axis in CAMERA_AXES]
  return "+".join(p for p in parts if scores[p] > threshold) or "static"


def camera_class(frames_a: np.ndarray, frames_b: np.ndarray,
                 threshold: float = 0.75, combined: bool = False) -> str:
  """Camera motion a -> b read from the global flow: static, pan_* (the
  camera's direction, opposite to the content's), zoom_in/out or
  rotate_cw/ccw; with ``combined``, e.g. "pan_left+zoom_in"."""
  return classify_camera(camera_scores(flow(frames_a, frames_b)), threshold,
                         combined)


# --- Prompt adherence: objects tracked by colour ---------------------------

def track_colour(frames: np.ndarray, rgb, tolerance: float = 70.0,
                 min_pixels: int = 3) -> np.ndarray:
  """Centroid (x, y) in pixels of the pixels near colour ``rgb`` in each
  frame [T, H, W, 3] -> [T, 2]; NaN where the object is not found."""
  d = np.linalg.norm(frames.astype(np.float32) - np.asarray(rgb, np.float32),
                     axis=-1)
  out = np.full((len(frames), 2), np.nan)
  for t, m in enumerate(d < tolerance):
    if m.sum() >= min_pixels:
      ys, xs = np.nonzero(m)
      out[t] = xs.mean(), ys.mean()
  return out


UNIT = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0),
        "down": (0.0, 1.0)}


def direction_correct(track: np.ndarray, direction: str,
                      min_move: float = 1.0) -> bool:
  """Did the tracked object move ``direction`` from first to last frame
  (at least ``min_move`` px along it, and more along it than across)?"""
  if np.isnan(track[[0, -1]]).any():
    return False
  move = track[-1] - track[0]
  along = float(move @ np.asarray(UNIT[direction]))
  return along >= min_move and along > abs(move[0] * UNIT[direction][1]
                                            + move[1] * UNIT[direction][0])


def camera_speed(frames_a: np.ndarray, frames_b: np.ndarray) -> float:
  """How far the camera moved a -> b, in px: the length of the pan, zoom
  and roll that ``camera_scores`` reads, together."""
  s = camera_scores(flow(frames_a, frames_b))
  return float(np.hypot(np.hypot(s["pan_left"], s["pan_up"]),
                        np.hypot(s["zoom_in"], s["rotate_ccw"])))


def fitted_motion(truth: np.ndarray, offsets, factor: int = 8) -> dict:
  """F0 moved by motion fitted to the truth [N, W, R, R, 3]: the ceilings a
  model that generates motion can approach (they see the answer).
  "f0_global_motion": one similarity transform per frame (RANSAC over the
  dense flow); "f0_latent_flow": the dense flow averaged to a grid
  ``factor`` times coarser (the latent grid), upsampled and applied."""
  i0 = list(offsets).index(0)
  glob, dense = truth.copy(), truth.copy()
  r = truth.shape[-2]
  gy, gx = np.mgrid[0:r:4, 0:r:4].astype(np.float32)
  for n, clip in enumerate(truth):
    f0 = clip[i0]
    for j in range(len(offsets)):
      if j == i0:
        continue
      fl = flow(clip[j], f0)  # clip[j](p) ~ f0(p + fl(p)).
      src = np.stack([gx.ravel(), gy.ravel()], 1)
      dst = src + fl[::4, ::4].reshape(-1, 2)
      m, _ = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC)
      if m is None:
        m = np.eye(2, 3, dtype=np.float64)
      glob[n, j] = cv2.warpAffine(f0, m, (r, r), flags=cv2.INTER_LINEAR
                                  | cv2.WARP_INVERSE_MAP,
                                  borderMode=cv2.BORDER_REPLICATE)
      coarse = fl.reshape(r // factor, factor, r // factor, factor,
                          2).mean(axis=(1, 3))
      dense[n, j] = warp(f0, cv2.resize(coarse, (r, r),
                                        interpolation=cv2.INTER_LINEAR))
  return {"f0_global_motion": glob, "f0_latent_flow": dense}


def known_baselines(truth, offsets, known) -> dict:
  """Frames from the known frames of truth [N, W, R, R, 3] at ``offsets``
  (``known``: the offsets given), without a model: linear blending
  and flow interpolation between neighbouring known frames, and beyond the
  outermost ones their nearest known frame (copy) or the flow of the last
  two continued (linear_flow)."""
  ks = sorted(known)
  idx = {o: i for i, o in enumerate(offsets)}
  blend, flow_i = truth.copy(), truth.copy()
  for a, b in zip(ks, ks[1:]):
    if b - a < 2:
      continue
    gap = [idx[o] for o in range(a + 1, b)]
    lam = ((np.arange(1, b - a) / (b - a))[:, None, None, None])
    for n, clip in enumerate(truth):
      fa, fb = clip[idx[a]].astype(np.float32), clip[idx[b]].astype(np.float32)
      blend[n, gap] = np.round((1 - lam) * fa + lam * fb).astype(np.uint8)
      flow_i[n, gap] = interpolate(clip[idx[a]], clip[idx[b]],
                                           len(gap))
  out = {"linear_blend": blend, "flow_interpolation": flow_i}
  if offsets[0] < ks[0] or offsets[-1] > ks[-1]:
    copy, lin = blend.copy(), blend.copy()
    for n, clip in enumerate(truth):
      for o in offsets:
        if o < ks[0] or o > ks[-1]:
          copy[n, idx[o]] = clip[idx[ks[0] if o < ks[0] else ks[-1]]]
      for end, inner, side in ((ks[-1], ks[-2], range(ks[-1] + 1,
                                                      offsets[-1] + 1)),
                               (ks[0], ks[1], range(ks[0] - 1,
                                                    offsets[0] - 1, -1))):
        if len(side):
          lin[n, [idx[o] for o in side]] = extrapolate(
              clip[idx[inner]], clip[idx[end]], len(side))
    out = {"copy_nearest": copy, "linear_flow": lin}
  return out
