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


import ml_collections

import bidigen


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = bidigen.config_variant(__file__, arg)
  c = bidigen.sibling_config(__file__, "synthetic", variant)
  c.data.name = "camera_photos"
  # A folder of clips (captions.csv, SOURCES.tsv) whose `train` clips lend
  # frames as photographs; empty: the libraries' photographs alone.
  c.data.manual_dir = ""
  # A clip's scene description plus the camera's words: 32 tokens cut them.
  c.model.text.max_length = 64
  return c
