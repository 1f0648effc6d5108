"""The gate: one fixed score that decides whether a model replaces the
embedded one.

``--mode=gate --checkpoint=CANDIDATE`` evaluates the candidate with the
same command every time (``EVALUATIONS``: the 24 first clips of the real
clips' ``eval_only`` videos, F0 only and forward, with FVD, 2 samples each;
the 24 first camera test clips, F0 only; about 15 minutes on two CPU
cores) and combines three figures measured against copying F0 in
the same run:

  score = 10 * (LPIPS of copy-F0 - the model's)       real clips, F0 only
        + (FVD of copy-F0 - the model's) / FVD of copy-F0        the same
        + camera accuracy                          camera clips, F0 only

so 0.01 LPIPS, 10 % of copy-F0's FVD and 10 % camera accuracy each count
0.1. The embedded model's own gate result is stored beside it
(``gate.json``); the candidate passes when its score is higher. The
formula is fixed: changing it would make the learning curve's rows
incomparable.
"""

import json
import os

EVALUATIONS = {
    "clips": dict(data="clips", tasks=("bidirectional", "forward"),
                  num_clips=24, samples_per_clip=2, fvd=True),
    "camera": dict(data="camera", tasks=("bidirectional",), num_clips=24,
                   samples_per_clip=2, fvd=False),
}
RESULT = "gate.json"


def score(clips: dict, camera: dict) -> dict:
  """The gate's figures and score from the two evaluations' reports."""
  rows = clips["tasks"]["bidirectional"]
  model, copy = rows["model"], rows["copy_f0"]
  cam = camera["tasks"]["bidirectional"]["model"]
  lpips = 10 * (copy["lpips"] - model["lpips"])
  fvd = (copy["fvd"] - model["fvd"]) / copy["fvd"]
  accuracy = float(cam["camera_accuracy"])
  return {"lpips": model["lpips"], "lpips_copy_f0": copy["lpips"],
          "fvd": model["fvd"], "fvd_copy_f0": copy["fvd"],
          "psnr": model["psnr"], "psnr_copy_f0": copy["psnr"],
          "psnr_best": model["psnr_best"],
          "camera_accuracy": accuracy,
          "camera_psnr": cam["psnr"],
          "score": lpips + fvd + accuracy}


def run(config, workdir: str, checkpoint: str | None) -> dict:
  """Evaluates ``checkpoint`` as ``EVALUATIONS`` say and compares its score
  with the embedded model's stored one; writes workdir/gate.json."""
  from bidigen import checkpoints  # pylint: disable=import-outside-toplevel
  from bidigen import evaluate  # pylint: disable=import-outside-toplevel
  reports = {}
  for name, ev in EVALUATIONS.items():
    cfg = config.copy_and_resolve_references()
    cfg.eval.update(ev)
    reports[name] = evaluate.evaluate(cfg, os.path.join(workdir, name),
                                      checkpoint)
  result = score(reports["clips"], reports["camera"])
  stored = os.path.join(checkpoints.DEFAULT_MODEL, RESULT)
  embedded = None
  if os.path.exists(stored):
    with open(stored) as f:
      embedded = json.load(f)
  result["passes"] = embedded is None or result["score"] > embedded["score"]
  result["embedded_score"] = None if embedded is None else embedded["score"]
  path = os.path.join(workdir, RESULT)
  with open(path + ".tmp", "w") as f:
    json.dump(result, f, indent=1)
  os.replace(path + ".tmp", path)
  return result
