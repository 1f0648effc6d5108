"""The web GUI: its checks as functions, then the page in a real Chromium.

The browser test starts ``python -m bidigen.gui`` as a person would, uploads
a bundled image through the page and reads back what the page shows. It
drives Debian's Chromium (playwright cannot download its own browser here;
`make install` installs it); without one it skips, saying why.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

from bidigen import gui
from bidigen import media
from bidigen import sample
from tests.conftest import xla_flags

EXAMPLE = os.path.join(media.EXAMPLES, "red_ball_temple.png")
# Small, so the test compiles and samples quickly: 5 frames, 4 steps.
BEFORE, AFTER, STEPS = 2, 2, 4
with open(os.path.join(os.path.dirname(media.EXAMPLES), "default_model",
                       "config.json")) as f:
  _CONFIG = json.load(f)
_MODEL, _MODEL_SAMPLE = _CONFIG["model"], _CONFIG["sample"]
GROW = _MODEL["window"] - _MODEL["context_frames"]  # One expansion step.


def test_check_image_accepts_an_image_and_explains_bad_ones(tmp_path):
  gui.check_image(EXAMPLE)
  with pytest.raises(ValueError, match="Upload an image first"):
    gui.check_image(None)
  text = tmp_path / "notes.png"
  text.write_text("not an image")
  with pytest.raises(ValueError, match="notes.png is not an image file"):
    gui.check_image(str(text))
  big = tmp_path / "big.png"
  Image.new("RGB", (3000, 2000)).save(big)
  with pytest.raises(ValueError, match=r"3000x2000 = 6 megapixels; the "
                     r"limit is 5\b"):
    gui.check_image(str(big), max_pixels=5_000_000)
  assert gui.upload_path({"path": EXAMPLE, "orig_name": "x"}) == EXAMPLE
  assert gui.upload_path(None) is None
  # Only uploads (and the bundled examples): never another server file.
  up = tmp_path / "uploads"
  up.mkdir()
  (up / "a.png").write_bytes(b"x")
  (up / "link.png").symlink_to("/etc/hostname")
  assert gui.upload_path({"path": str(up / "a.png")}, [str(up)]) == str(
      up / "a.png")
  for bad in ("/etc/passwd", "a.png", str(up / ".." / "big.png"),
              str(up / "link.png")):
    with pytest.raises(ValueError, match="Upload the image through the page"):
      gui.upload_path({"path": bad}, [str(up)])


def test_keyframes_timeline_and_video_inputs(tmp_path):
  allowed = [media.EXAMPLES]
  other = os.path.join(media.EXAMPLES, "coffee.png")
  slots = [({"path": EXAMPLE}, 8), (None, 3), ({"path": other}, -2.0)]
  assert gui.keyframe_slots(slots, allowed) == [(EXAMPLE, 8), (other, -2)]
  for bad, match in [
      ([({"path": EXAMPLE}, 2.5)], "Keyframe 1's offset must be a whole "
       "number"),
      ([(None, 1), ({"path": EXAMPLE}, None)], "Keyframe 2's offset"),
      ([({"path": "/etc/passwd"}, 2)], "Upload the image through the page"),
  ]:
    with pytest.raises(ValueError, match=match):
      gui.keyframe_slots(bad, allowed)
  # The offsets' rule is the CLI's (sample.request, tests/test_inputs.py).
  with pytest.raises(ValueError, match="given twice"):
    sample.request(16, 8, image=EXAMPLE, frames_before=4, frames_after=8,
                   keyframes=gui.keyframe_slots(
                       [({"path": EXAMPLE}, 3), ({"path": other}, 3)],
                       allowed))
  assert gui.timeline(4, 12, [8], True) == (
      "Timeline: F-4 … **F0 (image)** … **F+8 (keyframe)** … F+12, looped "
      "back to the start")
  assert gui.timeline(0, 4, [], False, video=True) == (
      "Timeline: **F0 (image)** … F+4, beyond the video's frames")
  nested = {"video": {"path": EXAMPLE}, "subtitles": None}
  assert gui.upload_video_path(nested, allowed) == EXAMPLE
  assert gui.upload_video_path(None, allowed) is None


def test_check_settings_converts_and_rejects_out_of_range():
  kw = gui.check_settings(2, 3.0, 7, 4, 2.5, max_frames=64)
  assert kw == dict(frames_before=2, frames_after=3, seed=7, steps=4,
                    guidance=2.5)
  for bad, match in [
      (dict(frames_before=-1), "Frames before must be a whole number from 0 "
       "to 64, got -1"),
      (dict(frames_after=65), "Frames after .* got 65"),
      (dict(frames_after=2.5), "Frames after must be a whole number"),
      (dict(frames_before=None), "Frames before"),
      (dict(steps=0), "Steps"),
      (dict(guidance=-1), "Guidance"),
  ]:
    args = dict(frames_before=2, frames_after=2, seed=0, steps=4,
                guidance=2.0) | bad
    with pytest.raises(ValueError, match=match):
      gui.check_settings(**args, max_frames=64)
  # The GUI's limit never exceeds the sampler's.
  limit = sample.MAX_FRAMES_PER_SIDE
  with pytest.raises(ValueError, match=f"to {limit}, got {limit + 1}"):
    gui.check_settings(limit + 1, 0, 0, 1, 0, max_frames=10**6)


def test_captions_and_video(tmp_path):
  assert gui.captions(4, 9) == ["F-4", "F-3", "F-2", "F-1", "F0", "F+1",
                                "F+2", "F+3", "F+4"]
  assert gui.captions(0, 3) == ["F0", "F+1", "F+2"]
  frames = np.random.default_rng(0).integers(0, 255, (5, 16, 16, 3),
                                             np.uint8)
  path = gui.write_video(frames, 2, str(tmp_path), fps=8, scale=4)
  assert os.path.basename(path).startswith("bidigen_F-2_to_F+2_")
  import imageio.v3 as iio
  video = iio.imread(path)
  assert video.shape == (5, 64, 64, 3)


# The browser test.


def _chromium() -> str | None:
  """Debian's Chromium binary (`make install` installs it where it can)."""
  for p in ("/usr/lib/chromium/chromium", shutil.which("chromium"),
            shutil.which("chromium-browser")):
    if p and os.path.isfile(p) and os.access(p, os.X_OK):
      return p
  return None


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
  """``python -m bidigen.gui`` on a free port; yields its URL."""
  port = _free_port()
  log = tmp_path_factory.mktemp("gui") / "server.log"
  # Its own temp folder and an empty working folder: the test checks that
  # the server writes nowhere else.
  tmp, cwd = (tmp_path_factory.mktemp(n) for n in ("gui_tmp", "gui_cwd"))
  env = dict(os.environ, TMPDIR=str(tmp))
  # One device: 8 virtual ones would each do the work.
  env["XLA_FLAGS"] = xla_flags(1)
  with open(log, "w") as out:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bidigen.gui", f"--port={port}",
         "--no-warmup"], stdout=out, stderr=subprocess.STDOUT, env=env,
        cwd=cwd)
  url = f"http://127.0.0.1:{port}/"
  try:
    deadline = time.time() + 600
    while True:
      if proc.poll() is not None:
        pytest.fail(f"the GUI server exited:\n{log.read_text()[-3000:]}")
      try:
        urllib.request.urlopen(url, timeout=5).close()
        break
      except OSError:
        if time.time() > deadline:
          pytest.fail(f"no GUI server after 600s:\n{log.read_text()}")
        time.sleep(1)
    yield url, proc, log, tmp, cwd
  finally:
    proc.terminate()
    try:
      proc.wait(30)
    except subprocess.TimeoutExpired:
      proc.kill()


@pytest.fixture(scope="module")
def page():
  playwright = pytest.importorskip("playwright.sync_api")
  exe = _chromium()
  if exe is None:
    pytest.skip("no Chromium: `make install` installs it with apt-get as "
                "root; here that was not possible")
  with playwright.sync_playwright() as p:
    browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
    yield browser.new_page(viewport={"width": 1280, "height": 1100})
    browser.close()


def _error_text(page, match: str, timeout: float = 120_000) -> str:
  toast = page.locator(".toast-body").filter(has_text=match)
  toast.first.wait_for(timeout=timeout)
  return toast.first.inner_text()


@pytest.mark.slow
def test_generate_in_the_browser(server, page, tmp_path):
  url, proc, log, _, _ = server
  page.goto(url)
  page.locator("#generate").wait_for(timeout=60_000)

  # A text file dressed as a PNG: a message in the page, no crash.
  fake = tmp_path / "notes.png"
  fake.write_text("this is not an image")
  page.locator("#image input[type=file]").set_input_files(str(fake))
  page.locator("#generate").click()
  assert "notes.png is not an image file" in _error_text(page, "notes.png")

  # A real image with frame counts out of range, then in range.
  page.reload()
  page.locator("#image input[type=file]").set_input_files(EXAMPLE)
  page.locator("#image img").first.wait_for(timeout=60_000)
  page.locator("#prompt textarea").fill("a red ball moves to the right")
  page.locator("#frames_before input").fill("9999")
  page.locator("#generate").click()
  assert "got 9999" in _error_text(page, "Frames before")
  page.locator("#frames_before input").fill(str(BEFORE))
  page.locator("#frames_after input").fill(str(AFTER))
  page.locator("#steps input[type=number]").fill(str(STEPS))
  page.locator("#steps input[type=number]").press("Enter")
  t0 = time.time()
  page.locator("#generate").click()
  video = page.locator("#video video")
  video.wait_for(timeout=300_000)
  took = time.time() - t0
  assert proc.poll() is None, log.read_text()
  count = BEFORE + 1 + AFTER
  _check_result(page, count, BEFORE)
  shot = tmp_path / "gui.png"
  page.screenshot(path=str(shot), full_page=True)
  print(f"\n{count} frames in {took:.1f}s from the click to the video "
        f"(compile included); screenshot: {shot}")

  # One click adds an expansion step after the last frame.
  page.locator("#expand_fwd").click()
  grown = AFTER + GROW
  page.locator("#summary").filter(has_text=f"F+{grown}").wait_for(
      timeout=300_000)
  _check_result(page, BEFORE + 1 + grown, BEFORE)
  assert page.locator("#frames_after input").input_value() == str(grown)
  assert proc.poll() is None, log.read_text()
  shot = tmp_path / "gui_expanded.png"
  page.screenshot(path=str(shot), full_page=True)
  print(f"after 'Expand forwards': {shot}")

  # A keyframe on the timeline and the loop switch.
  page.locator("#keyframes").get_by_text("Keyframes").first.click()
  other = os.path.join(media.EXAMPLES, "coffee.png")
  page.locator("#keyframe1 input[type=file]").set_input_files(other)
  page.locator("#keyframe1 img").first.wait_for(timeout=60_000)
  page.locator("#offset1 input").fill(str(grown))
  page.locator("#offset1 input").press("Enter")
  page.locator("#loop input").check()
  page.locator("#timeline").filter(has_text=f"F+{grown} (keyframe)").filter(
      has_text="looped").wait_for(timeout=30_000)
  page.locator("#generate").click()
  page.locator("#summary").filter(has_text=f"keyframes at F+{grown}").filter(
      has_text="looped").wait_for(timeout=300_000)
  _check_result(page, BEFORE + 1 + grown, BEFORE)

  # A video instead of the image: its frames known, two more each side.
  clip = tmp_path / "clip.mp4"
  image = np.asarray(Image.open(EXAMPLE).convert("RGB").resize((64, 64)))
  media.write_output(np.stack([np.roll(image, 2 * i, 1) for i in range(6)]),
                     0, str(clip), fps=_MODEL_SAMPLE["fps"])
  page.reload()  # A fresh page: no image, keyframe or loop.
  page.locator("#steps input[type=number]").fill(str(STEPS))
  page.locator("#steps input[type=number]").press("Enter")
  page.locator("#extend").get_by_text("Extend a video").first.click()
  page.locator("#clip input[type=file]").set_input_files(str(clip))
  page.locator("#clip video").first.wait_for(timeout=60_000)
  page.locator("#frames_before input").fill("2")
  page.locator("#frames_after input").fill("2")
  page.locator("#generate").click()
  page.locator("#summary").filter(has_text="6 frames from the video").wait_for(
      timeout=300_000)
  # F0 is the video's frame 3 (the middle): 3 + 2 before, 2 + 2 after.
  page.locator("#gallery .caption-label").filter(has_text="F-5").wait_for(
      timeout=30_000)
  _check_result(page, 2 + 6 + 2, 2 + 3)
  assert proc.poll() is None, log.read_text()


def _check_result(page, count: int, before: int) -> None:
  """The gallery holds ``count`` captioned frames; the video decodes."""
  items = page.locator("#gallery .thumbnail-item")
  assert items.count() == count
  labels = [c.strip() for c in page.locator(
      "#gallery .caption-label").all_inner_texts()]
  assert labels == gui.captions(before, count)
  summary = page.locator("#summary").inner_text()
  assert f"{count} frames, {labels[0]} to {labels[-1]}" in summary
  page.wait_for_function(
      "document.querySelector('#video video').videoWidth > 0",
      timeout=30_000)


def _call(url: str, api: str, data: list) -> tuple[str, object]:
  """One request through gradio's HTTP API, as any client could send it:
  ("complete", outputs) or ("error", message)."""
  base = url + "gradio_api/call/" + api
  req = urllib.request.Request(base, json.dumps({"data": data}).encode(),
                               {"Content-Type": "application/json"})
  with urllib.request.urlopen(req, timeout=60) as r:
    event = json.load(r)["event_id"]
  with urllib.request.urlopen(f"{base}/{event}", timeout=600) as r:
    lines = r.read().decode().splitlines()
  kind = [l.split(": ", 1)[1] for l in lines if l.startswith("event: ")][-1]
  payload = json.loads([l[6:] for l in lines if l.startswith("data: ")][-1])
  return kind, (payload.get("error") if kind == "error" else payload)


@pytest.mark.slow
def test_server_survives_bad_requests_and_writes_only_its_temp(server,
                                                               tmp_path):
  """Requests no page would send: server paths in the image field, a
  10k-character prompt, an image over the pixel limit, an upload over the
  size limit, two requests at once. Each gets an answer; the server keeps
  serving and writes only under its own temp folder."""
  gradio_client = pytest.importorskip("gradio_client")
  url, proc, log, tmp, cwd = server
  client = gradio_client.Client(url, verbose=False)
  guidance = _MODEL_SAMPLE["guidance"]
  # Loop, video, its F0 frame and three empty keyframe rows.
  settings = [BEFORE, AFTER, 0, STEPS, guidance, False, None, -1] + [
      None, None] * gui.KEYFRAME_SLOTS

  secret = tmp_path / "secret.png"  # A real image the server may not read.
  Image.new("RGB", (64, 64), "red").save(secret)
  for path in (str(secret), "/etc/passwd", "../../etc/passwd"):
    for payload in ({"path": path}, {"path": path, "meta": {
        "_type": "gradio.FileData"}}):
      kind, msg = _call(url, "generate", [payload, "x"] + settings)
      assert kind == "error", (payload, msg)
      assert ("Upload the image through the page" in msg
              or "not uploaded by a user" in msg), msg

  huge = tmp_path / "huge.png"  # 60 MP, but a small file: refused unread.
  Image.new("L", (10_000, 6_000)).save(huge, optimize=True)
  with pytest.raises(Exception, match="megapixels"):
    client.predict(gradio_client.handle_file(str(huge)), "x", *settings,
                   api_name="/generate")
  heavy = tmp_path / "heavy.png"  # Over the 25 MB upload limit.
  heavy.write_bytes(os.urandom(26 * 2**20))
  with pytest.raises(Exception):
    client.predict(gradio_client.handle_file(str(heavy)), "x", *settings,
                   api_name="/generate")

  # The request's own rules (sample.request), through the API: a keyframe
  # on F0, a text file as the video; a prompt of control characters samples.
  key0 = settings[:8] + [{"path": EXAMPLE}, 0] + settings[10:]
  kind, msg = _call(url, "generate", [{"path": EXAMPLE}, "x"] + key0)
  assert kind == "error" and "a keyframe at F+0: F0 is the image" in msg, msg
  fake = tmp_path / "clip.mp4"
  fake.write_text("not a video")
  with pytest.raises(Exception, match="cannot read video"):
    client.predict(None, "x", *settings[:6],
                   gradio_client.handle_file(str(fake)),
                   *settings[7:], api_name="/generate")
  kind, out = _call(url, "generate", [{"path": EXAMPLE},
                                      "\x00\x1b[31mred\u202e\n\t"] + settings)
  assert kind == "complete" and len(out[1]) == BEFORE + 1 + AFTER, out

  # Two requests at once, one with a 10k-character prompt: both answered.
  import concurrent.futures
  prompts = ["a red ball moves to the right", "ball " * 2000]
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    results = list(pool.map(lambda p: _call(
        url, "generate", [{"path": EXAMPLE}, p] + settings), prompts))
  for kind, out in results:
    assert kind == "complete", out
    video, gallery, summary = out[0], out[1], out[-1]
    assert len(gallery) == BEFORE + 1 + AFTER
    assert f"{BEFORE + 1 + AFTER} frames" in summary
    for f in [video] + [g["image"] for g in gallery]:
      assert os.path.realpath(f["path"]).startswith(
          os.path.realpath(tmp) + os.sep), f
  assert "the prompt is 2002 tokens long" in log.read_text()

  urllib.request.urlopen(url, timeout=10).close()  # Still serving.
  assert proc.poll() is None, log.read_text()[-3000:]
  assert os.listdir(cwd) == []


def _rss_mb(pid: int) -> float:
  with open(f"/proc/{pid}/status") as f:
    line = next(l for l in f if l.startswith("VmRSS:"))
  return int(line.split()[1]) / 1024


@pytest.mark.slow
def test_sixteen_requests_from_four_clients_get_their_own_videos(server):
  """One server, four gradio_client clients sending four requests each at
  once (seeds 0-7, each seed twice): every request gets its own video (the
  same seed the same frames, another seed other frames, F0 the same for
  all), queued requests hear their place in the queue, the server's memory
  stays flat after the first compile, and a client that leaves mid-request
  leaves no file of its own in the server's folder."""
  gradio_client = pytest.importorskip("gradio_client")
  import concurrent.futures
  url, proc, log, tmp, _ = server
  guidance = _MODEL_SAMPLE["guidance"]

  def settings(seed):
    return [BEFORE, AFTER, seed, STEPS, guidance, False, None, -1] + [
        None, None] * gui.KEYFRAME_SLOTS

  def frames(out):
    gallery = out[1]
    return np.stack([np.asarray(Image.open(g["image"])) for g in gallery])

  def client_run(c, seeds):
    """One client's requests, one after another; (seed, frames, ranks)."""
    client = gradio_client.Client(url, verbose=False)
    done = []
    for seed in seeds:
      job = client.submit(gradio_client.handle_file(EXAMPLE), "a red ball",
                          *settings(seed), api_name="/generate")
      ranks = set()
      deadline = time.time() + 600  # A hung server fails, not blocks.
      while not job.done():
        assert time.time() < deadline, f"request {seed}: no answer"
        s = job.status()
        if s.code == gradio_client.utils.Status.IN_QUEUE and s.rank:
          ranks.add((s.rank, s.queue_size))
        time.sleep(0.05)
      done.append((seed, frames(job.result()), ranks))
    client.close()
    return done

  # The first round compiles; memory is measured from its end.
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    first = list(pool.map(lambda c: client_run(c, [c]), range(4)))
  rss_first = _rss_mb(proc.pid)
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    rest = list(pool.map(lambda c: client_run(
        c, [(c + 4 * k) % 8 for k in (1, 2, 3)]), range(4)))
  rss_last = _rss_mb(proc.pid)
  results = [r for client in first + rest for r in client]
  assert len(results) == 16
  by_seed = {}
  for seed, video, _ in results:
    assert video.shape[0] == BEFORE + 1 + AFTER
    by_seed.setdefault(seed, []).append(video)
  assert sorted(by_seed) == list(range(8))
  f0 = results[0][1][BEFORE]
  for seed, (a, b) in by_seed.items():
    np.testing.assert_array_equal(a, b, err_msg=f"seed {seed}")
    np.testing.assert_array_equal(a[BEFORE], f0)  # The user's F0.
  assert not np.array_equal(by_seed[0][0], by_seed[1][0])
  ranks = set().union(*(r for _, _, r in results))
  assert any(rank >= 1 and size >= 2 for rank, size in ranks), ranks

  # A client that leaves while its request runs.
  # The server's own folder (gradio's cache keeps copies for an hour,
  # delete_cache in gui.build_app).
  videos = lambda: sorted(f for d in os.listdir(tmp)
                          if d.startswith("bidigen-gui-")
                          for f in os.listdir(os.path.join(tmp, d)))
  before_leaving = videos()
  client = gradio_client.Client(url, verbose=False)
  job = client.submit(gradio_client.handle_file(EXAMPLE), "a red ball",
                      *settings(99), api_name="/generate")
  running = (gradio_client.utils.Status.PROCESSING,
             gradio_client.utils.Status.PROGRESS)
  deadline = time.time() + 300
  while job.status().code not in running and time.time() < deadline:
    time.sleep(0.05)
  assert job.status().code in running, job.status()
  job.cancel()
  client.close()
  after = client_run(0, [0])  # The server is free again, and serves.
  np.testing.assert_array_equal(after[0][1], by_seed[0][0])
  print(f"\nserver RSS {rss_first:.0f} MB after the first 4 requests, "
        f"{rss_last:.0f} MB after 16; queue places heard: {sorted(ranks)}; "
        f"the server's videos: {len(before_leaving)} before a client left, "
        f"{len(videos())} after")
  assert rss_last - rss_first < 150, (rss_first, rss_last)
  assert len(videos()) == 1  # Only the latest request's, whoever left.
  assert proc.poll() is None, log.read_text()[-3000:]
