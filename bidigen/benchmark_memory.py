"""Per-device bytes of the train state, replicated and sharded with fsdp.

  python -m bidigen.benchmark_memory [--config=configs/webvid.py] \
      [--devices=8] [--fsdp=8]

Shapes only (``jax.eval_shape`` and the state's shardings): nothing is
allocated, so virtual CPU devices stand in for a slice's chips and any
machine answers for the full model. Activations are not counted.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ["JAX_PLATFORMS"] = "cpu"
# The device count must be set before jax starts; read it from argv early.
_n = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--devices=")),
          "8")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           f" --xla_force_host_platform_device_count={_n}")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

config_flags.DEFINE_config_file("config", "configs/webvid.py",
                                "Config whose model is measured.")
flags.DEFINE_integer("devices", 8, "Devices of the mesh (virtual CPUs).")
flags.DEFINE_integer("fsdp", 8, "Size of the fsdp axis in the sharded mesh.")
flags.DEFINE_integer("text_dim", 384, "Text embedding width (MiniLM: 384).")
FLAGS = flags.FLAGS


def per_device(config, axes, text_dim: int) -> dict[str, int]:
  """Bytes per device of each part of the train state on mesh ``axes``."""
  from bidigen import sharding, train
  trainer = train.Trainer(config, sharding.make_mesh(axes), text_dim)
  state = trainer.abstract_state
  return {"params": sharding.bytes_per_device(state.params),
          "opt_state": sharding.bytes_per_device(state.opt_state),
          "ema": sharding.bytes_per_device(state.ema),
          "total": sharding.bytes_per_device(state)}


def main(argv) -> None:
  del argv
  config = FLAGS.config
  n, f = FLAGS.devices, FLAGS.fsdp
  rows = [("replicated", (("data", n), ("fsdp", 1))),
          (f"fsdp={f}", (("data", n // f), ("fsdp", f)))]
  print(f"train state per device, {n} devices, "
        f"rules {dict(config.mesh.logical_axis_rules)}")
  print(f"{'mesh':<30}{'params':>12}{'opt_state':>12}{'ema':>12}"
        f"{'total':>12}  (MiB)")
  totals = []
  for name, axes in rows:
    b = per_device(config, axes, FLAGS.text_dim)
    totals.append(b["total"])
    mesh = " x ".join(f"{a}={s}" for a, s in axes)
    print(f"{name + ' (' + mesh + ')':<30}" + "".join(
        f"{b[k] / 2**20:12.1f}" for k in ("params", "opt_state", "ema",
                                           "total")))
  print(f"fsdp holds {totals[1] / totals[0]:.3f} of the replicated bytes "
        f"per device ({totals[0] / totals[1]:.2f}x less)")


if __name__ == "__main__":
  app.run(main)
