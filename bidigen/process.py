"""Process tuning for bidigen's entry points, and only for them.

``python -m bidigen.main``, ``.benchmark``, ``.benchmark_memory`` and
``.gui`` call ``tune()`` first in their ``__main__`` block, before jax
starts. Each setting below is read once, when the process (or XLA's
backend) starts, so it must be in place before anything else runs; and it
changes the whole process, which is why a program that merely imports
bidigen does not get it. Such a program (a notebook, the tests) can call
``cpu_convolutions`` or ``tune`` itself.
"""

import importlib.metadata
import os
import re
import sys

# TFDS imports TensorFlow, whose C++ start-up logs fill a screen; the text
# encoders load from local folders, and offline the Hugging Face libraries
# never wait on a network that a TPU pod or a test machine may not have.
# imageio-ffmpeg starts ffmpeg (every mp4 written) with a preexec_fn, which
# runs Python in the forked child of a multithreaded process (JAX, gradio):
# a GUI server under load hung there, its child stuck on a lock before exec
# (imageio-ffmpeg #58). Without it ffmpeg shares our process group, so
# Ctrl-C stops it too; outputs are written to a temporary name anyway.
ENV_DEFAULTS = {"TF_CPP_MIN_LOG_LEVEL": "3", "HF_HUB_OFFLINE": "1",
                "IMAGEIO_FFMPEG_NO_PREVENT_SIGINT": "1"}

# XLA:CPU hands convolutions to YNNPACK by default, which runs their filter
# gradients as convolutions with a whole feature map as the window: 27 % of
# a CPU train step's op time. XLA's own emitter runs the same step
# 1.35-1.44x faster to the same loss (``python -m bidigen.benchmark`` times
# both). A user's XLA_FLAGS that already set the fusion type win, so
# XLA_DEFAULT_CONV_FLAG restores XLA's default. Only for jaxlib 0.10, the
# one tested: XLA aborts on a flag it does not know. And only for a process
# with one CPU device: on several, XLA's own convolutions in the sampler's
# program (the solver's loop inside the expansion's scan) computed other
# numbers than on one device, so the same seed gave other frames (the
# embedded model's 17-frame request, its sample replicated over the mesh:
# frames 20-38 dB PSNR from the one-device run's on 2, 3 and 8 devices;
# with YNNPACK's, 86 dB or more: a level on a few pixels). Several CPU
# devices in one process are a mesh simulated for tests, not where speed
# counts.
CPU_CONV_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
XLA_DEFAULT_CONV_FLAG = (
    "--xla_cpu_experimental_ynn_fusion_type=+individual_convolution")

# glibc's malloc gives every block above 32 MiB back to the OS when it is
# freed, and XLA:CPU allocates a program's temporaries as one block per call
# (1.17 GB for the default train step): each step page-faults all of it in
# again, a fifth of the CPU's time in the kernel. tcmalloc keeps freed
# memory for the next call (a CPU train step 1.43x as fast). Debian's
# libtcmalloc-minimal4, which ``make install`` adds as root;
# BIDIGEN_MALLOC=system keeps glibc's.
TCMALLOC = ("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
            "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4",
            "/usr/lib64/libtcmalloc_minimal.so.4",
            "/usr/lib/libtcmalloc_minimal.so.4")


def host_devices(xla_flags: str) -> int:
  """The CPU devices jax makes in a process started with ``xla_flags`` (an
  XLA_FLAGS value): ``--xla_force_host_platform_device_count`` (the last
  one, as XLA reads them), else JAX_NUM_CPU_DEVICES, else 1."""
  counts = re.findall(r"--xla_force_host_platform_device_count=(\d+)",
                      xla_flags)
  if counts:
    return max(1, int(counts[-1]))
  try:  # jax's own default, -1, is one device too.
    return max(1, int(os.environ.get("JAX_NUM_CPU_DEVICES", 1)))
  except ValueError:  # jax refuses it, with its own message.
    return 1


def cpu_convolutions(xla_flags: str) -> str:
  """``xla_flags`` (an XLA_FLAGS value) with ``CPU_CONV_FLAG`` added.

  Unchanged where they already set the fusion type, ask for several CPU
  devices (``host_devices``: there XLA's own convolutions change the
  frames) or jaxlib is not 0.10. The flag goes first: XLA stops reading
  XLA_FLAGS at a word that is not a flag, and a user's stray word must not
  hide it.
  """
  if ("xla_cpu_experimental_ynn_fusion_type" in xla_flags
      or host_devices(xla_flags) > 1):
    return xla_flags
  try:
    jaxlib = importlib.metadata.version("jaxlib")
  except importlib.metadata.PackageNotFoundError:
    return xla_flags
  if not jaxlib.startswith("0.10."):
    return xla_flags
  return f"{CPU_CONV_FLAG} {xla_flags}".strip()


def tcmalloc_path() -> str | None:
  """The first installed ``TCMALLOC``, or None."""
  return next((p for p in TCMALLOC if os.path.exists(p)), None)


def tcmalloc_preloaded() -> bool:
  """Whether ``LD_PRELOAD`` names tcmalloc (this process started with it)."""
  return "tcmalloc" in os.environ.get("LD_PRELOAD", "")


def preload_tcmalloc() -> None:
  """Runs this process again with tcmalloc in ``LD_PRELOAD``.

  The loader reads ``LD_PRELOAD`` only when a process starts, so this
  ``os.execv``\\ s the same interpreter, options, arguments and environment.
  Does nothing off Linux, under ``BIDIGEN_MALLOC=system``, where tcmalloc is
  not installed, or where ``LD_PRELOAD`` already names it (which the run
  again does: no loop).
  """
  if (sys.platform != "linux" or tcmalloc_preloaded()
      or os.environ.get("BIDIGEN_MALLOC", "tcmalloc") == "system"):
    return
  path = tcmalloc_path()
  if path is None:
    return
  os.environ["LD_PRELOAD"] = " ".join(
      filter(None, (path, os.environ.get("LD_PRELOAD"))))
  sys.stdout.flush()
  sys.stderr.flush()
  os.execv(sys.executable, [sys.executable] + sys.orig_argv[1:])


def tune() -> None:
  """Sets ``ENV_DEFAULTS`` and ``CPU_CONV_FLAG``, then ``preload_tcmalloc``.

  The first thing an entry point's ``__main__`` calls, before it imports
  jax or TensorFlow. The environment is set before the run again, which
  inherits it. A variable the user set is kept.
  """
  for name, value in ENV_DEFAULTS.items():
    os.environ.setdefault(name, value)
  flags = os.environ.get("XLA_FLAGS", "")
  if cpu_convolutions(flags) != flags:
    os.environ["XLA_FLAGS"] = cpu_convolutions(flags)
  preload_tcmalloc()
