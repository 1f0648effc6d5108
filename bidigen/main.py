"""bidigen's entry point: flags in, one mode out.

  python -m bidigen.main --config=configs/synthetic.py --mode=train \
      --workdir=workdirs/synthetic
  python -m bidigen.main --config=configs/synthetic.py --mode=sample \
      --image=bidigen/assets/examples/cat.png --prompt="a red ball moves left" \
      --frames_before=4 --frames_after=4 --seed=0 --output=out.mp4
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

MODES = ("train", "sample", "prepare", "export")

config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/synthetic.py[:tiny]; override "
    "keys with --config.train.batch_size=8.", lock_config=True)
flags.DEFINE_enum("mode", None, MODES, "What to run.")
flags.DEFINE_string("workdir", None, "Run folder (checkpoints, logs); "
                    "train resumes from it.")
flags.DEFINE_string("image", None, "sample: the input frame F0.")
flags.DEFINE_string("prompt", "", "sample: text prompt; empty means none.")
flags.DEFINE_integer("frames_before", 4, "sample: frames before F0.",
                     lower_bound=0)
flags.DEFINE_integer("frames_after", 4, "sample: frames after F0.",
                     lower_bound=0)
flags.DEFINE_integer("seed", 0, "sample: random seed.")
flags.DEFINE_string("output", None, "sample: .mp4/.gif video, or a folder "
                    "of frame_-004.png ... and contact_sheet.png; export: "
                    "the exported model folder.")
flags.DEFINE_string("checkpoint", None, "sample: a training workdir or an "
                    "exported model; default: the embedded model.")
flags.DEFINE_float("guidance", None, "sample: classifier-free guidance "
                   "scale (default: config.sample.guidance).", lower_bound=0)
flags.DEFINE_integer("steps", None, "sample: denoising steps (default: "
                     "config.sample.steps).", lower_bound=1)
FLAGS = flags.FLAGS


def run(argv) -> None:
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {' '.join(argv[1:])}")
  if FLAGS.mode is None:
    raise ValueError(f"--mode is required: one of {', '.join(MODES)}")
  config = FLAGS.config
  if FLAGS.mode == "sample":
    from bidigen import sample
    sample.run(config=config, image=FLAGS.image, prompt=FLAGS.prompt,
                   frames_before=FLAGS.frames_before,
                   frames_after=FLAGS.frames_after, seed=FLAGS.seed,
                   output=FLAGS.output, checkpoint=FLAGS.checkpoint,
                   guidance=FLAGS.guidance, steps=FLAGS.steps)
    return
  if config is None:
    raise ValueError("--config is required for --mode=" + FLAGS.mode)
  if FLAGS.mode == "prepare":
    from bidigen import data
    builder = data.get_builder(config.data, prepare=True)
    print(f"prepared {builder.info.full_name} in {builder.data_dir}")
    return
  if FLAGS.workdir is None:
    raise ValueError(f"--workdir is required for --mode={FLAGS.mode}")
  if FLAGS.mode == "train":
    from bidigen import train
    os.makedirs(FLAGS.workdir, exist_ok=True)
    train.train(config, FLAGS.workdir)
  elif FLAGS.mode == "export":
    from bidigen import checkpoints, train
    if not FLAGS.output:
      raise ValueError("--output (the model folder to write) is required")
    cfg, params = train.restore_for_sampling(FLAGS.workdir)
    checkpoints.export_model(params, cfg, FLAGS.output)
    print(f"exported {FLAGS.workdir} to {FLAGS.output}")


def main(argv) -> None:
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax's INFO lines drown ours.
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
    sys.exit(f"bidigen: error: bad config ({given}): {one_line(e)}")


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
