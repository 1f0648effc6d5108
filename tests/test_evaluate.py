"""Evaluation: each metric on clips with a known answer, and --mode=evaluate
end to end on the tiny config."""

import json
import os

import cv2
import numpy as np
import pytest
from PIL import Image
from scipy import linalg
from skimage import data as skdata

from bidigen import metrics
from bidigen.data import synthetic
from tests.test_cli import run_main


def texture(size=64):
  """A real photograph (the astronaut), downscaled: flow needs texture."""
  return np.asarray(Image.fromarray(skdata.astronaut()).resize((size, size)))


def panning(shift: float, count: int, size=48, axis=1):
  """Frames cut from one photo, each ``shift`` px further along ``axis``:
  the content moves by -shift px per frame."""
  big = np.asarray(Image.fromarray(skdata.astronaut()).resize((160, 160)))
  out = []
  for k in range(count):
    o = int(round(40 + k * shift))
    out.append(big[40:40 + size, o:o + size] if axis == 1
               else big[o:o + size, 40:40 + size])
  return np.stack(out)


def test_psnr_and_ssim_known_values():
  a = texture()
  assert metrics.psnr(a, a) == 100.0
  b = np.clip(a.astype(int) + 10, 0, 255).astype(np.uint8)
  err = np.mean((a.astype(float) - b) ** 2)
  assert metrics.psnr(a, b) == pytest.approx(10 * np.log10(255 ** 2 / err))
  assert metrics.ssim(a[None], a[None])[0] == pytest.approx(1.0)
  noisy = np.clip(a + np.random.default_rng(0).normal(0, 40, a.shape), 0,
                  255).astype(np.uint8)
  assert metrics.ssim(a[None], noisy[None])[0] < 0.8
  assert metrics.psnr(np.stack([a, a]), np.stack([a, b])).shape == (2,)


def test_sharpness_and_colour_drift_known_values():
  a = texture()
  blurred = cv2.GaussianBlur(a, (0, 0), 2)
  assert metrics.sharpness(blurred) < 0.6 * metrics.sharpness(a)
  assert metrics.sharpness(np.full_like(a, 90)) == 0.0
  ramp = np.broadcast_to(np.arange(32, dtype=np.uint8)[None, :, None] * 4,
                         (32, 32, 3))  # 4 levels a pixel along x.
  assert metrics.sharpness(ramp) == pytest.approx(4.0)
  brighter = a.astype(np.int32) + np.array([6, 0, 3])
  assert metrics.colour_drift(a, brighter) == pytest.approx(3.0)
  assert metrics.colour_drift(np.stack([a, a]), np.stack([a, brighter])
                              ).tolist() == pytest.approx([0.0, 3.0])


def test_frechet_distance_against_scipy_reference():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(400, 6))
  y = rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6)) + 0.5
  assert metrics.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)
  # Reference: trace of sqrt(S1 S2) from the eigenvalues of S1 S2.
  s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
  tr = np.sum(np.sqrt(np.abs(linalg.eigvals(s1 @ s2))))
  ref = (np.sum((x.mean(0) - y.mean(0)) ** 2) + np.trace(s1) + np.trace(s2)
         - 2 * tr)
  assert metrics.frechet_distance(x, y) == pytest.approx(ref, rel=1e-5)
  assert metrics.frechet_distance(x, y) > 1.0


def test_flow_of_a_shifted_clip_and_its_warp_error():
  frames = panning(2, 6)
  fl = metrics.flow(frames[0], frames[1])
  assert np.median(fl[..., 0]) == pytest.approx(-2, abs=0.3)
  assert abs(np.median(fl[..., 1])) < 0.3
  smooth = metrics.warp_errors(frames)
  shuffled = metrics.warp_errors(frames[[0, 5, 1, 4, 2, 3]])
  assert smooth.mean() < 0.5 * shuffled.mean()
  assert metrics.flow_epe(frames, frames).max() == pytest.approx(0.0)
  other = panning(-2, 6)  # Opposite motion: 4 px apart each step.
  assert metrics.flow_epe(frames, other).mean() > 2.5


def test_seam_at_f0():
  frames = panning(1, 9)
  errors = metrics.warp_errors(frames)
  assert metrics.seam_ratio(errors, 4) == pytest.approx(1.0, abs=0.5)
  jump = frames.copy()
  jump[:4] = np.clip(jump[:4].astype(int) + 60, 0, 255)  # F-4..F-1 differ.
  assert metrics.seam_ratio(metrics.warp_errors(jump), 4) > 3


def test_linear_flow_extrapolation_continues_the_motion():
  frames = panning(1, 6)
  ext = metrics.extrapolate(frames[0], frames[1], 3)
  inner = (slice(None), slice(6, -6), slice(6, -6))
  good = metrics.psnr(ext[inner], frames[2:5][inner])
  copy = metrics.psnr(np.repeat(frames[1:2], 3, 0)[inner],
                      frames[2:5][inner])
  assert (good > copy + 3).all(), (good, copy)


@pytest.mark.parametrize("shift,axis,want", [
    (2, 1, "pan_right"), (-2, 1, "pan_left"), (2, 0, "pan_down"),
    (-2, 0, "pan_up"), (0, 1, "static")])
def test_camera_class_of_pans(shift, axis, want):
  frames = panning(shift, 4, axis=axis)
  assert metrics.camera_class(frames[0], frames[3]) == want


def test_camera_class_of_zooms():
  big = Image.fromarray(skdata.astronaut()).resize((192, 192))
  crop = lambda s: np.asarray(big.crop((96 - s, 96 - s, 96 + s, 96 + s))
                              .resize((48, 48)))
  assert metrics.camera_class(crop(60), crop(45)) == "zoom_in"
  assert metrics.camera_class(crop(45), crop(60)) == "zoom_out"


def test_colour_tracking_on_a_rendered_clip():
  photos = {"chelsea": Image.fromarray(synthetic.load_photo("chelsea"))}
  for seed in range(40):
    features, meta = synthetic.make_clip(seed, photos, 64, 17)
    if features["num_objects"] >= 1:
      break
  video = features["video"]
  for i in range(int(features["num_objects"])):
    track = metrics.track_colour(video, features["object_rgb"][i])
    want = features["object_positions"][:, i] * 64
    err = np.linalg.norm(track - want, axis=-1)
    assert np.nanmean(err) < 1.5, err
    direction = meta["objects"][i][2]
    assert metrics.direction_correct(track, direction)
    opposite = {"left": "right", "right": "left", "up": "down",
                "down": "up"}[direction]
    assert not metrics.direction_correct(track, opposite)
    still = np.repeat(track[8:9], 17, 0)  # A copy of F0 does not move.
    assert not metrics.direction_correct(still, direction)


def test_evaluate_refuses_a_workdir_report_it_did_not_write(tmp_path,
                                                            tiny_config):
  """Before any work: a report.md of the user's is never replaced."""
  from bidigen import evaluate
  (tmp_path / "report.md").write_text("my notes")
  with pytest.raises(ValueError, match="report.md, which bidigen did not"):
    evaluate.evaluate(tiny_config, str(tmp_path))
  assert (tmp_path / "report.md").read_text() == "my notes"
  assert sorted(os.listdir(tmp_path)) == ["report.md"]


def test_evaluate_names_an_unknown_task(tmp_path, tiny_config):
  from bidigen import evaluate
  config = tiny_config.copy_and_resolve_references()
  config.eval.tasks = ("bidirectional", "sideways")
  with pytest.raises(ValueError, match="unknown sideways; known: "
                     "bidirectional, forward"):
    evaluate.evaluate(config, str(tmp_path / "eval"))
  assert not os.path.exists(tmp_path / "eval")



def test_in_batches_pads_the_last_batch_and_keeps_real_rows():
  """One batch shape for every call (the last padded with its last row);
  the results' real rows in order."""
  from bidigen import sharding
  shapes = []

  def fn(a, b):
    shapes.append((a.shape, b.shape))
    return a * 10 + b
  a, b = np.arange(7), np.arange(7)[::-1].copy()
  np.testing.assert_array_equal(sharding.in_batches(fn, 3, a, b), a * 10 + b)
  assert shapes == [((3,), (3,))] * 3
  with pytest.raises(ValueError, match="lengths"):
    sharding.in_batches(fn, 3, a, b[:5])


def test_evaluation_requests_are_the_sampler_users_get(tiny_run):
  """The samples of each clip are the Generator's own requests (known
  frames given as keyframes) with their own seeds, clip i's sample j seeded
  seed * 100_003 + i * samples + j, whatever the batch."""
  import jax
  from bidigen import evaluate
  from bidigen import sample
  from bidigen import sharding
  gen = sample.Generator(tiny_run[0], mesh=sharding.make_mesh(
      [("data", 1)], jax.devices()[:1]))
  rng = np.random.default_rng(0)
  # Perturbed weights, so that seeds and known frames show in the frames
  # (the 6-step run's copy F0 whatever they are told).
  gen.params = dict(gen.params, unet=jax.device_put(jax.tree.map(
      lambda p: p + 0.02 * rng.normal(size=p.shape).astype(p.dtype),
      jax.device_get(gen.params["unet"])), sharding.replicated(gen.mesh)))
  clips = [{"video": rng.integers(0, 255, (9, 64, 64, 3), dtype=np.uint8),
            "caption": c} for c in ("a red ball moves left",
                                    "a blue cube moves up", "grass")]
  settings = dict(steps=2, guidance=1.0, solver="ddim", motion_strength=1.0)
  run = evaluate.Run(gen, settings, 4, clips, 2, 3)
  offsets, f0, end = [-2, -1, 0, 1, 2], run.video[:, 4], run.video[:, 6]
  out = run.generate(f0, run.captions, offsets, {2: end}, label="test")
  assert out.shape == (3, 2, 5, 64, 64, 3)
  np.testing.assert_array_equal(out[:, :, 2], np.stack([f0, f0], 1))
  np.testing.assert_array_equal(out[:, :, 4], np.stack([end, end], 1))
  for i, j in ((0, 1), (2, 0)):
    want = gen(f0[i:i + 1], [run.captions[i]], frames_before=2,
               frames_after=2, keyframes={2: end[i]},
               keys=jax.vmap(jax.random.key)(np.array([3 * 100_003 + 2 * i
                                                       + j])), **settings)
    assert np.abs(out[i, j].astype(int) - want[0]).max() <= 1, (i, j)
  assert np.abs(out[0, 0].astype(int) - out[0, 1]).mean() > 1


@pytest.mark.slow
def test_evaluate_end_to_end_on_tiny(tmp_path, tiny_data, tiny_run,
                                    tiny_config):
  from bidigen import evaluate
  data_dir = tiny_data
  config = tiny_config.copy_and_resolve_references()
  config.data.data_dir = data_dir
  wd = tiny_run[0]

  out = str(tmp_path / "eval")
  proc = run_main("--config=configs/synthetic.py:tiny", "--mode=evaluate",
                  f"--workdir={out}", f"--checkpoint={wd}",
                  f"--config.data.data_dir={data_dir}",
                  "--config.eval.steps=2", "--config.eval.samples_per_clip=1",
                  "--config.eval.batch_size=2")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "report.md" in proc.stderr  # The run's log (absl logging).
  with open(os.path.join(out, "report.json")) as f:
    report = json.load(f)
  assert report["num_clips"] == 2 and report["samples_per_clip"] == 1
  tasks = report["tasks"]
  # Every task but output_resolution, which needs the camera clips.
  assert list(tasks) == [t for t in evaluate.TASKS
                         if t != "output_resolution"]
  check_keyframe_tasks(tasks, config)
  assert set(tasks["bidirectional"]) == {"model", "no_text",
                                         "model_paraphrase", "copy_f0",
                                         "f0_global_motion", "f0_latent_flow",
                                         "ground_truth"}
  # The ceilings see the truth's motion: on clips of moving objects over a
  # moving camera they beat copying F0.
  rows = tasks["bidirectional"]
  assert rows["f0_latent_flow"]["psnr"] > rows["copy_f0"]["psnr"] + 1
  assert rows["f0_global_motion"]["psnr"] > rows["copy_f0"]["psnr"]
  assert "linear_flow" in tasks["forward"] and "linear_flow" in tasks[
      "backward"]
  model = tasks["bidirectional"]["model"]
  assert sorted(model["psnr_by_offset"], key=int) == [
      "-4", "-3", "-2", "-1", "1", "2", "3", "4"]
  for key in ("ssim", "warp_error", "flow_epe", "seam_ratio",
              "direction_accuracy", "camera_accuracy", "classifier_frechet"):
    assert np.isfinite(model[key]), key
  # Copying F0 moves nothing: no object goes the prompted way.
  copy = tasks["bidirectional"]["copy_f0"]
  assert copy["direction_accuracy"] == 0.0 and copy["warp_error"] == 0.0
  check_baselines_against_the_clips(tasks, config)
  assert sorted(tasks["rollout"]["model"]["psnr_by_offset"], key=int)[0] \
      == "-8"
  assert report["fvd"] == "not computed: config.eval.fvd is off"
  assert report["lpips"].startswith("LPIPS alexnet")
  for task, rows in tasks.items():
    for variant in [v for v in rows if v not in ("ground_truth",)
                    and task != "loop"]:
      assert 0 < rows[variant]["lpips"] < 1, (task, variant)
  with open(os.path.join(out, "report.md")) as f:
    md = f.read()
  assert "## bidirectional" in md and "| copy_f0 |" in md
  # Against a baseline, not the model under another wording.
  assert "PSNR by offset (model vs copy_f0)" in md
  sheets = sorted(os.listdir(os.path.join(out, "sheets")))
  assert "bidirectional_clip000.png" in sheets and len(sheets) == 16
  sheet = np.asarray(Image.open(os.path.join(out, "sheets", sheets[0])))
  assert sheet.shape[0] > 2 * 32  # Ground truth above, generated below.


def check_keyframe_tasks(tasks, config):
  """Issue 16's rows: the baselines recomputed from the clips, the model's
  rows over the frames it generated, and the loop's seam."""
  from bidigen import data as data_lib
  source = data_lib.get_builder(config.data).as_data_source(split="test")
  videos = np.stack([np.asarray(source[i]["video"]) for i in range(2)])
  c = videos.shape[1] // 2
  blend = lambda a, b, t: np.round((1 - t) * a.astype(np.float32)
                                   + t * b).astype(np.uint8)
  p = [metrics.psnr(blend(videos[:, c], videos[:, c + 8], k / 8),
                    videos[:, c + k]).mean() for k in range(1, 8)]
  rows = tasks["interpolation"]
  assert rows["linear_blend"]["psnr"] == pytest.approx(np.mean(p), rel=1e-5)
  assert sorted(rows["model"]["psnr_by_offset"], key=int) == [
      str(k) for k in range(1, 8)]
  assert set(rows) == {"model", "no_text", "copy_f0", "linear_blend",
                       "flow_interpolation", "ground_truth"}
  assert len(tasks["keyframes3"]["model"]["psnr_by_offset"]) == 14
  ext = tasks["extension"]
  assert set(ext) == {"model", "no_text", "copy_nearest", "linear_flow",
                      "ground_truth"}
  # F0's neighbours are known there: no seam at F0 to measure.
  assert "seam_ratio" not in ext["model"]
  assert "seam_ratio" in tasks["keyframes3"]["model"]
  assert sorted(ext["model"]["psnr_by_offset"], key=int) == [
      str(o) for o in range(-8, 9) if abs(o) > 4]
  near = [metrics.psnr(videos[:, c + (4 if o > 0 else -4)],
                       videos[:, c + o]).mean()
          for o in range(-8, 9) if abs(o) > 4]
  assert ext["copy_nearest"]["psnr"] == pytest.approx(np.mean(near),
                                                      rel=1e-5)
  seams = tasks["loop"]
  assert seams["ground_truth"]["loop_seam"] == pytest.approx(np.mean(
      [metrics.loop_seam(v) for v in videos]))
  assert np.isfinite(seams["model"]["loop_seam"])


def check_baselines_against_the_clips(tasks, config):
  """The rows that need no model, recomputed here from the first test clips
  with the metrics alone: copy-F0 (PSNR, SSIM, by offset), the ground
  truth's warp error, and linear flow continuing the two known frames
  nearest the unknown ones."""
  from bidigen import data as data_lib
  from bidigen.models import lpips as lpips_lib
  weights = lpips_lib.load("alexnet")
  lpips = lambda a, b: np.asarray(lpips_lib.distance(weights, a, b))
  source = data_lib.get_builder(config.data).as_data_source(split="test")
  video = np.stack([np.asarray(source[i]["video"]) for i in range(2)])
  c = video.shape[1] // 2
  f0 = video[:, c]
  approx = lambda v: pytest.approx(v, rel=1e-6, abs=1e-9)
  windows = {"bidirectional": (range(-4, 5), [0]),
             "forward": (range(9), range(4)),
             "backward": (range(-8, 1), range(-3, 1)),
             "interpolation": (range(9), [0, 8]),
             "rollout": (range(-8, 9), [0])}
  for task, (offsets, known) in windows.items():
    rows = tasks[task]
    unknown = [o for o in offsets if o not in known]
    by = {o: metrics.psnr(f0, video[:, c + o]).mean() for o in unknown}
    copy = rows["copy_f0"]
    assert copy["psnr_by_offset"] == {str(o): approx(v)
                                      for o, v in by.items()}, task
    assert copy["psnr"] == approx(np.mean(list(by.values()))), task
    ssim = [metrics.ssim(f0, video[:, c + o]).mean() for o in unknown]
    assert copy["ssim"] == approx(np.mean(ssim)), task
    lp = [lpips(f0, video[:, c + o]).mean() for o in unknown]
    assert copy["lpips"] == pytest.approx(np.mean(lp), rel=1e-4), task
    # Every copied frame is F0: its detail exactly, and the truth's own
    # colour drift at the farthest offsets.
    assert copy["sharpness"] == pytest.approx(1.0, rel=1e-5), task
    far = max(abs(o) for o in unknown)
    drift = [metrics.colour_drift(f0, video[:, c + o]).mean()
             for o in unknown if abs(o) == far]
    assert copy["colour_drift"] == approx(np.mean(drift)), task
    if task == "rollout":  # PSNR at ±4 minus at ±8.
      assert copy["psnr_drop"] == approx(
          np.mean([by[-4], by[4]]) - np.mean([by[-8], by[8]]))
    if task != "rollout":
      truth = video[:, [c + o for o in offsets]]
      assert rows["ground_truth"]["warp_error"] == approx(np.mean(
          [metrics.warp_errors(x) for x in truth])), task
  for task, prev, last, step in (("forward", 2, 3, 1),
                                 ("backward", -2, -3, -1)):
    p = [metrics.psnr(metrics.extrapolate(v[c + prev], v[c + last], 5),
                      v[[c + last + k * step for k in range(1, 6)]])
         for v in video]
    assert tasks[task]["linear_flow"]["psnr"] == approx(np.mean(p)), task


def test_lpips_from_a_local_weights_file(tmp_path):
  from bidigen.models import lpips
  rng = np.random.default_rng(0)
  weights, cin = {}, 3
  for i, w in zip(lpips.CONVS, lpips.WIDTHS):
    weights[f"features.{i}.weight"] = rng.normal(
        0, np.sqrt(2 / (9 * cin)), (w, cin, 3, 3)).astype(np.float32)
    weights[f"features.{i}.bias"] = np.zeros(w, np.float32)
    cin = w
  for k, c in enumerate((64, 128, 256, 512, 512)):
    weights[f"lin{k}.model.1.weight"] = np.abs(
        rng.normal(size=(1, c, 1, 1))).astype(np.float32)
  path = str(tmp_path / "lpips.npz")
  np.savez(path, **weights)
  params = lpips.load(path)
  a = texture(32)[None]
  noise = lambda s: np.clip(a + rng.normal(0, s, a.shape), 0, 255).astype(
      np.uint8)
  b, c = noise(10), noise(60)
  assert float(lpips.distance(params, a, a)[0]) == pytest.approx(0, abs=1e-6)
  small, large = (float(lpips.distance(params, a, x)[0]) for x in (b, c))
  assert 0 < small < large
  assert float(lpips.distance(params, c, a)[0]) == pytest.approx(large,
                                                                  rel=1e-4)
  weights["lin2.model.1.weight"] = np.zeros((1, 7, 1, 1), np.float32)
  np.savez(path, **weights)
  with pytest.raises(ValueError, match="lin2.model.1.weight"):
    lpips.load(path)


@pytest.mark.slow
def test_fvd_of_a_task_is_the_frechet_distance_of_i3d_features(
    optimized_xla):
  """score()'s FVD: the real I3D's features of all generated windows against
  the true ones, equal to computing them directly; generated = true gives
  ~0, and time-shuffled windows score worse than the true order."""
  from bidigen import scoring
  from bidigen.models import i3d
  rng = np.random.default_rng(0)
  truth = np.stack([panning(s, 9, size=64) for s in (1.0, -1.5, 2.0, 0.5)])
  offsets, known = list(range(-4, 5)), [0]
  fvd_fn = scoring.fvd_metric(True)
  feats = fvd_fn(truth)
  assert feats.shape == (4, 400)
  same = scoring.score(truth[:, None], truth, offsets, known,
                        fvd_fn=fvd_fn, truth_features=feats)["fvd"]
  assert abs(same) < 1e-3
  shuffled = np.stack([v[rng.permutation(9)] for v in truth])
  bad = scoring.score(shuffled[:, None], truth, offsets, known,
                       fvd_fn=fvd_fn, truth_features=feats)["fvd"]
  variables = i3d.load()
  direct = i3d.fvd(i3d.fvd_features(variables, truth, frames=9),
                   i3d.fvd_features(variables, shuffled, frames=9))
  assert bad == pytest.approx(direct, rel=1e-4)
  assert bad > 1.0


def test_gate_score_weighs_lpips_fvd_and_camera_against_copy_f0():
  """The gate's fixed formula on hand-made reports: 0.01 LPIPS, 10 % of
  copy-F0's FVD and 10 % camera accuracy each count 0.1; a report without
  camera accuracy is an error, not a zero."""
  import pytest
  from bidigen import gate
  row = lambda lpips, fvd, psnr: {"lpips": lpips, "fvd": fvd, "psnr": psnr,
                                  "psnr_best": psnr + 1}
  clips = {"tasks": {"bidirectional": {"model": row(0.20, 900.0, 18.0),
                                       "copy_f0": row(0.19, 1000.0, 19.0)}}}
  camera = {"tasks": {"bidirectional": {"model": {"camera_accuracy": 0.3,
                                                  "psnr": 30.0}}}}
  r = gate.score(clips, camera)
  assert abs(r["score"] - (-0.1 + 0.1 + 0.3)) < 1e-9
  assert (r["lpips"], r["fvd_copy_f0"], r["camera_psnr"]) == (0.2, 1000.0,
                                                               30.0)
  del camera["tasks"]["bidirectional"]["model"]["camera_accuracy"]
  with pytest.raises(KeyError):
    gate.score(clips, camera)
