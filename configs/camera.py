"""Camera motion over real photographs (bidigen/data/camera.py): synthetic's
recipe with its data replaced, for a model that follows camera prompts.

Generate the clips (on first use; scikit-image's and scikit-learn's
photographs, plus frames of the ``train`` clips of a folder with captions.csv
and SOURCES.tsv when --config.data.manual_dir names one), encode, train:
  python -m bidigen.main --config=configs/camera.py --mode=encode \
      --config.data.manual_dir=/work/shared/data/clips
  python -m bidigen.main --config=configs/camera.py --mode=train \
      --workdir=workdirs/camera --config.data.manual_dir=/work/shared/data/clips
Variants: ``:tiny`` (64px, 24 + 8 clips, synthetic's tiny model) for tests.
"""

import importlib.util
import os

import ml_collections


def _synthetic():
  """configs/synthetic.py, loaded by path so any working directory works."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                      "synthetic.py")
  spec = importlib.util.spec_from_file_location("bidigen_synthetic_cfg", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "default"
  if variant not in ("default", "tiny"):
    raise ValueError(f"unknown variant {variant!r} of configs/camera.py; "
                     "known: default, tiny")
  c = _synthetic().get_config(variant)
  c.data.name = "camera_photos"
  # A folder of clips (captions.csv, SOURCES.tsv) whose `train` clips lend
  # frames as photographs; empty: the libraries' photographs alone.
  c.data.manual_dir = ""
  # A clip's scene description plus the camera's words: 32 tokens cut them.
  c.model.text.max_length = 64
  return c
