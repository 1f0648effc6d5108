"""The command line: bad input is one line on stderr, and nothing is left
behind."""

import os
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest

from tests.conftest import tiny_text_encoder
from tests.conftest import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(*args, cwd=ROOT):
  """``python -m bidigen.main ARGS`` on one CPU device. A ``:tiny`` config
  gets the tests' tiny text encoder unless ARGS name one."""
  if (any(a.startswith("--config=") and a.endswith(":tiny") for a in args)
      and not any(a.startswith("--config.model.text") for a in args)):
    args += (f"--config.model.text.path={tiny_text_encoder()}",)
  env = dict(os.environ, XLA_FLAGS=xla_flags(1), JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "bidigen.main", *args],
                        cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=600)


def assert_one_line_error(proc, *needles):
  assert proc.returncode != 0
  assert "Traceback" not in proc.stderr, proc.stderr
  lines = [l for l in proc.stderr.splitlines()
           if l.strip() and not l.startswith(("WARNING: All log", "I0000",
                                              "W0000"))]
  error = [l for l in lines if "error" in l.lower()]
  assert len(error) == 1, proc.stderr
  for needle in needles:
    assert needle in error[0], error[0]


def test_missing_image(tmp_path):
  out = tmp_path / "out.mp4"
  proc = run_main("--mode=sample", f"--image={tmp_path}/nope.png",
                  f"--output={out}")
  assert_one_line_error(proc, "image not found", "nope.png")
  assert os.listdir(tmp_path) == []


def test_unreadable_image(tmp_path):
  bad = tmp_path / "bad.png"
  bad.write_text("this is not a png")
  proc = run_main("--mode=sample", f"--image={bad}",
                  f"--output={tmp_path}/frames")
  assert_one_line_error(proc, "cannot read image", "bad.png")
  assert os.listdir(tmp_path) == ["bad.png"]


@pytest.mark.parametrize("output,needle", [
    ("mine", "holds files bidigen did not write (keep.txt)"),
    (".", "holds files bidigen did not write (keep.txt)"),
    ("clip.avi", ".avi is not a format bidigen writes; use .mp4 or .gif"),
    ("notes", "output notes is a file, not a folder"),
])
def test_outputs_that_would_lose_files_are_refused(tmp_path, output, needle):
  """Checked before the model loads; the user's files stay as they were."""
  image = tmp_path / "f0.png"
  iio.imwrite(image, np.zeros((8, 8, 3), np.uint8))
  (tmp_path / "mine").mkdir()
  for folder in (tmp_path, tmp_path / "mine"):
    (folder / "keep.txt").write_text("precious")
  (tmp_path / "notes").write_text("a file without a suffix")
  cwd = tmp_path / "mine" if output == "." else tmp_path
  before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
  proc = run_main("--mode=sample", f"--image={image}", f"--output={output}",
                  "--overwrite", cwd=cwd)
  assert_one_line_error(proc, needle)
  assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == (
      before)
  assert (tmp_path / "mine" / "keep.txt").read_text() == "precious"


def test_bad_flag_values(tmp_path):
  assert_one_line_error(
      run_main("--mode=sample", "--frames_before=-1", "--image=x.png",
               "--output=o.mp4"), "frames_before")
  assert_one_line_error(run_main("--mode=dance"), "mode")
  example = os.path.join(ROOT, "bidigen", "assets", "examples", "coffee.png")
  for flag, needle in (("--guidance=nan", "guidance must be in [0, 50]"),
                       ("--seed=99999999999", "seed must be a whole number")):
    assert_one_line_error(
        run_main("--mode=sample", f"--image={example}", flag,
                 f"--output={tmp_path}/o.mp4"), needle)
  assert_one_line_error(
      run_main("--mode=sample", "--image=x.png", "--frames_after=5000",
               f"--output={tmp_path}/o.mp4"), "frames_after")
  assert_one_line_error(
      run_main("--mode=sample", "--image=x.png",
               f"--output={tmp_path}/missing/o.mp4"), "does not exist")


@pytest.mark.parametrize("config,override,needle", [
    ("configs/synthetic.py:tiny", "--config.train.nope=1",
     "unknown config key config.train.nope; did you mean config.train."),
    ("configs/synthetic.py:tiny", "--config.trian.batch_size=1",
     "unknown config key config.trian; did you mean config.train?"),
    ("configs/synthetic.py:tiny", "--config.train.batch_size=abc",
     "batch_size"),
    ("configs/synthetic.py:huge", "--seed=0", "unknown variant 'huge'"),
    ("configs/missing.py", "--seed=0", "configs/missing.py"),
])
def test_bad_configs(tmp_path, config, override, needle):
  proc = run_main(f"--config={config}", "--mode=train",
                  f"--workdir={tmp_path}", override)
  assert_one_line_error(proc, needle)


def test_bad_config_value_is_named(tmp_path):
  proc = run_main("--config=configs/synthetic.py:tiny", "--mode=train",
                  f"--workdir={tmp_path}/w", "--config.train.num_steps=0",
                  f"--config.data.data_dir={tmp_path}/data")
  assert_one_line_error(proc, "config.train.num_steps")


def test_webvid_without_data_says_how_to_prepare(tmp_path):
  proc = run_main("--config=configs/webvid.py", "--mode=encode",
                  f"--config.data.data_dir={tmp_path}/tfds")
  assert_one_line_error(proc, "WebVid data not found", str(tmp_path),
                        "--mode=prepare")
  proc = run_main("--config=configs/webvid.py", "--mode=train",
                  f"--workdir={tmp_path}/w",
                  f"--config.data.data_dir={tmp_path}/tfds")
  assert_one_line_error(proc, "no encoded latents", str(tmp_path),
                        "--mode=encode")


def test_benchmark_knows_each_chips_bf16_peak():
  """MFU divides by the data-sheet peak of the chip jax names; the longest
  matching name wins, so a v5e is not taken for a v5p."""
  from bidigen import benchmark
  assert benchmark.nominal_peak("NVIDIA H100 80GB HBM3") == 989.0
  assert benchmark.nominal_peak("NVIDIA H200") == 989.0
  assert benchmark.nominal_peak("TPU v5 lite") == 197.0
  assert benchmark.nominal_peak("TPU v5") == 459.0
  assert benchmark.nominal_peak("TPU v6 lite") == 918.0
  assert benchmark.nominal_peak("cpu") is None


def test_benchmark_peak_lookup_does_not_depend_on_the_tables_order(
    monkeypatch):
  from bidigen import benchmark
  monkeypatch.setattr(benchmark, "BF16_PEAK",
                      {"TPU v5": 459.0, "TPU v5 lite": 197.0})
  assert benchmark.nominal_peak("TPU v5 lite") == 197.0
  assert benchmark.nominal_peak("TPU v5") == 459.0


def test_benchmark_counts_matmul_flops_from_the_jaxpr():
  """The MFU numerator: 2 FLOPs per multiply-add of each dot and
  convolution, a scan's body once per step, a cond's costlier branch, and
  the backward pass's dots and convolutions through jax.grad."""
  import jax
  import jax.numpy as jnp
  from bidigen import benchmark
  x, w = jnp.ones((4, 5)), jnp.ones((5, 6))
  dot = 2 * 4 * 6 * 5
  img, ker = jnp.ones((1, 8, 8, 3)), jnp.ones((3, 3, 3, 4))
  conv = 2 * (6 * 6 * 4) * (3 * 3 * 3)  # VALID: 6x6 outputs.

  def f(x, w, img, ker):
    _, ys = jax.lax.scan(lambda c, _: (c, c @ w), x, None, length=3)
    y = jax.lax.cond(x[0, 0] > 0, lambda: x @ w, lambda: x[:, :1] * w[:1])
    out = jax.lax.conv_general_dilated(img, ker, (1, 1), "VALID",
                                       dimension_numbers=("NHWC", "HWIO",
                                                          "NHWC"))
    return ys.sum() + y.sum() + out.sum()
  count = lambda fn: benchmark.matmul_flops(jax.make_jaxpr(fn)(x, w, img,
                                                                ker))
  assert count(f) == 3 * dot + dot + conv
  # The gradient of a dot with respect to one operand is one more dot of
  # the same size; of a convolution, one more convolution.
  only_conv = lambda x, w, img, ker: jax.lax.conv_general_dilated(
      img, ker, (1, 1), "VALID",
      dimension_numbers=("NHWC", "HWIO", "NHWC")).sum()
  assert count(jax.grad(only_conv, argnums=3)) == 2 * conv
