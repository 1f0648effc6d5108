"""bidigen: bidirectional video generation from one image and a prompt.

Importing bidigen only defines; the entry points set up their process (XLA
flags, the allocator) with ``bidigen.process.tune()``.
"""

import importlib.util
import os


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
