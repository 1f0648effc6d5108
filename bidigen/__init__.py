"""bidigen: bidirectional video generation from one image and a prompt."""

import importlib.metadata
import importlib.util
import os
import sys

# XLA:CPU hands convolutions to YNNPACK by default, which runs their filter
# gradients as convolutions with a whole feature map as the window (27 % of
# a CPU train step's op time, profiled); XLA's own emitter does the same
# step 1.35-1.44x faster to the same loss (README, Benchmarks). XLA reads its
# flags once, when the first computation starts, so bidigen sets this when
# it is imported, unless XLA_FLAGS already says how to fuse (set
# ``--xla_cpu_experimental_ynn_fusion_type=+individual_convolution`` to
# keep XLA's default). Only for the jaxlib it is tested with: XLA aborts on
# a flag it does not know.
CPU_CONV_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
XLA_DEFAULT_CONV_FLAG = (
    "--xla_cpu_experimental_ynn_fusion_type=+individual_convolution")


def _set_cpu_convolutions():
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_cpu_experimental_ynn_fusion_type" in flags:
    return
  try:
    jaxlib = importlib.metadata.version("jaxlib")
  except importlib.metadata.PackageNotFoundError:
    return
  if jaxlib.startswith("0.10."):
    # First: XLA stops reading XLA_FLAGS at a word that is not a flag.
    os.environ["XLA_FLAGS"] = f"{CPU_CONV_FLAG} {flags}".strip()


_set_cpu_convolutions()


# glibc's malloc gives every block above 32 MiB back to the OS when it is
# freed, and XLA:CPU allocates a program's temporaries as one block per call
# (1.17 GB for the default train step): each step page-faults all of it in
# again, 295k faults and a fifth of the CPU's time in the kernel (README,
# Benchmarks). tcmalloc keeps freed memory for the next call, so the entry
# points (python -m bidigen.main / .benchmark / .gui) run themselves again
# with it preloaded where it is installed (Debian: libtcmalloc-minimal4,
# which ``make install`` adds as root). BIDIGEN_MALLOC=system turns it off.
TCMALLOC = ("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
            "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4",
            "/usr/lib64/libtcmalloc_minimal.so.4",
            "/usr/lib/libtcmalloc_minimal.so.4")


def tcmalloc_path() -> str | None:
  """The first installed ``TCMALLOC``, or None."""
  return next((p for p in TCMALLOC if os.path.exists(p)), None)


def tcmalloc_preloaded() -> bool:
  """Whether ``LD_PRELOAD`` names tcmalloc (this process started with it)."""
  return "tcmalloc" in os.environ.get("LD_PRELOAD", "")


def preload_tcmalloc():
  """Runs this process again (``os.execv``: the same interpreter, options,
  arguments and environment) with tcmalloc in ``LD_PRELOAD``, which the
  loader reads only when a process starts. Does nothing off Linux, under
  ``BIDIGEN_MALLOC=system``, where tcmalloc is not installed, or where
  ``LD_PRELOAD`` already names it (the run again included). Call it first
  in an entry point's ``__main__``, before jax starts a backend."""
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


def sibling_config(config_file: str, name: str, arg: str | None = None):
  """``get_config(arg)`` of configs/NAME.py beside ``config_file``.

  Config files build on each other (configs/webvid.py starts from
  synthetic's recipe) but are loaded by path, not as a package, so that
  ``--config=`` works from any working directory; this loads the sibling
  by path too.
  """
  path = os.path.join(os.path.dirname(os.path.abspath(config_file)),
                      f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"bidigen_config_{name}",
                                                path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def config_variant(config_file: str, arg: str | None,
                   known=("default", "tiny")) -> str:
  """The variant a config file was asked for (``--config=FILE:VARIANT``;
  none: "default"), or a one-line error naming the known ones."""
  variant = arg or "default"
  if variant not in known:
    raise ValueError(f"unknown variant {variant!r} of configs/"
                     f"{os.path.basename(config_file)}; known: "
                     f"{', '.join(known)}")
  return variant
