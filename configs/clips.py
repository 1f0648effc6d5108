"""Real video at the embedded model's size: the project's 126 licensed clips.

The clips (../shared/data/clips beside the checkout: mp4s, captions.csv,
SOURCES.tsv) go through the ``video_folder`` builder at 128px (TAEF2:
16x16x32 latents), 17 frames at 8 fps, the synthetic recipe's shapes, so
its model, training and sampling settings apply unchanged. SOURCES.tsv
splits them: its ``eval_only`` videos (34, licences that forbid training a
distributed model) are the test split, whole, and never train; its
``train`` videos (92) are the train split. ``data.manual_dir`` defaults to
that folder found from this file (``<checkout>/../shared/data/clips``), so
any working directory works; elsewhere pass your copy:
  python -m bidigen.main --config=configs/clips.py --mode=prepare \
      --config.data.manual_dir=../shared/data/clips \
      --config.data.data_dir=/tmp/clips_data
  python -m bidigen.main --config=configs/clips.py --mode=encode \
      --config.data.data_dir=/tmp/clips_data
  python -m bidigen.main --config=configs/clips.py --mode=train \
      --config.data.data_dir=/tmp/clips_data --workdir=workdirs/clips
  python -m bidigen.main --config=configs/clips.py --mode=evaluate \
      --config.data.data_dir=/tmp/clips_data --workdir=workdirs/clips_eval \
      --checkpoint=workdirs/clips
The ``:tiny`` variant is the synthetic ``:tiny`` model on the same videos
at 64px (8x8x32 latents), one clip per video: a quick end-to-end check.
"""

import os

import ml_collections

import bidigen

_HERE = os.path.dirname(os.path.abspath(__file__))
CLIPS_DIR = os.path.normpath(os.path.join(_HERE, "..", "..", "shared",
                                          "data", "clips"))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = bidigen.config_variant(__file__, arg)
  tiny = variant == "tiny"
  c = bidigen.sibling_config(__file__, "synthetic", variant)
  c.data = dict(
      name="video_folder",
      data_dir="~/tensorflow_datasets",
      manual_dir=CLIPS_DIR,
      resolution=64 if tiny else 128,
      num_frames=17,
      # The sources run at 4 to 30 fps; 8 fps (WebVid's rate here) keeps
      # 117 of the 126 videos (the others are under 17 frames, 2.1 s) and
      # gives about 2.5 s of motion per clip.
      fps=8,
      # Non-overlapping clips per video: the videos last 1 to 20 s (up to
      # 9 clips at 8 fps, median 2); 8 keeps nearly all of every video.
      clips_per_video=1 if tiny else 8,
      # Used only for a folder without SOURCES.tsv (split by hash then).
      test_fraction=0.2,
      latents_dir="",  # Empty: under data_dir (bidigen.latents.cache_dir).
      encode_clips=0,
  )
  return c
