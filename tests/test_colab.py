"""The Colab notebook, executed top to bottom on the CPU as a user would.

Outside Colab its install cell skips itself; environment variables give the
parameter cell a small setting. The kernel is this venv's python, through a
kernelspec written for the test, so the notebook sees the bidigen under test;
`make check-pythons` runs it once more in a Python 3.12 venv, Colab's Python.
"""

import json
import os
import sys

import numpy as np
import pytest

from bidigen import media
from tests.conftest import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "launch", "colab_sampling.ipynb")
FRAMES, STEPS = 2, 4
# Colab's runtime. `make check-pythons` sets BIDIGEN_NOTEBOOK_PYTHON to the
# python of the venv it made of this version (.venv-py312).
COLAB_PYTHON = (3, 12)


def test_committed_notebook_has_no_outputs():
  with open(NOTEBOOK) as f:
    nb = json.load(f)
  for cell in nb["cells"]:
    if cell["cell_type"] == "code":
      assert not cell["outputs"] and cell["execution_count"] is None


@pytest.mark.slow
def test_notebook_runs_and_writes_the_video(tmp_path, monkeypatch):
  run_notebook(tmp_path, monkeypatch, sys.executable)


@pytest.mark.skipif(
    not os.environ.get("BIDIGEN_NOTEBOOK_PYTHON"),
    reason="`make check-pythons` runs it with the Python 3.12 venv")
@pytest.mark.slow
def test_notebook_runs_on_colabs_python(tmp_path, monkeypatch):
  python = os.environ["BIDIGEN_NOTEBOOK_PYTHON"]
  assert os.access(python, os.X_OK), f"no interpreter {python}"
  version, prefix, module = run_notebook(tmp_path, monkeypatch, python)
  assert tuple(version[:2]) == COLAB_PYTHON, version
  assert os.path.samefile(prefix, os.path.dirname(os.path.dirname(python)))
  assert module.startswith(prefix), (module, prefix)  # The venv's bidigen.


def run_notebook(tmp_path, monkeypatch, python) -> list:
  """Runs the notebook in a kernel of `python`, checks what it printed and
  wrote; returns the kernel's Python version, sys.prefix and bidigen file."""
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  from ipykernel import kernelspec
  kernelspec.install(kernel_name="bidigen-test", prefix=str(tmp_path / "k"))
  jupyter = tmp_path / "k" / "share" / "jupyter"
  spec_file = jupyter / "kernels" / "bidigen-test" / "kernel.json"
  spec = json.loads(spec_file.read_text())
  spec["argv"][0] = python
  spec_file.write_text(json.dumps(spec))
  monkeypatch.setenv("JUPYTER_PATH", str(jupyter))
  monkeypatch.setenv("XLA_FLAGS", xla_flags(1))  # One CPU device.
  output = tmp_path / "sample.mp4"
  monkeypatch.setenv("BIDIGEN_NOTEBOOK_FRAMES", str(FRAMES))
  monkeypatch.setenv("BIDIGEN_NOTEBOOK_STEPS", str(STEPS))
  monkeypatch.setenv("BIDIGEN_NOTEBOOK_OUTPUT", str(output))
  # A keyframe as the last frame: the video must end on it.
  keyframe = os.path.join(media.EXAMPLES, "coffee.png")
  monkeypatch.setenv("BIDIGEN_NOTEBOOK_KEYFRAME", keyframe)
  monkeypatch.setenv("BIDIGEN_NOTEBOOK_KEYFRAME_OFFSET", str(FRAMES))

  nb = nbformat.read(NOTEBOOK, as_version=4)
  # Which Python ran it, and whose bidigen (the test's own cell, last).
  nb.cells.append(nbformat.v4.new_code_cell(
      "import bidigen, json\nprint('kernel', json.dumps("
      "[sys.version_info[:3], sys.prefix, bidigen.__file__]))"))
  client = nbclient.NotebookClient(
      nb, kernel_name="bidigen-test", timeout=900,
      resources={"metadata": {"path": str(tmp_path)}})
  client.execute()

  def texts(cell):
    for out in cell.get("outputs", []):
      yield out.get("text", "")
      yield from out.get("data", {}).values()
  printed = "\n".join(str(t) for c in nb.cells for t in texts(c))
  assert "Not on Colab: skipping the install" in printed
  assert "CPU" in printed

  import imageio.v3 as iio
  frames = iio.imread(str(output))
  assert frames.shape[0] == 2 * FRAMES + 1
  want = media.load_image(keyframe, frames.shape[1]).astype(int)
  # H.264 is lossy: the keyframe within a few levels, far from F0.
  assert np.abs(frames[-1].astype(int) - want).mean() < 6
  assert np.abs(frames[FRAMES].astype(int) - want).mean() > 20
  videos = [o for c in nb.cells for o in c.get("outputs", [])
            if "<video" in str(o.get("data", {}).get("text/html", ""))]
  assert len(videos) == 1

  return next(json.loads(line.split(" ", 1)[1])
              for line in printed.splitlines() if line.startswith("kernel ["))


@pytest.mark.parametrize("where", ["checkout", "elsewhere"])
def test_install_source(tmp_path, monkeypatch, where):
  """From a checkout (the notebook in its launch/) bidigen installs from
  that folder; anywhere else (Colab's /content) from the repository."""
  with open(NOTEBOOK) as f:
    cell = next(c for c in json.load(f)["cells"] if c["cell_type"] == "code")
  monkeypatch.chdir(os.path.join(ROOT, "launch") if where == "checkout"
                    else tmp_path)
  scope = {}
  exec("".join(cell["source"]), scope)  # Outside Colab it installs nothing.
  assert scope["SOURCE"] == (
      ROOT if where == "checkout" else
      "git+https://github.com/abhinavsingh9714/bidirectional_video_generation")
