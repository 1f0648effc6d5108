"""A web GUI: one image (or a video) and a prompt in, a video and its
frames out; keyframes on a timeline and a loop switch beside them.

  python -m bidigen.gui [--checkpoint=DIR] [--port=7860] [--host=127.0.0.1]
      [--share]

The model loads once at start-up (and compiles the default setting then), so
a request only pays for sampling, plus one compile for each new (frames,
steps, guidance) setting. Requests run one at a time: they share the model.

"Expand" regenerates the last result with one expansion step (window -
context frames) more on that side, from the same image, prompt, seed, steps
and guidance. Noise is drawn per frame offset and both directions advance
together, so the frames already shown come back unchanged and the new ones
join at that end; the result costs a full sampling run (and a compile).

Keyframes (an image at an offset from F0), the loop switch and a video to
extend go to the same compiled sampler as plain expansion (see
expansion.plan_windows): the frames given appear exactly, the rest is
generated to meet them.

The sampler is one compiled call, so the progress bar moves by stages.
"""

import argparse
import atexit
import dataclasses
import os
import shutil
import tempfile
import time
import warnings

from bidigen import process

if __name__ == "__main__":
  os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # No calls home.
  process.tune()  # Before jax starts; may run this again with tcmalloc.

import numpy as np  # noqa: E402
from PIL import Image, UnidentifiedImageError  # noqa: E402

from bidigen import media  # noqa: E402
from bidigen import sample  # noqa: E402

MAX_PIXELS = media.MAX_PIXELS  # Refused before decoding.
MAX_UPLOAD = "25mb"
# The frames gallery wraps as many frames a row as fit (gradio's fixed
# column count overflows and hides some) and is only as tall as its rows.
CSS = """
#gallery .grid-wrap { min-height: 0; }
#gallery .grid-container {
  grid-template-columns: repeat(auto-fill, minmax(72px, 1fr));
  grid-template-rows: none; grid-auto-rows: auto; }
"""
# Real photographs with camera prompts (cat.png is a photograph no training
# set holds: chelsea, a test photo) beside synthetic objects over photos.
EXAMPLES = (
    ("cat.png", "the camera pans to the left over a cat"),
    ("coffee.png", "the camera zooms in on a cup of coffee"),
    ("blue_square_cat.png", "a blue square moves up over a cat"),
    ("red_ball_temple.png", "a red ball moves to the right over a temple"),
    ("two_objects_astronaut.png", "a yellow ball moves left and a green "
     "square moves down in front of an astronaut"),
)


def upload_path(payload, allowed=None) -> str | None:
  """The server-side path of an image input taken without preprocessing.

  The page sends the path of a file it uploaded; a client may send any
  path, so only files inside ``allowed`` (gradio's upload folder and the
  bundled examples) are accepted: the server never reads other files.
  """
  path = payload.get("path") if isinstance(payload, dict) else payload
  if not path:
    return None
  if allowed is None:
    import gradio.utils  # pylint: disable=g-import-not-at-top
    allowed = (gradio.utils.get_upload_folder(), media.EXAMPLES)
  real = os.path.realpath(str(path))
  for folder in allowed:
    folder = os.path.realpath(folder)
    if os.path.commonpath([real, folder]) == folder:
      return real
  raise ValueError("Upload the image through the page: this server reads "
                   "no other files.")


def check_image(path: str | None, max_pixels: int = MAX_PIXELS) -> None:
  """Raises ValueError, in words for the page, unless ``path`` is a
  readable image of at most ``max_pixels`` pixels (read from its header)."""
  if not path:
    raise ValueError("Upload an image first (or click one of the examples).")
  try:
    with Image.open(path) as im:
      w, h = im.size
  except Image.DecompressionBombError:
    raise ValueError(f"The image is too large: the limit is "
                     f"{max_pixels / 1e6:.0f} megapixels.") from None
  except (UnidentifiedImageError, OSError):
    name = os.path.basename(path)
    raise ValueError(f"{name} is not an image file this app can read "
                     "(use PNG, JPEG or WebP).") from None
  if w * h > max_pixels:
    raise ValueError(f"The image is {w}x{h} = {w * h / 1e6:.0f} megapixels; "
                     f"the limit is {max_pixels / 1e6:.0f}. Downscale it "
                     "first (the model works at a few dozen pixels).")


def _whole(name: str, value, low: int, high: int) -> int:
  try:
    n = int(float(value))
    ok = n == float(value) and low <= n <= high
  except (TypeError, ValueError, OverflowError):
    ok = False
  if not ok:
    raise ValueError(f"{name} must be a whole number from {low} to {high}, "
                     f"got {value!r}.")
  return n


def check_settings(frames_before, frames_after, seed, steps, guidance, *,
                   max_frames: int) -> dict:
  """The page's raw numbers as sampler keywords; ValueError in words."""
  max_frames = min(max_frames, sample.MAX_FRAMES_PER_SIDE)
  kw = dict(frames_before=_whole("Frames before", frames_before, 0,
                                 max_frames),
            frames_after=_whole("Frames after", frames_after, 0, max_frames),
            seed=_whole("Seed", seed, 0, sample.MAX_SEED),
            steps=_whole("Steps", steps, 1, sample.MAX_STEPS))
  top = sample.MAX_GUIDANCE
  try:
    ok = 0 <= float(guidance) <= top  # False for NaN.
  except (TypeError, ValueError):
    ok = False
  if not ok:
    raise ValueError(f"Guidance must be in [0, {top:g}], got {guidance!r}.")
  kw["guidance"] = float(guidance)
  return kw


KEYFRAME_SLOTS = 3  # Keyframe rows on the page.


def upload_video_path(payload, allowed=None) -> str | None:
  """``upload_path`` for a video input (gradio nests its file)."""
  if isinstance(payload, dict) and isinstance(payload.get("video"), dict):
    payload = payload["video"]
  return upload_path(payload, allowed)


def keyframe_slots(slots, allowed=None) -> list[tuple[str, int]]:
  """(image payload, offset) pairs from the page -> [(path, offset)] for
  ``sample.request`` (which checks the offsets against the frames asked
  for), empty rows skipped; ValueError in words."""
  out = []
  far = sample.MAX_KEYFRAME_OFFSET
  for i, (image, offset) in enumerate(slots, 1):
    path = upload_path(image, allowed)
    if path:
      check_image(path)
      out.append((path, _whole(f"Keyframe {i}'s offset", offset, -far, far)))
  return out


def timeline(frames_before: int, frames_after: int, known, loop: bool,
             video: bool = False) -> str:
  """One line for the page: the frames asked for, with what is known."""
  known = set(known)
  label = lambda o: ("**F0 (image)**" if o == 0 else f"**F{o:+d} (keyframe)**"
                     if o in known else f"F{o:+d}")
  line = " … ".join(label(o) for o in sorted(
      {-frames_before, frames_after, 0} | known))
  if video:
    line += ", beyond the video's frames"
  return "Timeline: " + line + (", looped back to the start" if loop else "")


def captions(frames_before: int, count: int) -> list[str]:
  """Offset labels in time order: F-4 ... F0 ... F+4."""
  return [f"F{o:+d}" if o else "F0"
          for o in range(-frames_before, count - frames_before)]


def write_video(frames: np.ndarray, frames_before: int, folder: str, *,
                fps: int, scale: int = 4) -> str:
  """An mp4 of the frames in ``folder``; pixels are repeated ``scale``
  times so that H.264's half-resolution colour does not smear them."""
  big = np.repeat(np.repeat(frames, scale, axis=1), scale, axis=2)
  fd, path = tempfile.mkstemp(
      suffix=".mp4", dir=folder,
      prefix=f"bidigen_F{-frames_before:+d}_to_"
      f"F{len(frames) - 1 - frames_before:+d}_")
  os.close(fd)
  media.write_output(big, -frames_before, path, fps=fps,
                     overwrite=True)  # The empty file mkstemp made.
  return path


def build_app(gen: sample.Generator, *, max_frames: int = 64, warm=()):
  """The page, wired to ``gen``; returns a gr.Blocks ready to launch.

  ``warm``: the (frames_before, frames_after, steps, guidance) settings
  already compiled, so the progress bar does not announce a compile.
  """
  import gradio as gr

  cfg = gen.config.sample
  grow = gen.config.model.window - gen.config.model.context_frames
  # The server's own files: the latest request's video (gradio serves a
  # copy from its cache, which delete_cache below empties after an hour).
  folder = tempfile.mkdtemp(prefix="bidigen-gui-")
  atexit.register(shutil.rmtree, folder, ignore_errors=True)
  compiled = set(warm)

  def run(req, prompt, kw, extra, progress):
    """Samples ``req`` with the settings ``kw`` (seed, steps, guidance);
    ``extra``: the frames a video adds on each side beyond the typed
    counts. Returns the outputs and the state "Expand" starts from."""
    total = req.frames_before + 1 + req.frames_after
    setting = (req.frames_before, req.frames_after, kw["steps"],
               kw["guidance"], tuple(sorted(req.known)), req.loop)
    note = "" if setting in compiled else " (compiling this setting first)"
    progress(0.1, desc=f"Sampling {total} frames{note}")
    t0 = time.time()
    try:
      frames = gen.sample(req, prompt, **kw)
    except ValueError as e:  # A loop shorter than a window, say.
      raise gr.Error(str(e)) from None
    compiled.add(setting)
    took = time.time() - t0
    progress(0.9, desc="Writing the video")
    # Requests run one at a time, and gradio copied the last one's video
    # into its cache before this one started: only this one's stays, so a
    # client that left mid-request leaves nothing behind.
    for name in os.listdir(folder):
      os.remove(os.path.join(folder, name))
    video = write_video(frames, req.frames_before, folder, fps=cfg.fps)
    labels = captions(req.frames_before, len(frames))
    last = dict(request=req, prompt=prompt, settings=kw, extra=extra)
    keys = sorted(req.known)
    clip = sum(extra.values())
    known = (f"; {clip + 1} frames from the video" if clip else
             f"; keyframes at {', '.join(f'F{o:+d}' for o in keys)}"
             if keys else "")
    summary = (f"{total} frames, {labels[0]} to {labels[-1]}, at "
               f"{gen.resolution}x{gen.resolution} px; seed {kw['seed']}, "
               f"{kw['steps']} steps, guidance {kw['guidance']:g}{known}"
               f"{'; looped' if req.loop else ''}; sampled in "
               f"{took:.1f} s.")
    return video, list(zip(frames, labels)), last, summary

  def read(image, before, after, seed, steps, guidance, loop, video,
           video_frame, *slots):
    """The page's inputs -> (sample.Request, sampler settings, the frames
    a video adds beyond the typed counts), or gr.Error in words."""
    try:
      kw = check_settings(before, after, seed, steps, guidance,
                          max_frames=max_frames)
      typed = {side: kw.pop(side) for side in ("frames_before",
                                               "frames_after")}
      video = upload_video_path(video)
      if video:
        image = None
        # -1 (the page's default) or empty: the middle frame.
        video_frame = (None if video_frame in (None, "", -1) else
                       _whole("F0's frame of the video", video_frame, 0,
                              sample.MAX_VIDEO_FRAMES - 1))
      else:
        image, video_frame = upload_path(image), None
        check_image(image)
      req = sample.request(gen.resolution, cfg.fps, **typed, image=image,
                           video=video, video_frame=video_frame,
                           keyframes=keyframe_slots(
                               list(zip(slots[::2], slots[1::2]))),
                           loop=bool(loop))
      extra = {side: getattr(req, side) - n for side, n in typed.items()}
      return req, kw, extra
    except (ValueError, FileNotFoundError) as e:
      raise gr.Error(str(e)) from None

  def check(image, prompt, *numbers):
    read(image, *numbers)

  def generate(image, prompt, *numbers, progress=gr.Progress()):
    req, kw, extra = read(image, *numbers)
    cut = gen.encoder.too_long(prompt or "")
    if cut:
      print(f"warning: {cut}", flush=True)
      gr.Warning(cut[0].upper() + cut[1:] + ".")
    return run(req, prompt or "", kw, extra, progress)

  def expander(side):
    def expand(last, progress=gr.Progress()):
      if last is None or getattr(last["request"], side) - last["extra"][
          side] + grow > max_frames:
        gr.Warning("Generate a video first, then expand it." if last is None
                   else f"At most {max_frames} frames a side "
                   "(--max_frames).")
        return (gr.skip(),) * 6
      req = last["request"]
      req = dataclasses.replace(req, **{side: getattr(req, side) + grow})
      extra = last["extra"]  # A video's frames beyond F0, not typed.
      return run(req, last["prompt"], last["settings"], extra, progress) + (
          req.frames_before - extra["frames_before"],
          req.frames_after - extra["frames_after"])
    return expand

  with gr.Blocks(title="bidigen", delete_cache=(3600, 3600)) as app:
    gr.Markdown(
        "# bidigen\nOne image becomes the middle frame F0 of a video: the "
        "model generates the frames before and after it, following the "
        f"prompt. It works at {gen.resolution}x{gen.resolution} px on the "
        "image's centre square.")
    last = gr.State(None)
    with gr.Row():
      with gr.Column():
        image = gr.Image(label="Image (F0)", type="filepath", height=280,
                         elem_id="image",
                         sources=["upload", "clipboard"])
        prompt = gr.Textbox(label="Prompt (optional)", elem_id="prompt",
                            placeholder=EXAMPLES[0][1])
        with gr.Row():
          before = gr.Number(label="Frames before", value=cfg.frames_before,
                             elem_id="frames_before",
                             precision=0, info=f"0 to {max_frames}")
          after = gr.Number(label="Frames after", value=cfg.frames_after,
                            elem_id="frames_after",
                            precision=0, info=f"0 to {max_frames}")
          seed = gr.Number(label="Seed", value=0, precision=0, elem_id="seed")
        steps = gr.Slider(1, 100, value=cfg.steps, step=1, elem_id="steps",
                          label="Denoising steps")
        guidance = gr.Slider(0, 10, value=cfg.guidance, step=0.5,
                             elem_id="guidance",
                             label="Guidance (0: ignore the prompt)")
        loop = gr.Checkbox(label="Loop: the last frame leads back into the "
                           "first", elem_id="loop")
        with gr.Accordion("Keyframes: images the video passes through",
                          open=False, elem_id="keyframes"):
          slots = []
          for i in range(1, KEYFRAME_SLOTS + 1):
            with gr.Row():
              slots.append(gr.Image(label=f"Keyframe {i}", type="filepath",
                                    height=120, elem_id=f"keyframe{i}",
                                    sources=["upload", "clipboard"]))
              slots.append(gr.Number(
                  label="at offset", precision=0, elem_id=f"offset{i}",
                  info="frames from F0; negative: before it"))
        with gr.Accordion("Extend a video instead of an image", open=False,
                          elem_id="extend"):
          clip = gr.Video(label="Video to extend", sources=["upload"],
                          elem_id="clip", height=160)
          clip_frame = gr.Number(
              label="Which of its frames is F0", value=-1, precision=0,
              elem_id="clip_frame",
              info=f"-1: the middle one; at most {sample.MAX_VIDEO_FRAMES} "
              f"frames at {cfg.fps} fps are read; the frame counts above "
              "are added beyond its ends")
        line = gr.Markdown(timeline(cfg.frames_before, cfg.frames_after, (),
                                    False), elem_id="timeline")
        go = gr.Button("Generate", variant="primary", elem_id="generate")
        gr.Examples([[os.path.join(media.EXAMPLES, f), p]
                     for f, p in EXAMPLES], inputs=[image, prompt])
      with gr.Column():
        video = gr.Video(label="Video", autoplay=True, loop=True,
                         interactive=False, height=320, elem_id="video")
        summary = gr.Markdown(elem_id="summary")
        with gr.Row():
          back = gr.Button(f"Expand backwards (+{grow} before)",
                           elem_id="expand_back")
          fwd = gr.Button(f"Expand forwards (+{grow} after)",
                          elem_id="expand_fwd")
        gallery = gr.Gallery(label="Frames", columns=6, format="png",
                             object_fit="contain", height="auto",
                             elem_id="gallery")
    inputs = [image, prompt, before, after, seed, steps, guidance, loop,
              clip, clip_frame] + slots
    outputs = [video, gallery, last, summary]

    def show(before, after, loop, clip, *slots):
      try:
        offsets = [int(o) for k, o in zip(slots[::2], slots[1::2])
                   if k and o not in (None, "")]
        return timeline(int(before), int(after), offsets, bool(loop),
                        bool(clip))
      except (TypeError, ValueError, OverflowError):
        return "Timeline: set whole numbers of frames and offsets."
    for part in [before, after, loop, clip] + slots:
      part.change(show, [before, after, loop, clip] + slots, line,
                  show_progress="hidden")
    # Raw inputs, so that a bad upload reaches check_image and its message;
    # checked in a step of its own, so that outputs keep the last result.
    go.click(check, inputs, None, preprocess=False).success(
        generate, inputs, outputs, preprocess=False, concurrency_id="model")
    for button, side in ((back, "frames_before"), (fwd, "frames_after")):
      button.click(expander(side), [last], outputs + [before, after],
                   concurrency_id="model")
  return app


def main(argv=None) -> None:
  p = argparse.ArgumentParser(
      prog="python -m bidigen.gui", description="Serve bidigen's web GUI.")
  p.add_argument("--checkpoint", default=None,
                 help="a training workdir or an exported model folder "
                 "(default: the embedded model)")
  p.add_argument("--host", default="127.0.0.1",
                 help="address to listen on; 0.0.0.0 serves the whole "
                 "network (default: %(default)s, this machine only)")
  p.add_argument("--port", type=int, default=7860,
                 help="port to listen on (default: %(default)s)")
  p.add_argument("--share", action="store_true",
                 help="also publish a temporary public gradio.live link "
                 "(needs internet)")
  p.add_argument("--max_frames", type=int, default=64,
                 help="most frames a request may ask for on each side "
                 "(default: %(default)s)")
  p.add_argument("--warmup", action=argparse.BooleanOptionalAction,
                 default=True, help="compile the default setting at "
                 "start-up, so the first Generate is quick")
  args = p.parse_args(argv)
  # Noise on every request: gradio's use of a renamed starlette constant, and
  # JAX's fork warning for ffmpeg's subprocess (which execs at once).
  warnings.filterwarnings("ignore", message=".*HTTP_422_UNPROCESSABLE")
  warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called")
  t0 = time.time()
  gen = sample.Generator(args.checkpoint)
  c, r, warm = gen.config.sample, gen.resolution, []
  if args.warmup:
    gen(np.zeros((1, r, r, 3), np.uint8), [""],
        frames_before=c.frames_before, frames_after=c.frames_after)
    warm.append((c.frames_before, c.frames_after, c.steps,
                 float(c.guidance)))
  print(f"model ready in {time.time() - t0:.1f}s", flush=True)
  app = build_app(gen, max_frames=args.max_frames, warm=warm)
  app.queue(default_concurrency_limit=1).launch(
      server_name=args.host, server_port=args.port, share=args.share,
      max_file_size=MAX_UPLOAD, show_error=True, css=CSS)


if __name__ == "__main__":
  main()
