"""bidigen's entry point: flags in, one mode out.

  python -m bidigen.main --config=configs/synthetic.py --mode=encode
  python -m bidigen.main --config=configs/synthetic.py --mode=train \
      --workdir=workdirs/synthetic
  python -m bidigen.main --config=configs/synthetic.py --mode=sample \
      --image=bidigen/assets/examples/cat.png \
      --prompt="the camera pans to the left over a cat" \
      --frames_before=4 --frames_after=4 --seed=0 --output=out.mp4
  (add --keyframe=end.png@16 for a keyframe, --loop for a loop, or give
  --video=clip.mp4 instead of --image to extend a video both ways)
On several hosts, each runs the same command plus (see launch/README.md)
  --coordinator_address=HOST0:1234 --num_processes=N --process_id=I
which TPU VMs, Slurm and Open MPI can leave to the environment.
"""

import logging as py_logging
import os
import sys

from bidigen import process

if __name__ == "__main__":
  process.tune()  # Before jax starts; may run this again with tcmalloc.

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

# Each mode is a function of this name below; the flags it requires.
MODES = {"train": ("config", "workdir"), "evaluate": ("config", "workdir"),
         "sample": (),
         "prepare": ("config",), "encode": ("config",),
         "export": ("workdir", "output"), "gate": ("config", "workdir")}

config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/synthetic.py[:tiny]; override "
    "keys with --config.train.batch_size=8.", lock_config=True)
flags.DEFINE_enum("mode", None, list(MODES), "What to run.")
flags.DEFINE_string("workdir", None, "Run folder (checkpoints, logs); "
                    "train resumes from it.")
flags.DEFINE_string("image", None, "sample: the input frame F0.")
flags.DEFINE_string("video", None, "sample: a video to extend, instead of "
                    "--image: its frames are known at their offsets and "
                    "--frames_before/--frames_after are added beyond its "
                    "first and last frame (at most sample.MAX_VIDEO_FRAMES "
                    "frames are read, at the model's fps).")
flags.DEFINE_integer("video_frame", None, "sample: which frame of --video "
                     "is F0 (default: the middle one).", lower_bound=0)
flags.DEFINE_multi_string("keyframe", [], "sample: PATH@OFFSET, repeatable: "
                          "the frame at that offset from F0 is this image "
                          "(negative offsets are before F0); the frames "
                          "around are generated to meet it.")
flags.DEFINE_bool("loop", False, "sample: a seamless loop: the last frame "
                  "leads back into the first (needs more frames than the "
                  "model's window).")
flags.DEFINE_string("prompt", "", "sample: text prompt; empty means none.")
flags.DEFINE_integer("frames_before", 4, "sample: frames before F0.",
                     lower_bound=0)
flags.DEFINE_integer("frames_after", 4, "sample: frames after F0.",
                     lower_bound=0)
flags.DEFINE_integer("seed", 0, "sample: random seed.")
flags.DEFINE_string("output", None, "sample: .mp4/.gif video, or a folder "
                    "of frame_-004.png ... and contact_sheet.png; export: "
                    "the exported model folder.")
flags.DEFINE_bool("overwrite", False, "sample/export: replace an --output "
                  "that bidigen wrote before (a folder holding anything "
                  "else is never replaced); encode: encode again.")
flags.DEFINE_string("checkpoint", None, "sample/evaluate/gate: a training "
                    "workdir or an exported model; default: the embedded "
                    "model.")
flags.DEFINE_float("guidance", None, "sample: classifier-free guidance "
                   "scale (default: config.sample.guidance).", lower_bound=0)
flags.DEFINE_integer("steps", None, "sample: denoising steps (default: "
                     "config.sample.steps).", lower_bound=1)
flags.DEFINE_enum("solver", None, ["ddim", "dpmpp_2m"], "sample: the ODE "
                  "solver (default: config.sample.solver; dpmpp_2m is "
                  "DPM-Solver++(2M), for fewer steps).")
flags.DEFINE_float("motion_strength", 1.0, "sample: scales the motion a "
                   "model with config.model.target=motion generates (0 "
                   "keeps F0 in place, 1 is the model's own, up to 2).",
                   lower_bound=0, upper_bound=2)
flags.DEFINE_integer("ema", 0, "export: which of the run's EMAs "
                     "(config.train.ema_decays, from 0) to export; the gate "
                     "scores an export of each on held-out data.",
                     lower_bound=0)
flags.DEFINE_integer("output_resolution", None, "sample: the frames' size "
                     "(the image, keyframes and video are read at it); "
                     "the model generates at its own resolution and F0 is "
                     "moved at this one, so still regions keep the photo's "
                     "detail (default: the model's resolution; at most "
                     "sample.MAX_OUTPUT_RESOLUTION).", lower_bound=1)
flags.DEFINE_enum("export_dtype", "float32", ["float32", "float16"],
                  "export: the weights' storage type; float16 halves the "
                  "folder and is widened to float32 on load.")
flags.DEFINE_string("coordinator_address", None, "Multi-host: HOST:PORT of "
                    "process 0, for jax.distributed.initialize.")
flags.DEFINE_integer("num_processes", None, "Multi-host: number of "
                     "processes.", lower_bound=1)
flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.",
                     lower_bound=0)
FLAGS = flags.FLAGS


def run(argv) -> None:
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {' '.join(argv[1:])}")
  if FLAGS.mode is None:
    raise ValueError(f"--mode is required: one of {', '.join(MODES)}")
  for name in MODES[FLAGS.mode]:
    if FLAGS[name].value is None:
      raise ValueError(f"--{name} is required for --mode={FLAGS.mode}")
  from bidigen import sharding  # Before anything touches devices.
  sharding.initialize_distributed(FLAGS.coordinator_address,
                                  FLAGS.num_processes, FLAGS.process_id)
  modes = {"train": train, "evaluate": evaluate, "sample": sample,
           "prepare": prepare, "encode": encode, "export": export,
           "gate": gate}
  modes[FLAGS.mode](FLAGS.config)


def train(config) -> None:
  from bidigen import train as train_lib
  os.makedirs(FLAGS.workdir, exist_ok=True)
  train_lib.train(config, FLAGS.workdir)


def evaluate(config) -> None:
  from bidigen import evaluate as evaluate_lib
  report = evaluate_lib.evaluate(config, FLAGS.workdir, FLAGS.checkpoint)
  logging.info("wrote %s/report.md, report.json and sheets/ (%s s)",
               FLAGS.workdir, report["seconds"])


def gate(config) -> None:
  from bidigen import gate as gate_lib
  r = gate_lib.run(config, FLAGS.workdir, FLAGS.checkpoint)
  old = r["embedded_score"]
  logging.info(
      "gate: score %.3f (LPIPS %.3f vs copy-F0 %.3f, FVD %.1f vs %.1f, "
      "camera accuracy %.2f); embedded model %s: %s (%s/gate.json)",
      r["score"], r["lpips"], r["lpips_copy_f0"], r["fvd"], r["fvd_copy_f0"],
      r["camera_accuracy"], "not scored" if old is None else f"{old:.3f}",
      "passes" if r["passes"] else "does not pass", FLAGS.workdir)


def sample(config) -> None:
  from bidigen import sample as sample_lib
  sample_lib.run(config=config, image=FLAGS.image, prompt=FLAGS.prompt,
                 frames_before=FLAGS.frames_before,
                 frames_after=FLAGS.frames_after, seed=FLAGS.seed,
                 output=FLAGS.output, overwrite=FLAGS.overwrite,
                 checkpoint=FLAGS.checkpoint,
                 guidance=FLAGS.guidance, steps=FLAGS.steps,
                 solver=FLAGS.solver, video=FLAGS.video,
                 video_frame=FLAGS.video_frame, keyframes=FLAGS.keyframe,
                 loop=FLAGS.loop, motion_strength=FLAGS.motion_strength,
                 output_resolution=FLAGS.output_resolution)


def prepare(config) -> None:
  from bidigen import data
  from bidigen import latents
  for section, _ in latents.sources(config.data).values():
    builder = data.get_builder(section, prepare=True)
    logging.info("prepared %s in %s", builder.info.full_name,
                 builder.data_dir)


def encode(config) -> None:
  from bidigen import latents
  latents.encode(config, overwrite=FLAGS.overwrite)


def export(config) -> None:
  del config  # The checkpoint's own.
  from bidigen import checkpoints, media
  media.check_folder(FLAGS.output, overwrite=FLAGS.overwrite)
  cfg, params = checkpoints.restore_for_sampling(FLAGS.workdir, FLAGS.ema)
  checkpoints.export_model(params, cfg, FLAGS.output,
                           overwrite=FLAGS.overwrite,
                           dtype=FLAGS.export_dtype)
  logging.info("exported %s (EMA decay %s) to %s", FLAGS.workdir,
               cfg.train.ema_decays[FLAGS.ema], FLAGS.output)


def ours_or_warnings(record) -> bool:
  """A log filter: bidigen's INFO lines (what a run reports: resumed,
  stopped, encoded, exported, the gate's score) and every library's
  warnings; Orbax's many INFO lines would drown ours."""
  return (record.levelno >= py_logging.WARNING
          or f"{os.sep}bidigen{os.sep}" in record.pathname)


def main(argv) -> None:
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.INFO)
    logging.get_absl_handler().addFilter(ours_or_warnings)
  try:
    run(argv)
  except (ValueError, OSError, FloatingPointError) as e:
    # Bad input is a one-line message, not a traceback.
    sys.exit(f"bidigen: error: {one_line(e)}")


def one_line(e: BaseException) -> str:
  """The first line of an error and, when there are more, its last one
  (config_flags puts the loader's whole traceback in its messages)."""
  lines = [l.strip() for l in str(e).splitlines() if l.strip()]
  if not lines:
    return type(e).__name__
  return lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1]}"


def parse_flags(argv):
  """absl's parser, with a bad flag or --config override as one line."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    sys.exit(f"bidigen: error: {one_line(e)}")
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    given = " ".join(a for a in argv if a.startswith("--config"))
    why = unknown_key(argv) or f"bad config ({given}): {one_line(e)}"
    sys.exit(f"bidigen: error: {why}")


def unknown_key(argv) -> str | None:
  """For an override of a key the config lacks: the key and its nearest
  known sibling (ml_collections' own message is only the missing part)."""
  import difflib
  import importlib.util
  spec = next((a.split("=", 1)[1] for a in argv
               if a.startswith("--config=")), None)
  if spec is None:
    return None
  path, _, arg = spec.partition(":")
  try:
    loader = importlib.util.spec_from_file_location("_bidigen_config", path)
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    config = module.get_config(arg or None)
  except Exception:  # pylint: disable=broad-except
    return None  # The loader's own error says what is wrong.
  for a in argv:
    if not a.startswith("--config.") or "=" not in a:
      continue
    node, name = config, "config"
    for part in a[len("--"):].split("=", 1)[0].split(".")[1:]:
      keys = list(node.keys()) if hasattr(node, "keys") else []
      if part not in keys:
        if not keys:
          return f"config key {name}.{part}: {name} is a value, not a group"
        near = difflib.get_close_matches(part, keys, n=1, cutoff=0)
        return (f"unknown config key {name}.{part}; did you mean "
                f"{name}.{near[0]}? ({name} has {', '.join(sorted(keys))})")
      node, name = node[part], f"{name}.{part}"
  return None


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
