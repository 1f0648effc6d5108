"""Datasets by name: the config's ``data`` section picks the builder."""

import os

from bidigen.data import pipeline

make_loader = pipeline.make_loader
NAMES = ("bidigen_synthetic", "camera_photos", "webvid", "video_folder")


def get_builder(data_config, prepare: bool = False):
  """The TFDS builder for ``data_config``.

  The synthetic data is procedural, so it is generated on first use when
  ``prepare`` is set. The camera clips over photographs are generated on
  first use whatever ``prepare`` says (``--mode=encode`` asks for prepared
  data only from the synthetic set), with frames of the clips in
  ``data_config.manual_dir`` when it is set. Real video is built from
  ``data_config.manual_dir`` when ``prepare`` is set; its absence is a
  one-line error that says where it must be and how to prepare it.
  """
  data_dir = os.path.expanduser(data_config.data_dir)
  if data_config.name == "bidigen_synthetic":
    # TFDS (and TensorFlow) only when raw data is read: training from the
    # latent cache imports this package without them.
    from bidigen.data import synthetic  # pylint: disable=g-import-not-at-top
    if prepare:
      return synthetic.build(data_dir, data_config.builder_config)
    builder = synthetic.BidigenSynthetic(
        data_dir=data_dir, config=data_config.builder_config,
        file_format="array_record")
    pipeline.require_prepared(builder)
    return builder
  if data_config.name == "camera_photos":
    from bidigen.data import camera  # pylint: disable=g-import-not-at-top
    return camera.build(data_dir, data_config.builder_config,
                        os.path.expanduser(data_config.manual_dir or ""))
  if data_config.name in ("webvid", "video_folder"):
    return _video_builder(data_config, data_dir, prepare)
  raise ValueError(f"unknown dataset config.data.name={data_config.name!r}; "
                   f"known: {', '.join(NAMES)}")


def _video_builder(data_config, data_dir: str, prepare: bool):
  """The video builder for ``data_config``, split as its folder says.

  A folder with a SOURCES.tsv is split by its ``use`` column, any other by
  hash; the two are different datasets (``videos.video_config``). Without
  the folder (reading data prepared elsewhere) the by-use data is taken
  if prepared, as it is the one that keeps eval_only videos out of train.
  """
  from bidigen.data import videos  # PyAV only when real video is used.
  kind = data_config.name
  manual_dir = os.path.expanduser(data_config.manual_dir)
  if os.path.isdir(manual_dir):
    splits = [videos.split_by(manual_dir)]
  else:
    splits = list(reversed(videos.SPLITS))  # "uses" first.
  for split in splits:
    builder = videos.builder(
        kind, data_dir, resolution=data_config.resolution,
        num_frames=data_config.num_frames, fps=data_config.fps,
        clips_per_video=data_config.clips_per_video,
        test_fraction=data_config.test_fraction, split=split)
    if builder.is_prepared():
      return builder
  if not prepare or not os.path.isdir(manual_dir):
    what = ("the WebVid CSV and videos" if kind == "webvid" else
            f"the videos and their {videos.CAPTIONS_CSV}")
    name = "WebVid data" if kind == "webvid" else "video folder data"
    config = ("--config=configs/webvid.py" if kind == "webvid" else
              "--config=CONFIG")
    raise FileNotFoundError(
        f"{name} not found: {builder.name}/{builder.builder_config.name} is "
        f"not prepared in {data_dir}; put {what} in {manual_dir} "
        f"(--config.data.manual_dir) and run `python -m bidigen.main "
        f"{config} --mode=prepare` with this run's config and overrides")
  return videos.prepare(builder, manual_dir)
