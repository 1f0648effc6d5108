"""The full recipe for real video: WebVid-10M clips at 256px.

Prepare the data once (the CSV of ids/captions and the downloaded videos go in
--config.data.manual_dir), encode it once to TAEF2 latents (any machine with
the full install; an accelerator makes it fast), then train on a TPU slice or
GPU cluster (training needs no TensorFlow):
  python -m bidigen.main --config=configs/webvid.py --mode=prepare
  python -m bidigen.main --config=configs/webvid.py --mode=encode
Your own clips instead (a folder of videos and a captions.csv of path,caption):
  python -m bidigen.main --config=configs/webvid.py \
      --config.data.name=video_folder --config.data.manual_dir=DIR \
      --mode=prepare
  python -m bidigen.main --config=configs/webvid.py --mode=train \
      --workdir=gs://BUCKET/bidigen/webvid
Variants: ``:runlocal`` keeps the recipe's shapes but a small batch and few
steps, to check a machine end to end before a long run.
"""

import os

import ml_collections

import bidigen


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = bidigen.config_variant(__file__, arg, ("default", "runlocal"))
  c = bidigen.sibling_config(__file__, "synthetic")
  # name="video_folder" reads any folder of videos with a captions.csv
  # (path,caption) instead; layouts in bidigen/data/videos.py.
  c.data = dict(
      name="webvid",
      data_dir="~/tensorflow_datasets",
      manual_dir="~/webvid/raw",  # Results CSV + {page_dir}/{videoid}.mp4.
      resolution=256,
      num_frames=33,   # F-16..F+16: expansion beyond the window is trained.
      fps=8,           # Videos are resampled to this rate.
      clips_per_video=4,  # Non-overlapping clips taken from one video.
      test_fraction=0.005,  # Of the videos, by a hash of their id.
      latents_dir="",  # Empty: under data_dir (bidigen.latents.cache_dir).
      encode_clips=0,
  )
  c.model.window = 17
  c.model.context_frames = 8
  # Accelerator recipe: bf16 activations and matmuls (float32 parameters);
  # each block recomputed but its matmuls in the backward pass. On one H200
  # at 8 examples: 1.14x the step time of no remat for
  # 0.51x XLA's temporaries; "none" is faster where memory allows.
  c.model.dtype = "bfloat16"
  c.model.remat = "dots"
  # TAEF2 latents at 256px: 32x32x32.
  c.model.unet = dict(channels=256, channel_mult=(1, 2, 4),
                      attention_levels=(False, True, True), num_heads=8,
                      max_offset=32)
  c.model.text = dict(kind="minilm", path=None, max_length=32)
  c.model.text.path = ml_collections.config_dict.placeholder(str)
  c.train.update(
      num_steps=250_000, batch_size=256, learning_rate=1e-4,
      warmup_steps=5_000, ema_decays=(0.9999, 0.99995), log_every=100,
      checkpoint_every=2_000)
  # Steps: synthetic's 8 DPM-Solver++(2M), which matched 25 DDIM steps on
  # held-out real clips (the model card; it was 50 here, 6x the
  # calls for nothing measured). Measure this model's own curve with
  # --mode=evaluate --config.eval.steps=N once it is trained.
  c.sample.update(guidance=4.0, fps=8)
  # Data parallel across slices, parameters and optimizer state sharded
  # (FSDP) within a slice.
  c.mesh = dict(axes=(("data", -1), ("fsdp", 8)), logical_axis_rules=(
      ("embed", "fsdp"), ("mlp", None), ("text", None), ("conv_h", None),
      ("conv_w", None), ("conv_in", None), ("conv_out", "fsdp")))
  if variant == "runlocal":
    c.train.update(num_steps=20, batch_size=8, log_every=1,
                   checkpoint_every=10)
    c.mesh.axes = (("data", -1), ("fsdp", 1))
  return c
