"""Distribution and preemption, end to end on the tiny config.

Every run here is where TensorFlow, TFDS and transformers are missing (as on
an accelerator host with training's dependencies alone). The same seed and
global batch give the same losses on 1 device, on 2 processes, and on 8
devices with parameters sharded over fsdp; fsdp shards parameters and
optimizer state; SIGTERM saves and exits 0, SIGKILL loses only the steps
since the last checkpoint, and the resumed 8-device run logs the
uninterrupted 1-device run's losses.
"""

import os
import signal
import socket
import subprocess
import sys
import tempfile

import jax
import numpy as np
import pytest

from bidigen import sharding
from bidigen import train
from bidigen.data import pipeline
from tests.conftest import tiny_text_encoder
from tests.conftest import without_tensorflow
from tests.conftest import xla_flags
from tests.test_cli import ROOT
from tests.test_train import read_metrics

STEPS = 8
RTOL = 1e-4  # Sums over devices add up in another order.
# The 8-device runs: the tiny config with parameters and optimizer state
# sharded data=2 x fsdp=4 by configs/webvid.py's rules (tuples of tuples
# cannot be flag overrides).
FSDP_CONFIG = """
from configs import synthetic, webvid

def get_config(arg=None):
  c = synthetic.get_config("tiny")
  c.mesh.axes = (("data", 2), ("fsdp", 4))
  c.mesh.logical_axis_rules = webvid.get_config().mesh.logical_axis_rules
  return c
"""


@pytest.fixture(scope="module")
def data_dir(tiny_data):
  return tiny_data  # The tiny clips and their encoded latents.


@pytest.fixture(scope="module")
def start(tmp_path_factory, data_dir):
  """Starts ``python -m bidigen.main --mode=train`` on ``devices`` CPU
  devices, by default with FSDP_CONFIG, where TensorFlow, TFDS and
  transformers cannot be imported. The runs inherit the session's
  compilation cache (tests/conftest.py): those on one mesh compile once.
  stderr (its log: resumed, stopped) goes to a file, so only stdout (the
  step lines, which the tests wait for) can fill a pipe."""
  tmp = tmp_path_factory.mktemp("runs")
  fsdp_config = tmp / "fsdp_tiny.py"
  fsdp_config.write_text(FSDP_CONFIG)
  # As on an accelerator host with training's dependencies alone: no
  # TensorFlow (clu's writers give way to metrics.jsonl), TFDS, transformers.
  env = without_tensorflow(dict(os.environ, JAX_PLATFORMS="cpu"), tmp / "site")
  check = subprocess.run([sys.executable, "-c", "import tensorflow"], env=env,
                         capture_output=True, text=True)
  assert check.returncode != 0 and "blocked by the test" in check.stderr

  def start(workdir, *flags, devices=8, config=str(fsdp_config)):
    err = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bidigen.main", "--mode=train",
         f"--config={config}", f"--workdir={workdir}",
         f"--config.data.data_dir={data_dir}",
         f"--config.train.num_steps={STEPS}",
         f"--config.model.text.path={tiny_text_encoder()}", *flags],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True,
        env=dict(env, XLA_FLAGS=xla_flags(devices)))
    proc.err = err
    return proc
  return start


def stderr(proc, tail=3000):
  """The process's log (absl logging's lines), its last ``tail`` chars."""
  proc.err.seek(0)
  text = proc.err.read()
  return text if tail is None else text[-tail:]


def finish(proc):
  out, _ = proc.communicate(timeout=3600)  # Minutes, on a loaded machine.
  assert proc.returncode == 0, stderr(proc)
  return out


def wait_for_line(proc, prefix):
  """Reads stdout up to a line starting with ``prefix``; returns the lines."""
  lines = []
  for line in proc.stdout:
    lines.append(line)
    if line.startswith(prefix):
      return lines
  proc.wait()
  raise AssertionError(f"no line {prefix!r}: {lines} {stderr(proc)}")


def losses(workdir):
  rows = read_metrics(workdir)
  assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
  return np.array([r["loss"] for r in rows])


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(start, tmp_path_factory):
  """Uninterrupted runs of the tiny config, at once: on 1 device, and on 2
  processes of 2 devices each; (losses of each, stdout and log of each
  process)."""
  tmp = tmp_path_factory.mktemp("runs")
  port = free_port()
  tiny = "configs/synthetic.py:tiny"
  procs = [start(tmp / "one", devices=1, config=tiny)] + [
      start(tmp / "two", f"--coordinator_address=127.0.0.1:{port}",
            "--num_processes=2", f"--process_id={i}", devices=2, config=tiny)
      for i in range(2)]
  outs = [finish(p) for p in procs]
  return {"one": losses(tmp / "one"), "two": losses(tmp / "two"),
          "outs": outs, "logs": [stderr(p, None) for p in procs],
          "two_dir": tmp / "two"}


def test_global_batches_do_not_depend_on_the_process_count(data_dir):
  from bidigen import data
  from configs import synthetic
  cfg = synthetic.get_config("tiny").data
  cfg.data_dir = data_dir
  builder = data.get_builder(cfg)
  loader = lambda i, n: pipeline.make_loader(
      builder, "train", global_batch_size=8, seed=3, shard_index=i,
      shard_count=n)
  one = iter(loader(0, 1))
  two = [iter(loader(i, 2)) for i in range(2)]
  for _ in range(5):  # Past the 32 records' first epoch.
    parts = [next(it)["caption"] for it in two]
    assert list(next(one)["caption"]) == list(np.concatenate(parts))
  # A restored iterator goes on with the same rows.
  again = iter(loader(1, 2))
  again.set_state(two[1].get_state())
  assert list(next(again)["caption"]) == list(next(two[1])["caption"])


@pytest.mark.slow
def test_same_losses_on_1_device_and_2_processes(runs):
  np.testing.assert_allclose(runs["two"], runs["one"], rtol=RTOL)
  # Without TensorFlow, training says where its metrics go instead.
  assert "clu's metric writers are unavailable" in runs["logs"][0]
  assert "metrics.jsonl" in runs["logs"][0]
  # Process 0 alone reports; both wrote their parts of each checkpoint.
  outs = runs["outs"]
  assert f"step {STEPS}/{STEPS}" in outs[1]
  assert "step " not in outs[2]
  assert sorted(os.listdir(runs["two_dir"] / "checkpoints")) == ["3", "6",
                                                                 "8"]


def test_fsdp_shards_parameters_and_optimizer_state(tiny_config):
  from configs import webvid
  config = tiny_config.copy_and_resolve_references()
  config.mesh.logical_axis_rules = webvid.get_config().mesh.logical_axis_rules
  config.model.latent_mean = [0.0] * 32
  config.model.latent_std = [1.0] * 32
  dp, fsdp = (train.Trainer(config, sharding.make_mesh(axes), text_dim=16)
              for axes in ((("data", 8), ("fsdp", 1)),
                           (("data", 2), ("fsdp", 4))))
  leaves = jax.tree.leaves(fsdp.abstract_state)
  total = sum(a.size * a.dtype.itemsize for a in leaves)
  split = sum(a.size * a.dtype.itemsize for a in leaves
              if "fsdp" in a.sharding.spec)
  assert sharding.bytes_per_device(dp.abstract_state) == total  # Replicated.
  per_device = sharding.bytes_per_device(fsdp.abstract_state)
  assert per_device == total - split * 3 // 4
  assert split > 0.9 * total  # Kernels are nearly all of it.
  # Params, their Adam moments and the EMA are all split.
  for part in ("params", "opt_state", "ema"):
    assert any("fsdp" in a.sharding.spec for a in jax.tree.leaves(
        getattr(fsdp.abstract_state, part)))
  # The initialised state holds a quarter of each split kernel per device.
  state = fsdp.init(jax.random.key(0))
  kernel = state.params["params"]["Conv_0"]["kernel"]  # The UNet's first.
  assert kernel.addressable_shards[0].data.shape[-1] == kernel.shape[-1] // 4
  held = sum(a.addressable_shards[0].data.nbytes
             for a in jax.tree.leaves(state))
  assert held == per_device


@pytest.mark.slow
def test_fsdp_run_stopped_by_sigterm_and_sigkill_logs_one_devices_losses(
    tmp_path, start, runs, capsys):
  """On 8 devices with parameters sharded over fsdp, stopped twice and
  resumed: the losses of the uninterrupted 1-device run (so sharding and
  resuming each change nothing)."""
  workdir = tmp_path / "run"
  ckpts = workdir / "checkpoints"
  # SIGTERM after step 2: a checkpoint at the step reached, exit status 0.
  proc = start(workdir, "--config.train.checkpoint_every=100")
  wait_for_line(proc, f"step 2/{STEPS}")
  proc.send_signal(signal.SIGTERM)
  finish(proc)
  log = stderr(proc, None)
  stopped = int(log.split("stopped at step ")[1].split(" ")[0])
  assert (f"stopped at step {stopped} (SIGTERM or Ctrl-C): saved a "
          "checkpoint, exiting\n") in log
  assert 2 <= stopped < STEPS
  assert os.listdir(ckpts) == [str(stopped)]

  # Resumed, checkpoints every 2 steps, SIGKILL: the steps since the last
  # one are lost. Orbax finishes one save before it starts the next, so the
  # first even step's save is complete three steps later.
  proc = start(workdir, "--config.train.checkpoint_every=2")
  first = stopped + 2 - stopped % 2
  wait_for_line(proc, f"step {first + 3}/{STEPS}")
  proc.kill()
  proc.communicate()
  assert f"resuming from step {stopped} in {workdir}\n" in stderr(proc, None)
  saved = max(int(d) for d in os.listdir(ckpts) if d.isdigit())
  assert saved in (first, first + 2)

  # Resumed to the end: one history, the uninterrupted run's losses.
  proc = start(workdir, "--config.train.checkpoint_every=2")
  finish(proc)
  assert f"resuming from step {saved} in {workdir}\n" in stderr(proc, None)
  resumed = losses(workdir)
  with capsys.disabled():
    print(f"\nSIGTERM after step 2: checkpoint at step {stopped}, no step "
          f"lost; SIGKILL after step {first + 3}: resumed from step {saved}")
    print("step  1 device    2 proc. x 2 dev.  8 dev. (fsdp, resumed)")
    for i, row in enumerate(zip(runs["one"], runs["two"], resumed)):
      print(f"{i + 1:4d}  " + "  ".join(f"{v:.7f}" for v in row))
  np.testing.assert_allclose(resumed, runs["one"], rtol=RTOL)


def test_cluster_detection(monkeypatch):
  for key in list(os.environ):
    if key.startswith(("SLURM_", "OMPI_", "JAX_COORDINATOR")):
      monkeypatch.delenv(key)
  assert not sharding.on_cluster()  # A plain machine: one process.
  for key in ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_PROCID",
              "SLURM_LOCALID"):
    monkeypatch.setenv(key, "0")
  monkeypatch.setenv("SLURM_NTASKS", "1")
  assert not sharding.on_cluster()
  monkeypatch.setenv("SLURM_NTASKS", "4")
  assert sharding.on_cluster()
  for key in list(os.environ):
    if key.startswith("SLURM_"):
      monkeypatch.delenv(key)
  # Open MPI (mpirun): one rank stays one process, several form a cluster.
  monkeypatch.setenv("OMPI_MCA_orte_hnp_uri", "1234.0;tcp://10.0.0.1:5000")
  monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "1")
  assert not sharding.on_cluster()
  monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
  assert sharding.on_cluster()
  monkeypatch.delenv("OMPI_MCA_orte_hnp_uri")
  monkeypatch.delenv("OMPI_COMM_WORLD_SIZE")
  assert not sharding.on_cluster()
  monkeypatch.setenv("SLURM_NTASKS", "1")
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
  assert sharding.on_cluster()


def test_mesh_from_make_mesh_and_across_slices():
  """The mesh has the config's shape over every device, with Auto axes (the
  logical rules shard, not sharding-in-types); over slices the data axis
  alone crosses them."""
  mesh = sharding.make_mesh((("data", 2), ("fsdp", -1)))
  assert dict(mesh.shape) == {"data": 2, "fsdp": 4}
  assert set(mesh.axis_types) == {jax.sharding.AxisType.Auto}
  assert sorted(d.id for d in mesh.devices.flat) == sorted(
      d.id for d in jax.devices())
  assert sharding.hybrid_shapes(("data", "fsdp"), (8, 16), 4) == (
      [2, 16], [4, 1])
  with pytest.raises(ValueError, match="a 'data' axis whose size is a "
                     "multiple of 4"):
    sharding.hybrid_shapes(("data", "fsdp"), (2, 16), 4)
