"""Image loading, and outputs that are atomic and never remove what
bidigen did not write."""

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


FRAMES = np.random.default_rng(0).integers(0, 255, (5, 16, 16, 3),
                                           dtype=np.uint8)


def listing(folder):
  return sorted(os.listdir(folder))


def test_a_folder_of_ones_own_is_never_touched(tmp_path):
  target = tmp_path / "mine"
  target.mkdir()
  (target / "keep.txt").write_text("precious")
  for overwrite in (False, True):
    with pytest.raises(ValueError, match="did not write.*keep.txt"):
      media.write_output(FRAMES, -2, str(target), overwrite=overwrite)
  assert listing(target) == ["keep.txt"]
  assert (target / "keep.txt").read_text() == "precious"
  assert listing(tmp_path) == ["mine"]  # No temporary folder left either.


def test_output_dot_is_refused_not_emptied(tmp_path, monkeypatch):
  (tmp_path / "notes.md").write_text("x")
  monkeypatch.chdir(tmp_path)
  with pytest.raises(ValueError, match="not empty"):
    media.check_output(".")
  with pytest.raises(ValueError, match="not empty"):
    media.write_output(FRAMES, -2, ".", overwrite=True)
  assert listing(tmp_path) == ["notes.md"]


def test_empty_folder_then_previous_output_needs_overwrite(tmp_path):
  target = tmp_path / "out"
  target.mkdir()
  media.write_output(FRAMES, -2, str(target))  # Empty: fine.
  first = [media.frame_name(o) for o in range(-2, 3)]
  assert listing(target) == sorted(
      [media.MANIFEST, "contact_sheet.png"] + first)
  with pytest.raises(ValueError, match="--overwrite"):
    media.write_output(FRAMES[:3], -1, str(target))
  assert listing(target) == sorted(
      [media.MANIFEST, "contact_sheet.png"] + first)
  media.write_output(FRAMES[:3], -1, str(target), overwrite=True,
                     info={"prompt": "p"})
  # The old output's extra frames went with it; only the new one is there.
  assert listing(target) == sorted(
      [media.MANIFEST, "contact_sheet.png"] +
      [media.frame_name(o) for o in range(-1, 2)])
  np.testing.assert_array_equal(
      iio.imread(str(target / "frame_-001.png")), FRAMES[0])
  assert media.written_by_bidigen(str(target)) == set(
      listing(target)) - {media.MANIFEST}


def test_user_file_added_to_an_output_blocks_overwrite(tmp_path):
  target = tmp_path / "out"
  media.write_output(FRAMES, -2, str(target))
  (target / "my_edit.png").write_text("mine")
  with pytest.raises(ValueError, match="my_edit.png"):
    media.write_output(FRAMES, -2, str(target), overwrite=True)
  assert (target / "my_edit.png").read_text() == "mine"
  assert len(listing(target)) == 8


def test_existing_video_needs_overwrite(tmp_path):
  video = tmp_path / "v.gif"
  video.write_bytes(b"someone's gif")
  with pytest.raises(ValueError, match="exists.*--overwrite"):
    media.write_output(FRAMES, -2, str(video))
  assert video.read_bytes() == b"someone's gif"
  media.write_output(FRAMES, -2, str(video), overwrite=True)
  assert iio.imread(str(video)).shape[0] == 5
  assert listing(tmp_path) == ["v.gif"]


@pytest.mark.parametrize("name", ["x.avi", "x.webm", "x.MOV", "x.png"])
def test_unknown_suffixes_are_refused(tmp_path, name):
  with pytest.raises(ValueError, match=r"\.mp4 or \.gif"):
    media.write_output(FRAMES, -2, str(tmp_path / name))
  assert listing(tmp_path) == []


def test_a_trailing_slash_makes_a_dotted_name_a_folder(tmp_path):
  media.write_output(FRAMES, -2, f"{tmp_path}/run.v2/")
  assert "contact_sheet.png" in listing(tmp_path / "run.v2")


def test_failed_write_leaves_the_old_output_untouched(tmp_path):
  target = tmp_path / "frames"
  media.write_output(FRAMES, -2, str(target))
  before = {n: (target / n).read_bytes() for n in listing(target)}
  with pytest.raises(RuntimeError):
    with media.output_folder(str(target), overwrite=True) as tmp:
      open(os.path.join(tmp, "half.png"), "w").close()
      raise RuntimeError("interrupted")
  assert {n: (target / n).read_bytes() for n in listing(target)} == before
  with pytest.raises(RuntimeError):
    with media.output_folder(str(tmp_path / "new")) as tmp:
      raise RuntimeError("interrupted")
  assert listing(tmp_path) == ["frames"]


def test_merge_adds_to_a_workdir_and_replaces_only_its_own(tmp_path):
  (tmp_path / "checkpoints").mkdir()
  (tmp_path / "notes.txt").write_text("mine")
  for text in ("first", "second"):
    with media.output_folder(str(tmp_path), merge=True) as tmp:
      with open(os.path.join(tmp, "report.md"), "w") as f:
        f.write(text)
  assert (tmp_path / "report.md").read_text() == "second"
  assert listing(tmp_path) == sorted(
      [media.MANIFEST, "checkpoints", "notes.txt", "report.md"])
  with pytest.raises(ValueError, match="notes.txt"):
    media.check_merge(str(tmp_path), ["notes.txt", "report.md"])
  with pytest.raises(ValueError, match="notes.txt"):
    with media.output_folder(str(tmp_path), merge=True) as tmp:
      with open(os.path.join(tmp, "notes.txt"), "w") as f:
        f.write("overwritten")
  assert (tmp_path / "notes.txt").read_text() == "mine"


def test_video_and_folder_outputs(tmp_path):
  frames = np.random.default_rng(0).integers(0, 255, (5, 32, 32, 3),
                                             dtype=np.uint8)
  media.write_output(frames, -2, str(tmp_path / "v.gif"))
  assert iio.imread(str(tmp_path / "v.gif")).shape[0] == 5
  media.write_output(frames, -2, str(tmp_path / "f"))
  names = sorted(os.listdir(tmp_path / "f"))
  assert names == sorted([media.MANIFEST, "contact_sheet.png"] + [
      media.frame_name(o) for o in range(-2, 3)])
  np.testing.assert_array_equal(
      iio.imread(str(tmp_path / "f" / "frame_-002.png")), frames[0])
  assert sorted(os.listdir(tmp_path)) == ["f", "v.gif"]  # No temp left.
  # Outputs get the usual permissions, not the temp files' private ones.
  mask = os.umask(0)
  os.umask(mask)
  assert os.stat(tmp_path / "v.gif").st_mode & 0o777 == 0o666 & ~mask
  assert os.stat(tmp_path / "f").st_mode & 0o777 == 0o777 & ~mask


def test_an_mp4_is_written_with_no_python_between_fork_and_exec(
    tmp_path, monkeypatch):
  """ffmpeg starts without a preexec_fn under the entry points' settings
  (process.ENV_DEFAULTS): Python run in the forked child of a threaded
  process (JAX, a GUI server) can wait forever on a lock another thread
  held at the fork, and a GUI server under load hung so."""
  import subprocess
  from bidigen import process
  seen = []
  real = subprocess.Popen.__init__

  def spy(self, *args, **kwargs):
    seen.append(kwargs.get("preexec_fn"))
    real(self, *args, **kwargs)
  monkeypatch.setattr(subprocess.Popen, "__init__", spy)
  for name, value in process.ENV_DEFAULTS.items():
    monkeypatch.setenv(name, value)
  media.write_output(np.zeros((3, 16, 16, 3), np.uint8), 0,
                     str(tmp_path / "a.mp4"), fps=8)
  assert seen and seen == [None] * len(seen)
  monkeypatch.delenv("IMAGEIO_FFMPEG_NO_PREVENT_SIGINT")
  media.write_output(np.zeros((3, 16, 16, 3), np.uint8), 0,
                     str(tmp_path / "b.mp4"), fps=8)
  assert any(f is not None for f in seen)  # What the setting prevents.
