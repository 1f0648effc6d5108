"""bidigen: bidirectional video generation from one image and a prompt."""

import importlib.metadata
import importlib.util
import os

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
