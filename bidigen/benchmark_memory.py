"""Per-chip memory and step time of a config's train step (from cached
TAEF2 latents: the encoder runs once, before training, not in the step).

  python -m bidigen.benchmark_memory [--config=configs/webvid.py] \
      [--devices=8] [--fsdp=8] [--chips=64] [--mfu=0.4]

1. The train state's bytes per device, replicated and sharded with fsdp:
   shapes only (``jax.eval_shape`` and the state's shardings), so virtual CPU
   devices stand in for a slice's chips.
2. XLA's own figures for one diffusion step, compiled (not run) on one CPU
   device at 1 and 2 examples: FLOPs (cost analysis) and temporary bytes
   (buffer assignment). Their difference is the per-example cost.
3. What each rematerialisation policy keeps for the backward pass: the
   residuals of ``jax.vjp`` of the UNet at 1 and 2 examples, traced, not
   run, with XLA's FLOPs of the lowered step (recomputation included).
   XLA:CPU's temporaries cannot show this: its buffer assignment came out
   the same under every policy (4.22 GiB an example for
   configs/webvid.py), while one H200 halved its temporaries with "dots".
4. The estimate per chip for the config's global batch over ``--chips``:
     examples/chip b = batch_size / chips
     memory/chip    = state/fsdp + b * kept activations/example (3., the
                      config's policy) + fixed temporaries (2.)
     step time      = b * FLOPs/example / (peak bf16 FLOP/s * MFU)
   TPUs run float32 matmuls as bf16 passes at default precision, so the bf16
   peak is the ceiling; MFU is an assumption (--mfu), not a measurement.
   FSDP traffic is printed beside it, not added.
"""

import os
import sys

from bidigen import process


def virtual_cpu_devices() -> None:
  """Run on ``--devices`` virtual CPU devices: the count must be set before
  jax starts, so it is read from argv before absl parses it. Only when run
  as a program (importing this module changes nothing)."""
  os.environ["JAX_PLATFORMS"] = "cpu"
  n = next((a.split("=", 1)[1] for a in sys.argv
            if a.startswith("--devices=")), "8")
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={n}")


if __name__ == "__main__":
  process.tune()  # Before jax starts; may run this again with tcmalloc.
  virtual_cpu_devices()

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

config_flags.DEFINE_config_file("config", "configs/webvid.py",
                                "Config whose model is measured.")
flags.DEFINE_integer("devices", 8, "Devices of the mesh (virtual CPUs).")
flags.DEFINE_integer("fsdp", 8, "Size of the fsdp axis in the sharded mesh.")
flags.DEFINE_integer("text_dim", 384, "Text embedding width (MiniLM: 384).")
flags.DEFINE_integer("chips", 64, "Chips the global batch is spread over in "
                     "the per-chip estimate.")
flags.DEFINE_list("remat", ["none", "blocks", "dots"],
                  "Rematerialisation policies whose activation bytes and "
                  "FLOPs per example are compared (config.model.remat).")
flags.DEFINE_float("mfu", 0.4, "Assumed fraction of the chip's peak FLOP/s "
                   "reached by the step.")
FLAGS = flags.FLAGS

# Public per-chip figures: HBM (GiB) and dense bf16 peak (TFLOP/s).
CHIPS = (("TPU v4", 32, 275), ("TPU v5e", 16, 197), ("TPU v5p", 95, 459),
         ("TPU v6e", 32, 918), ("H100 SXM", 80, 989))


def with_unit_stats(config):
  """Shapes only: the latent statistics' values do not matter here."""
  from bidigen.models import taef2
  config = config.copy_and_resolve_references()
  config.model.latent_mean = [0.0] * taef2.LATENT_CHANNELS
  config.model.latent_std = [1.0] * taef2.LATENT_CHANNELS
  config.model.residual_rms = [1.0] * taef2.LATENT_CHANNELS
  config.model.motion_rms = 1.0
  return config


def per_device(config, axes, text_dim: int) -> dict[str, int]:
  """Bytes per device of each part of the train state on mesh ``axes``."""
  from bidigen import sharding, train
  config = with_unit_stats(config)
  trainer = train.Trainer(config, sharding.make_mesh(axes), text_dim)
  state = trainer.abstract_state
  return {"params": sharding.bytes_per_device(state.params),
          "opt_state": sharding.bytes_per_device(state.opt_state),
          "ema": sharding.bytes_per_device(state.ema),
          "total": sharding.bytes_per_device(state)}


def lowered_step(config, batch: int, text_dim: int):
  """The config's train step at ``batch`` examples on one device, lowered
  from abstract inputs (nothing is allocated)."""
  import jax
  import jax.numpy as jnp
  from bidigen import models, sharding, train
  config = with_unit_stats(config)
  config.train.batch_size = batch
  config.mesh.axes = tuple((name, 1) for name, _ in config.mesh.axes)
  trainer = train.Trainer(config, sharding.make_mesh(
      config.mesh.axes, jax.devices()[:1]), text_dim)
  t, r = config.data.num_frames, config.data.resolution
  n = config.model.text.max_length
  lat = models.latent_shape(r)
  inputs = {"latents": jax.ShapeDtypeStruct((batch, t) + lat, jnp.float32),
            "motion": jax.ShapeDtypeStruct((batch, t) + lat[:2] + (2,),
                                           jnp.float32),
            "text": jax.ShapeDtypeStruct((batch, n, text_dim), jnp.float32),
            "text_mask": jax.ShapeDtypeStruct((batch, n), jnp.float32)}
  return trainer.step.lower(trainer.abstract_state, inputs,
                            jax.eval_shape(lambda: jax.random.key(0)))


def step_costs(config, batch: int, text_dim: int) -> dict[str, float]:
  """XLA's FLOPs and temporary bytes of one diffusion step on one device."""
  lowered = lowered_step(config, batch, text_dim)
  memory = lowered.compile().memory_analysis()
  return {"flops": float(lowered.cost_analysis()["flops"]),
          "temp": float(memory.temp_size_in_bytes)}


def step_flops(config, batch: int, text_dim: int) -> float:
  """XLA's FLOPs of one diffusion step, lowered but not compiled."""
  return float(lowered_step(config, batch, text_dim).cost_analysis()["flops"])


def main(argv) -> None:
  del argv
  from bidigen import train
  config = FLAGS.config
  n, f = FLAGS.devices, FLAGS.fsdp
  rows = [("replicated", (("data", n), ("fsdp", 1))),
          (f"fsdp={f}", (("data", n // f), ("fsdp", f)))]
  print(f"train state per device, {n} devices, "
        f"rules {dict(config.mesh.logical_axis_rules)}")
  print(f"{'mesh':<30}{'params':>12}{'opt_state':>12}{'ema':>12}"
        f"{'total':>12}  (MiB)")
  totals, params = [], []
  for name, axes in rows:
    b = per_device(config, axes, FLAGS.text_dim)
    totals.append(b["total"])
    params.append(b["params"])
    mesh = " x ".join(f"{a}={s}" for a, s in axes)
    print(f"{name + ' (' + mesh + ')':<30}" + "".join(
        f"{b[k] / 2**20:12.1f}" for k in ("params", "opt_state", "ema",
                                           "total")))
  print(f"fsdp holds {totals[1] / totals[0]:.3f} of the replicated bytes "
        f"per device ({totals[0] / totals[1]:.2f}x less)")

  print("\ncompiling the train step at 1 and 2 examples (XLA, CPU) ...",
        flush=True)
  one, two = (step_costs(config, b, FLAGS.text_dim) for b in (1, 2))
  flops = two["flops"] - one["flops"]
  temp = two["temp"] - one["temp"]
  fixed = one["temp"] - temp
  gib = 2**30
  dtype = config.model.dtype
  policy = config.model.remat
  print(f"per example ({dtype}, remat {policy}): {flops / 1e12:.2f} TFLOP; "
        f"XLA:CPU's temporaries {temp / gib:.2f} GiB an example, fixed "
        f"{fixed / gib:.2f} GiB")
  print(f"\nrematerialisation (config.model.remat), {dtype}, per example: "
        "activations the forward pass keeps for the backward (jax.vjp's "
        "residuals) and XLA's FLOPs with the recomputation")
  print(f"{'policy':<8}{'kept GiB':>9}{'vs none':>9}{'TFLOP':>8}"
        f"{'vs none':>9}")
  base, kept = None, {}
  for name in dict.fromkeys(["none"] + FLAGS.remat + [policy]):
    cfg = config.copy_and_resolve_references()
    cfg.model.remat = name
    a, b2 = (train.kept_activations(cfg, b, FLAGS.text_dim)
              for b in (1, 2))
    if name == policy:  # Lowered and compiled above.
      f1, f2 = one["flops"], two["flops"]
    else:
      f1, f2 = (step_flops(cfg, b, FLAGS.text_dim) for b in (1, 2))
    row = kept[name] = (b2 - a, f2 - f1)
    base = base or row
    print(f"{name:<8}{row[0] / gib:>9.3f}{row[0] / base[0]:>9.2f}"
          f"{row[1] / 1e12:>8.3f}{row[1] / base[1]:>9.2f}", flush=True)
  act = kept[policy][0]
  batch, chips = config.train.batch_size, FLAGS.chips
  b = batch / chips
  state = totals[1]
  print(f"\nglobal batch {batch} over {chips} chips = {b:g} examples/chip, "
        f"state with fsdp={f}: {state / gib:.2f} GiB/chip, MFU {FLAGS.mfu}")
  print(f"{'chip':<10}{'HBM GiB':>9}{'need GiB':>10}{'fits':>6}"
        f"{'bf16 TFLOP/s':>14}{'step s':>8}{'ex/s/chip':>11}")
  need = (state + b * act + max(fixed, 0)) / gib  # The same on every chip.
  for name, hbm, peak in CHIPS:
    step = b * flops / (peak * 1e12 * FLAGS.mfu)
    print(f"{name:<10}{hbm:>9}{need:>10.1f}{'yes' if need < hbm else 'no':>6}"
          f"{peak:>14}{step:>8.3f}{b / step:>11.2f}")
  print(f"fsdp traffic per chip and step: ~3 x params x (fsdp-1)/fsdp = "
        f"{3 * params[0] * (f - 1) / f / gib:.2f} GiB (all-gathers forward "
        "and backward, reduce-scatter of gradients), not in the step time")


if __name__ == "__main__":
  app.run(main)
