"""Datasets by name: the config's ``data`` section picks the builder."""

import os

from bidigen.data import pipeline
from bidigen.data import synthetic

make_loader = pipeline.make_loader


def get_builder(data_config, prepare: bool = False):
  """The TFDS builder for ``data_config``.

  The synthetic data is procedural, so it is generated on first use when
  ``prepare`` is set. Real data must have been prepared beforehand; its
  absence is a one-line error that says where it must be and how.
  """
  data_dir = os.path.expanduser(data_config.data_dir)
  if data_config.name == "bidigen_synthetic":
    if prepare:
      return synthetic.build(data_dir, data_config.builder_config)
    builder = synthetic.BidigenSynthetic(
        data_dir=data_dir, config=data_config.builder_config,
        file_format="array_record")
    pipeline.require_prepared(builder)
    return builder
  if data_config.name == "webvid":
    raise FileNotFoundError(
        f"WebVid data not found in {data_dir}: put the WebVid CSV and videos "
        f"in {data_config.manual_dir} and run `python -m bidigen.main "
        "--config=configs/webvid.py --mode=prepare` (the WebVid builder "
        "lands with the scale-out work; until then train on "
        "configs/synthetic.py)")
  raise ValueError(f"unknown dataset config.data.name={data_config.name!r}; "
                   "known: bidigen_synthetic, webvid")
