"""Image loading and atomic outputs."""

import os

import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image

from bidigen import media


def test_load_image_centre_crops_and_resizes(tmp_path):
  im = np.zeros((40, 100, 3), np.uint8)
  im[:, 30:70] = 255  # The centre square is white, the sides black.
  path = str(tmp_path / "wide.png")
  Image.fromarray(im).save(path)
  out = media.load_image(path, 16)
  assert out.shape == (16, 16, 3) and out.dtype == np.uint8
  assert out.min() >= 250  # Only the centre 40x40 survives.
  gray = str(tmp_path / "gray.png")
  Image.fromarray(np.full((20, 20), 7, np.uint8)).save(gray)
  assert media.load_image(gray, 8).shape == (8, 8, 3)


def test_frame_names_are_signed_and_padded():
  assert media.frame_name(-4) == "frame_-004.png"
  assert media.frame_name(0) == "frame_+000.png"
  assert media.frame_name(12) == "frame_+012.png"


def test_failed_write_leaves_the_old_output_untouched(tmp_path):
  target = tmp_path / "frames"
  target.mkdir()
  (target / "keep.txt").write_text("old")
  with pytest.raises(RuntimeError):
    with media.atomic_folder(str(target)) as tmp:
      open(os.path.join(tmp, "half.png"), "w").close()
      raise RuntimeError("interrupted")
  assert os.listdir(tmp_path) == ["frames"]
  assert os.listdir(target) == ["keep.txt"]


def test_video_and_folder_outputs(tmp_path):
  frames = np.random.default_rng(0).integers(0, 255, (5, 32, 32, 3),
                                             dtype=np.uint8)
  media.write_output(frames, -2, str(tmp_path / "v.gif"))
  assert iio.imread(str(tmp_path / "v.gif")).shape[0] == 5
  media.write_output(frames, -2, str(tmp_path / "f"))
  names = sorted(os.listdir(tmp_path / "f"))
  assert names == sorted(["contact_sheet.png"] + [
      media.frame_name(o) for o in range(-2, 3)])
  np.testing.assert_array_equal(
      iio.imread(str(tmp_path / "f" / "frame_-002.png")), frames[0])
  assert sorted(os.listdir(tmp_path)) == ["f", "v.gif"]  # No temp left.
  # Outputs get the usual permissions, not the temp files' private ones.
  mask = os.umask(0)
  os.umask(mask)
  assert os.stat(tmp_path / "v.gif").st_mode & 0o777 == 0o666 & ~mask
  assert os.stat(tmp_path / "f").st_mode & 0o777 == 0o777 & ~mask
