"""Process tuning (bidigen/process.py): the entry points get it, and a
program that only imports bidigen does not."""

import json
import os
import subprocess
import sys

import pytest

from bidigen import process

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The variables that importing the modules named in argv changed, and
# LD_PRELOAD as the process started (set: it ran itself again). jax and
# OpenCV set variables of their own when imported (TF_CPP_MIN_LOG_LEVEL,
# TPU_SKIP_MDS_QUERY; LD_LIBRARY_PATH): they are imported first.
_IMPORT = """
import json, os, sys
preload = os.environ.get("LD_PRELOAD")
import cv2, jax
before = dict(os.environ)
for name in sys.argv[1:]:
  __import__(name)
after = dict(os.environ)
print(json.dumps([preload, {k: [before.get(k), after.get(k)]
                            for k in sorted(before.keys() | after.keys())
                            if before.get(k) != after.get(k)}]))
"""


# Each group in one process: main and benchmark both define --config.
@pytest.mark.parametrize("modules", [
    ("bidigen", "bidigen.main", "bidigen.sample", "bidigen.train",
     "bidigen.gui"),
    ("bidigen.benchmark",), ("bidigen.benchmark_memory",)])
def test_importing_bidigen_changes_no_environment_variable(modules):
  """Importing defines and nothing else: no XLA flag, no allocator, no
  default for other libraries, all of which would change the process of
  whoever imports bidigen (a notebook, a test, another program)."""
  tuned = {"XLA_FLAGS", "LD_PRELOAD", "GRADIO_ANALYTICS_ENABLED",
           *process.ENV_DEFAULTS}
  env = {k: v for k, v in os.environ.items() if k not in tuned}
  proc = subprocess.run([sys.executable, "-c", _IMPORT, *modules], cwd=ROOT,
                        env=dict(env, JAX_PLATFORMS="cpu"), timeout=300,
                        capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert json.loads(proc.stdout.splitlines()[-1]) == [None, {}]


def test_cpu_convolutions_keep_the_users_flags(monkeypatch):
  """CPU_CONV_FLAG goes first (XLA stops at a word that is not a flag),
  once, and never over the user's own fusion setting; not at all for
  several CPU devices, where XLA's own convolutions changed the frames
  (tests/test_sample.py's test on 1, 2, 3 and 8 devices)."""
  if process.cpu_convolutions("") == "":
    pytest.skip("not the jaxlib the flag is tested with")
  monkeypatch.delenv("JAX_NUM_CPU_DEVICES", raising=False)
  user = "--xla_force_host_platform_device_count=1 --xla_cpu_use_acl=false"
  tuned = process.cpu_convolutions(user)
  assert tuned == f"{process.CPU_CONV_FLAG} {user}"
  assert process.cpu_convolutions(tuned) == tuned
  own = f"{user} {process.XLA_DEFAULT_CONV_FLAG}"
  assert process.cpu_convolutions(own) == own
  for several in ("--xla_force_host_platform_device_count=2",
                  f"{user} --xla_force_host_platform_device_count=8"):
    assert process.host_devices(several) > 1
    assert process.cpu_convolutions(several) == several
  monkeypatch.setenv("JAX_NUM_CPU_DEVICES", "3")
  assert process.host_devices("") == 3
  assert process.cpu_convolutions("") == ""
  assert process.cpu_convolutions(user) == f"{process.CPU_CONV_FLAG} {user}"


# What an entry point's __main__ does first, then a convolution's filter
# gradient, compiled: the XLA_FLAGS it ran with and whether YNNPACK got it.
_CONV_GRADIENT = """
import os
from bidigen import process
process.tune()
import jax, jax.numpy as jnp
conv = lambda x, w: jax.lax.conv_general_dilated(
    x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
grad = jax.jit(jax.grad(lambda w, x: conv(x, w).sum()))
hlo = grad.lower(jnp.ones((3, 3, 64, 64)), jnp.ones((8, 32, 32, 64))
                 ).compile().as_text()
print(os.environ["XLA_FLAGS"])
print("%ynn_fusion" in hlo)
"""


def test_entry_points_leave_cpu_convolutions_to_xla():
  """``process.tune`` reaches XLA: it adds CPU_CONV_FLAG to the user's
  XLA_FLAGS (keeping theirs), and a convolution's filter gradient then
  compiles without the YNNPACK fusion that XLA's default puts there. A
  user's own fusion setting is kept."""
  if process.cpu_convolutions("") == "":
    pytest.skip("not the jaxlib the flag is tested with")
  base = "--xla_force_host_platform_device_count=1"
  for flags, want_flags, want_ynn in (
      (base, f"{process.CPU_CONV_FLAG} {base}", False),
      (f"{base} {process.XLA_DEFAULT_CONV_FLAG}",
       f"{base} {process.XLA_DEFAULT_CONV_FLAG}", True)):
    proc = subprocess.run(
        [sys.executable, "-c", _CONV_GRADIENT], cwd=ROOT, timeout=300,
        env=dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu",
                 BIDIGEN_MALLOC="system"),
        capture_output=True, text=True, check=True)
    seen, ynn = proc.stdout.splitlines()[-2:]
    assert seen == want_flags
    assert ynn == str(want_ynn), flags


# A jitted call whose 64 MiB result is freed before the next: the page
# faults a call costs, the fewest over three runs of five calls (an
# allocator grows once when a result outlives the next call's start, which
# a busy machine makes happen late), and whether tcmalloc is mapped.
_FAULTS = """
import resource
from bidigen import process
process.tune()
import jax, jax.numpy as jnp
f = jax.jit(lambda x: 2 * x + 1)
x = jnp.ones((2**24,))
f(x).block_until_ready()
faults = []
for _ in range(3):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  for _ in range(5):
    f(x).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
faults = min(faults) / 5
mapped = any("tcmalloc" in line for line in open("/proc/self/maps"))
print(mapped, faults)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")
def test_entry_points_keep_xlas_memory_with_tcmalloc():
  """``process.tune`` runs the process again with tcmalloc mapped in, and
  freed XLA buffers then stay for the next call; glibc's malloc
  (``BIDIGEN_MALLOC=system``) gives them back, and each call faults its
  64 MiB (16k pages) in again."""
  if process.tcmalloc_path() is None:
    pytest.skip("tcmalloc is not installed (make install adds it as root)")
  runs = {}
  for malloc in ("system", "tcmalloc"):
    env = dict(os.environ, BIDIGEN_MALLOC=malloc, JAX_PLATFORMS="cpu",
               LD_PRELOAD="")
    out = subprocess.run([sys.executable, "-c", _FAULTS], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    mapped, faults = out.stdout.split()
    runs[malloc] = (mapped == "True", float(faults))
  assert runs["system"][0] is False and runs["tcmalloc"][0] is True, runs
  assert runs["system"][1] > 8000, runs  # 16384 pages of 4 KiB a call.
  assert runs["tcmalloc"][1] < 1000, runs
