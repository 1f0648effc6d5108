"""Property-based tests of what users type and upload: every input either
works or is refused with a one-line ValueError, and nothing is written."""

import io
import math
import os
import re
import tempfile

from hypothesis import given, settings, strategies as st
import numpy as np
from PIL import Image
import pytest

from bidigen import gui
from bidigen import media
from bidigen import sample

# (PIL mode, formats that can store it).
MODES = {
    "1": ("PNG", "BMP", "TIFF", "GIF"), "L": ("PNG", "JPEG", "BMP", "TIFF"),
    "LA": ("PNG", "TIFF"), "P": ("PNG", "BMP", "GIF", "TIFF"),
    "RGB": ("PNG", "JPEG", "BMP", "TIFF", "WEBP", "GIF"),
    "RGBA": ("PNG", "TIFF", "WEBP"), "I;16": ("PNG", "TIFF"),
    "I": ("PNG", "TIFF"), "F": ("TIFF",),
}


@st.composite
def image_files(draw):
  """Bytes of an image file: any mode, size and format; maybe truncated or
  not an image at all."""
  kind = draw(st.sampled_from(["image", "image", "truncated", "noise"]))
  if kind == "noise":
    return draw(st.binary(max_size=256))
  mode = draw(st.sampled_from(sorted(MODES)))
  fmt = draw(st.sampled_from(MODES[mode]))
  w = draw(st.integers(1, 96))
  h = draw(st.sampled_from([1, 2, 7, w, 64, 300]))
  seed = draw(st.integers(0, 2**16))
  pixels = np.random.default_rng(seed).integers(0, 255, (h, w, 4),
                                                dtype=np.uint8)
  im = Image.fromarray(pixels, "RGBA").convert(mode)
  buf = io.BytesIO()
  im.save(buf, format=fmt)
  data = buf.getvalue()
  if kind == "truncated":
    data = data[:draw(st.integers(0, max(0, len(data) - 1)))]
  return data


def one_line(e: BaseException) -> bool:
  return "\n" not in str(e) and str(e).strip() != ""


@pytest.mark.filterwarnings("ignore:Corrupt EXIF:UserWarning",
                            "ignore:Truncated File Read:UserWarning")
@settings(max_examples=150, deadline=None)
@given(data=image_files(), resolution=st.sampled_from([8, 64]),
       suffix=st.sampled_from([".png", ".jpg", ".bin", ""]))
def test_image_loader_works_or_says_why(data, resolution, suffix):
  with tempfile.TemporaryDirectory() as folder:
    path = os.path.join(folder, "f0" + suffix)
    with open(path, "wb") as f:
      f.write(data)
    try:
      out = media.load_image(path, resolution)
    except ValueError as e:
      assert one_line(e) and path in str(e), e
    else:
      assert out.shape == (resolution, resolution, 3)
      assert out.dtype == np.uint8
    assert os.listdir(folder) == ["f0" + suffix]


def test_image_loader_refuses_huge_images_before_decoding(tmp_path):
  bomb = tmp_path / "bomb.png"  # 200 MP in a 24 kB file.
  Image.new("1", (20_000, 10_000)).save(bomb, optimize=True)
  with pytest.raises(ValueError, match="over 50 megapixels"):
    media.load_image(str(bomb), 8)
  big = tmp_path / "big.png"  # 60 MP: under PIL's bomb limit, over ours.
  Image.new("1", (10_000, 6_000)).save(big, optimize=True)
  with pytest.raises(ValueError, match="10000x6000 = 60 megapixels"):
    media.load_image(str(big), 8)
  tall = tmp_path / "tall.png"  # Extreme but small: works.
  Image.new("RGB", (3, 4000), "red").save(tall)
  assert media.load_image(str(tall), 8)[4, 4].tolist() == [255, 0, 0]


anything = st.one_of(
    st.integers(-2**70, 2**70), st.integers(-3, 2000),
    st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
    st.none(), st.text(max_size=6),
    st.sampled_from([0, 1, 1024, 1025, 1000, 1001, 50.0, 50.5, -0.0,
                     2**31 - 1, 2**31]))


@settings(max_examples=400, deadline=None)
@given(before=anything, after=anything, steps=anything, guidance=anything,
       seed=anything, strength=st.one_of(anything, st.floats(0, 2)))
def test_sampler_settings_are_in_range_or_refused(before, after, steps,
                                                  guidance, seed, strength):
  try:
    sample.check_settings(before, after, steps, guidance, seed, strength)
  except ValueError as e:
    assert one_line(e)
    assert str(e).split()[0] in ("frames_before", "frames_after", "steps",
                                 "guidance", "seed", "motion_strength")
    return
  assert (math.isfinite(strength)
          and 0 <= strength <= sample.MAX_MOTION_STRENGTH)
  for n, high in ((before, sample.MAX_FRAMES_PER_SIDE),
                  (after, sample.MAX_FRAMES_PER_SIDE), (seed, sample.MAX_SEED)):
    assert type(n) is int and 0 <= n <= high
  assert steps is None or (type(steps) is int
                           and 1 <= steps <= sample.MAX_STEPS)
  assert guidance is None or (math.isfinite(guidance)
                              and 0 <= guidance <= sample.MAX_GUIDANCE)


@settings(max_examples=300, deadline=None)
@given(size=st.one_of(st.integers(0, 1100), st.sampled_from(
    [64, 128, 129, 512, 1023, 1024, 1025])), resolution=st.sampled_from([64, 128]),
       frames=st.one_of(st.integers(1, 2049), st.sampled_from([512, 513])))
def test_output_resolution_is_served_or_refused(size, resolution, frames):
  """--output_resolution, the GUI's and a Generator's image size: from the
  model's resolution to MAX_OUTPUT_RESOLUTION, within MAX_OUTPUT_PIXELS
  (512 frames at 512 px pass, 513 do not)."""
  ok = (resolution <= size <= sample.MAX_OUTPUT_RESOLUTION
        and frames * size * size <= sample.MAX_OUTPUT_PIXELS)
  try:
    sample.check_output_resolution(size, resolution, frames)
  except ValueError as e:
    assert not ok and one_line(e) and f"{size}px" in str(e), e
  else:
    assert ok


@settings(max_examples=400, deadline=None)
@given(before=anything, after=anything, seed=anything, steps=anything,
       guidance=anything, max_frames=st.integers(0, 5000))
def test_gui_settings_convert_or_say_why(before, after, seed, steps,
                                         guidance, max_frames):
  try:
    kw = gui.check_settings(before, after, seed, steps, guidance,
                            max_frames=max_frames)
  except ValueError as e:
    assert one_line(e)
    return
  # What the page accepts, the sampler accepts too.
  sample.check_settings(kw["frames_before"], kw["frames_after"], kw["steps"],
                        kw["guidance"], kw["seed"])
  assert max(kw["frames_before"], kw["frames_after"]) <= max_frames


def test_keyframe_loop_and_video_requests_are_checked_first(tmp_path):
  """Each mistake is one ValueError naming it, raised before the model
  loads (so in well under a second), and nothing is written."""
  image = str(tmp_path / "f0.png")
  Image.new("RGB", (8, 8)).save(image)
  (tmp_path / "clip.mp4").write_bytes(b"not a video")
  out = str(tmp_path / "out.mp4")
  kw = dict(prompt="", frames_before=4, frames_after=8, seed=0, output=out)
  cases = [
      (dict(image=image, video=image), "give --image or --video, not both"),
      (dict(image=None), "--image (or --video) is required"),
      (dict(image=image, keyframes=["end.png"]), "expected PATH@OFFSET"),
      (dict(image=image, keyframes=[f"{image}@x"]), "expected PATH@OFFSET"),
      (dict(image=image, keyframes=[f"{image}@3", f"{image}@3"]),
       "a keyframe at F+3: that frame is given twice"),
      (dict(image=image, keyframes=[f"{image}@0"]),
       "a keyframe at F+0: F0 is the image itself"),
      (dict(image=image, keyframes=[f"{image}@9"]),
       "a keyframe at F+9 is outside the frames asked for (F-4 to F+8)"),
      (dict(image=image, keyframes=[f"{tmp_path}/no.png@3"]),
       "image not found"),
      (dict(image=None, video=str(tmp_path / "clip.mp4")),
       "cannot read video"),
      (dict(image=None, video=str(tmp_path / "none.mp4")), "video not found"),
      (dict(image=None, video=str(tmp_path)), "is a folder"),
  ]
  for args, needle in cases:
    with pytest.raises((ValueError, FileNotFoundError)) as e:
      sample.run(**{**kw, **args})
    assert needle in str(e.value) and one_line(e.value), (args, e.value)
  assert sorted(os.listdir(tmp_path)) == ["clip.mp4", "f0.png"]
  assert sample.parse_keyframe("a@b.png@-8") == ("a@b.png", -8)


def test_a_video_request_is_its_frames_known_around_f0():
  """sample.from_video, the CLI's and the GUI's: F0 the picked frame, the
  others known at their offsets, the typed counts beyond the video's ends;
  a frame outside the video, or a request over the length limit, is a
  one-line error naming it."""
  clip = np.arange(5, dtype=np.uint8)[:, None, None, None] * np.ones(
      (1, 4, 4, 3), np.uint8)
  f0, known, before, after = sample.from_video(clip, 1, 2, 3)
  assert f0[0, 0, 0] == 1 and (before, after) == (3, 6)
  assert {o: int(f[0, 0, 0]) for o, f in known.items()} == {
      -1: 0, 1: 2, 2: 3, 3: 4}
  for i0, b, needle in ((5, 0, "video frame 5 picked as F0, but the video "
                                "has 5 frames (0 to 4)"),
                        (-1, 0, "video frame -1"),
                        (1, sample.MAX_FRAMES_PER_SIDE, "frames_before")):
    with pytest.raises(ValueError, match=re.escape(needle)) as e:
      sample.from_video(clip, i0, b, 0)
    assert one_line(e.value)


def write_mp4(path, frames, rate=8):
  """uint8 frames [N, H, W, 3] as an mpeg4 .mp4 at ``rate`` fps."""
  import av
  with av.open(str(path), "w") as out:
    stream = out.add_stream("mpeg4", rate=rate)
    stream.height, stream.width = frames.shape[1:3]
    stream.pix_fmt = "yuv420p"
    for frame in frames:
      out.mux(stream.encode(av.VideoFrame.from_ndarray(frame,
                                                       format="rgb24")))
    out.mux(stream.encode())
  return str(path)


def test_a_request_is_read_and_checked_in_one_place(tmp_path, monkeypatch):
  """sample.request, what the CLI, the GUI and Colab build: an image or a
  video and keyframes -> F0 and the known frames at their offsets, read at
  the size asked for. A video is read up to sample.MAX_VIDEO_FRAMES (a
  long one costs no more), and each mistake is one line naming it."""
  image = str(tmp_path / "f0.png")
  Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(image)
  key = str(tmp_path / "k.png")
  Image.fromarray(np.full((8, 8, 3), 50, np.uint8)).save(key)
  req = sample.request(16, 8, image=image, frames_before=2, frames_after=6,
                       keyframes=[(key, 6), (key, -2)], loop=True)
  assert req.frame0.shape == (16, 16, 3) and req.frame0.mean() > 190
  assert sorted(req.known) == [-2, 6] and req.known[6].mean() < 60
  assert (req.frames_before, req.frames_after, req.loop) == (2, 6, True)
  # Twelve frames of rising grey; only MAX_VIDEO_FRAMES are read.
  grey = np.arange(12, dtype=np.uint8)[:, None, None, None] * 20
  video = write_mp4(tmp_path / "v.mp4", np.broadcast_to(
      grey, (12, 32, 48, 3)).copy())
  monkeypatch.setattr(sample, "MAX_VIDEO_FRAMES", 5)
  req = sample.request(16, 8, video=video, frames_before=1, frames_after=3,
                       keyframes=[(key, 4)])
  assert req.video_frame == 2 and sorted(req.known) == [-2, -1, 1, 2, 4]
  assert (req.frames_before, req.frames_after) == (3, 5)
  assert abs(float(req.frame0.mean()) - 40) < 6  # The video's frame 2.
  one = write_mp4(tmp_path / "one.mp4", np.full((1, 16, 16, 3), 9, np.uint8))
  req = sample.request(16, 8, video=one, frames_before=2, frames_after=2)
  assert req.known == {} and (req.frames_before, req.frames_after) == (2, 2)
  (tmp_path / "k.txt").write_text("not a video")
  truncated = tmp_path / "cut.mp4"  # Its index (at the end) cut off.
  truncated.write_bytes(open(video, "rb").read()[:300])
  for kw, needle in [
      (dict(video=video, keyframes=[(key, 1)]),
       "a keyframe at F+1: that frame is a frame of the video"),
      (dict(video=video, keyframes=[(key, 9)]),
       "a keyframe at F+9 is outside the frames asked for (F-2 to F+2): "
       "ask for more frames after F0"),
      (dict(video=video, video_frame=5), "video frame 5 picked as F0, but "
       "the video has 5 frames"),
      (dict(image=image, keyframes=[(key, -3)]), "outside the frames"),
      (dict(image=image, frames_after=1,
            keyframes=[(str(tmp_path / "no.png"), 1)]),
       "image not found"),
      (dict(image=image, video=video), "not both"),
      (dict(), "an image (or a video) is required"),
      (dict(video=str(truncated)), "cannot read video"),
      (dict(video=str(tmp_path / "k.txt")), "cannot read video"),
  ]:
    with pytest.raises((ValueError, FileNotFoundError)) as e:
      sample.request(16, 8, **{"frames_before": 0, "frames_after": 0, **kw})
    assert needle in str(e.value) and one_line(e.value), (kw, e.value)


def test_video_frame_out_of_range_writes_nothing(tmp_path, tiny_run):
  """--video_frame past the video's end, through sample.run with a real
  mp4: one line naming it, and the output never written."""
  video = write_mp4(tmp_path / "clip.mp4", np.arange(
      6, dtype=np.uint8)[:, None, None, None] * np.full((64, 64, 3), 40,
                                                       np.uint8))
  out = str(tmp_path / "out.mp4")
  with pytest.raises(ValueError, match="video frame 40 picked as F0") as e:
    sample.run(image=None, video=video, video_frame=40, prompt="",
               frames_before=1, frames_after=1, seed=0, output=out,
               checkpoint=tiny_run[0])
  assert one_line(e.value)
  assert sorted(os.listdir(tmp_path)) == ["clip.mp4"]


@settings(max_examples=60, deadline=None)
@given(prompt=st.text(max_size=200))
def test_any_prompt_text_encodes_to_the_models_text_shape(prompt):
  """A prompt is any text a user can type or paste: control characters,
  NUL, escape sequences, right-to-left marks, empty. Each encodes to the
  one text shape the UNet sees (so the request samples), and a long one
  is named, not refused."""
  from bidigen import text
  from tests.conftest import tiny_text_encoder
  enc = _ENCODER.setdefault("tiny", text.load_text_encoder(
      "minilm", tiny_text_encoder(), 16))
  tokens, mask = enc.encode([prompt, "the camera pans left"])
  assert tokens.shape[:2] == mask.shape == (2, 16)
  assert np.isfinite(np.asarray(tokens)).all() and mask[0].sum() >= 2
  cut = enc.too_long(prompt)
  assert cut is None or one_line(cut)


_ENCODER = {}  # Loaded once for the property test's examples.
