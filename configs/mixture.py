"""Synthetic objects, camera motion over real photographs and real clips,
mixed: the embedded model's recipe (``make train`` runs the commands below
and resumes its one long run; the model card has its results).

Each source is its own config's data section (configs/synthetic.py,
configs/camera.py, configs/clips.py), encoded into its own latent cache;
training draws from them with ``weight`` (grain's mixing, deterministic
given the seed) and normalises by their pooled latent statistics. The
model is synthetic's with camera's 64-token captions. Evaluation reads one
source's test split, ``eval.data`` (the real clips by default); the gate
scores an export against the embedded model:
  python -m bidigen.main --config=configs/mixture.py --mode=prepare
  python -m bidigen.main --config=configs/mixture.py --mode=encode
  python -m bidigen.main --config=configs/mixture.py --mode=train \
      --workdir=workdirs/mixture
  python -m bidigen.main --config=configs/mixture.py --mode=evaluate \
      --workdir=workdirs/mixture_eval --checkpoint=workdirs/mixture \
      [--config.eval.data=camera]
  python -m bidigen.main --config=configs/mixture.py --mode=gate \
      --workdir=workdirs/gate --checkpoint=MODEL
``--config.data.data_dir`` (and resolution, num_frames) set every source's;
``--config.data.sources.clips.weight=0`` leaves a source out. ``:tiny`` is
the same mixture at 64px with synthetic's tiny model.
"""

import ml_collections

import bidigen

SOURCES = ("synthetic", "camera", "clips")
# Shares of training clips: the real motion of the clips and the camera
# motion of photographs most, the synthetic objects (what teaches object
# prompts) the rest.
WEIGHTS = {"synthetic": 0.3, "camera": 0.35, "clips": 0.35}
# Clips encoded per source (0: all): the synthetic and camera generators
# make 1000 each, more than two CPU cores can train on; the real clips'
# train videos are all used.
ENCODE_CLIPS = {"synthetic": 200, "camera": 400, "clips": 0}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = bidigen.config_variant(__file__, arg)
  parts = {name: bidigen.sibling_config(__file__, name, variant)
           for name in SOURCES}
  sections = {name: parts[name].data.to_dict() for name in SOURCES}
  # Frames of the clips' `train` videos join the photographs.
  sections["camera"]["manual_dir"] = sections["clips"]["manual_dir"]
  c = parts["camera"]  # Synthetic's model and training, 64-token captions.
  c.data = ml_collections.ConfigDict(dict(
      name="mixture", data_dir="~/tensorflow_datasets",
      resolution=parts["clips"].data.resolution, num_frames=17,
      latents_dir="", encode_clips=0))
  c.data.sources = ml_collections.ConfigDict()
  for name in SOURCES:
    section = ml_collections.ConfigDict(sections[name])
    section.weight = WEIGHTS[name]
    section.encode_clips = 0 if variant == "tiny" else ENCODE_CLIPS[name]
    for key in ("data_dir", "resolution", "num_frames"):
      section[key] = c.data.get_ref(key)
    c.data.sources[name] = section
  c.eval.data = "clips"
  # What the bake-off chose (the model card has the table): at 500 steps,
  # motion and correction with the recipe below scored best on the real
  # clips (arm d: 16.65 dB, LPIPS 0.236, FVD 1484, against 16.54 / 0.275 /
  # 1665 for the plain residual and 14.62 / 0.425 / 2255 for whole frames).
  c.model.target = "motion"
  c.model.pooled_text = True
  c.train.update(min_snr=5.0, noise_levels="logit_normal", reverse_prob=0.5)
  if variant != "tiny":
    # One run resumed across many sessions (make train): a constant rate
    # after a short warm-up, a checkpoint about every 4 minutes of two CPU
    # cores, and no end: it runs until stopped.
    c.train.update(num_steps=1_000_000, schedule="constant",
                   warmup_steps=100, log_every=25, checkpoint_every=150,
                   keep_checkpoints=2)
  return c
