"""Speed figures on this machine, next to its own measured matmul peak.

  python -m bidigen.benchmark [--config=configs/synthetic.py] [--repeats=5]
      [--sections=designs,...]

Prints: peak float32 matmul GFLOP/s (the best of 20 jitted 2048x2048 a @ b);
TAEF2's encoder and decoder in ms per frame at 128 and 256 px; the train
step from cached latents (s/step, steps/s, XLA's FLOP count and the fraction
of peak); and sampling with the embedded model: compile times (the first call,
another length in the same bucket, another guidance) and s/frame and FLOP/s
for 9, 17, 33 and 65 frames, and 17 frames at guidance 3 beside the model's
guidance 1 (which skips the unconditional half). On a CPU it then times the
train step and 17-frame sampling again in two processes, with XLA's own
default (YNNPACK) convolutions and with bidigen's
(``process.CPU_CONV_FLAG``, which the entry points set), then in two
more with glibc's malloc and with tcmalloc (``process.preload_tcmalloc``,
where it is installed), and prints the ratios (``--convolution_run`` is what
each of them runs). The header names the allocator this process runs with.

On an accelerator (or with ``--accelerator``) it instead measures the
chip's bf16 matmul peak and times the real train step of ``--config``
(``configs/webvid.py:runlocal``: 256 px, bf16) in several variants: float32
with XLA attention, bf16 with XLA and with cuDNN attention, and
each rematerialisation policy, printing step time, model TFLOP/s, MFU
against the chip's data-sheet bf16 peak and against the measured one, and
XLA's temporary memory:

  python -m bidigen.benchmark --config=configs/webvid.py:runlocal
"""

import os
import resource
import time

from bidigen import process

if __name__ == "__main__":
  process.tune()  # Before jax starts; may run this again with tcmalloc.

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
import jax  # noqa: E402
import jax.extend.core as jex_core  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from ml_collections import config_flags  # noqa: E402
import numpy as np  # noqa: E402

config_flags.DEFINE_config_file("config", "configs/synthetic.py",
                                "Config whose train step is timed.")
flags.DEFINE_integer("repeats", 5, "Timed repetitions per figure.")
flags.DEFINE_string("checkpoint", None, "Model to sample with; default: the "
                    "embedded one.")
flags.DEFINE_bool("convolution_run", False, "Only the peak, the train "
                  "step and 17-frame sampling: what each process of the CPU "
                  "comparisons (convolutions, allocators) runs.")
SECTIONS = ("autoencoder", "train_step", "sampling", "designs", "cpu")
flags.DEFINE_list("sections", list(SECTIONS), "CPU: which sections to run "
                  "after the matmul peak (autoencoder, train_step, sampling, "
                  "designs, cpu: the convolution and allocator processes).")
flags.DEFINE_bool("accelerator", False, "Run the accelerator section "
                  "(bf16 peak, train-step variants and MFU) even on a CPU; "
                  "on a GPU or TPU it is what runs.")
flags.DEFINE_list("variants", [], "Accelerator section: which variants, "
                  "as dtype/attention/remat (e.g. bfloat16/auto/dots); "
                  "default: all of ACCELERATOR_VARIANTS.")
flags.DEFINE_float("budget_s", 420.0, "Accelerator section: variants not "
                   "started within this many seconds are skipped (each "
                   "compiles a new program).")
FLAGS = flags.FLAGS

# Dense bf16 TFLOP/s from the vendors' data sheets (sparsity not counted),
# keyed by a part of jax's device_kind.
BF16_PEAK = {"H100": 989.0, "H200": 989.0, "GH200": 989.0, "A100": 312.0,
             "L4": 121.0, "TPU v4": 275.0, "TPU v5 lite": 197.0,
             "TPU v5e": 197.0, "TPU v5p": 459.0, "TPU v5": 459.0,
             "TPU v6 lite": 918.0, "TPU v6e": 918.0}


def nominal_peak(device_kind: str) -> float | None:
  """The data-sheet bf16 peak of a device kind, or None if unknown; the
  longest matching key wins ("TPU v5 lite" before "TPU v5")."""
  hits = [k for k in BF16_PEAK if k.lower() in device_kind.lower()]
  return BF16_PEAK[max(hits, key=len)] if hits else None


# (what it is, model.dtype, model.attention, model.remat), most telling
# first: the section stops starting variants at --budget_s.
ACCELERATOR_VARIANTS = (
    ("bf16, XLA attention, no remat", "bfloat16", "xla", "none"),
    ("bf16, auto attention, no remat", "bfloat16", "auto", "none"),
    ("bf16, auto attention, remat dots", "bfloat16", "auto", "dots"),
    ("float32, XLA attention, no remat", "float32", "xla", "none"),
    ("bf16, auto attention, remat blocks", "bfloat16", "auto", "blocks"),
)


def timed(fn, repeats):
  jax.block_until_ready(fn())  # Compile and warm up.
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return float(np.median(times))


def flops(jitted, *args) -> float:
  cost = jitted.lower(*args).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return float(cost.get("flops", 0.0))


def matmul_flops(jaxpr) -> float:
  """FLOPs of every dot and convolution in a jaxpr (2 per multiply-add),
  sub-jaxprs included, a scan's body times its length, a cond's costliest
  branch. The same count on every backend: XLA's compiled count on GPU
  leaves out cuBLAS's and cuDNN's custom calls, which are the matmuls and
  convolutions themselves."""
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    out = np.prod(eqn.outvars[0].aval.shape) if eqn.outvars else 0
    if name == "dot_general":
      (contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += 2.0 * out * np.prod([lhs[d] for d in contract])
    elif name == "conv_general_dilated":
      rhs = eqn.invars[1].aval.shape
      spec = eqn.params["dimension_numbers"].rhs_spec  # (out, in, *window)
      total += 2.0 * out * np.prod([rhs[d] for d in spec[1:]])
    subs = []
    for value in eqn.params.values():
      for v in value if isinstance(value, (tuple, list)) else (value,):
        if isinstance(v, (jex_core.Jaxpr, jex_core.ClosedJaxpr)):
          subs.append(matmul_flops(v))
    if subs:
      times = eqn.params.get("length", 1) if name == "scan" else 1
      total += times * (max(subs) if name == "cond" else sum(subs))
  return total


def peak_matmul(repeats) -> float:
  """The best of at least 20 jitted 2048x2048 float32 ``a @ b``: a peak is
  the most the machine gives, and the median of a few swung between 238
  and 294 GFLOP/s on one idle host minutes apart, moving every fraction of
  it by a quarter."""
  a = jnp.ones((2048, 2048), jnp.float32)
  f = jax.jit(lambda a, b: a @ b)
  jax.block_until_ready(f(a, a))
  best = float("inf")
  for _ in range(max(20, repeats)):
    t = time.perf_counter()
    jax.block_until_ready(f(a, a))
    best = min(best, time.perf_counter() - t)
  return 2 * 2048**3 / best / 1e9


def autoencoder(repeats, batch: int = 8):
  """TAEF2 encode and decode, ms per frame, at 128 and 256 px."""
  from bidigen.models import taef2
  params = taef2.load()
  enc, dec = jax.jit(taef2.encode), jax.jit(taef2.decode)
  rng = np.random.default_rng(0)
  for r in (128, 256):
    x = jnp.asarray(rng.random((batch, r, r, 3), np.float32))
    z = enc(params, x)
    e = timed(lambda: enc(params, x), repeats) / batch * 1e3
    d = timed(lambda: dec(params, z), repeats) / batch * 1e3
    print(f"TAEF2 at {r}px (batch {batch}): encode {e:.1f} ms/frame, "
          f"decode {d:.1f} ms/frame")


def train_setup(config):
  """The config with neutral latent statistics (no cache to take them
  from) and its mesh: what every train step here runs under."""
  from bidigen import sharding
  from bidigen.models import taef2
  config = config.copy_and_resolve_references()
  config.model.latent_mean = [0.0] * taef2.LATENT_CHANNELS
  config.model.latent_std = [1.0] * taef2.LATENT_CHANNELS
  config.model.residual_rms = [1.0] * taef2.LATENT_CHANNELS
  config.model.motion_rms = 1.0
  return config, sharding.make_mesh(config.mesh.axes)


def random_batch(config, mesh, text_dim: int = 384) -> dict:
  """A train batch of random latents and text: the step's cost does not
  depend on the values, and no autoencoder or text encoder is needed."""
  from bidigen import models, sharding
  b, t = config.train.batch_size, config.data.num_frames
  length = config.model.text.max_length
  rng = np.random.default_rng(0)
  local = {"latents": rng.normal(size=(b, t) + models.latent_shape(
               config.data.resolution)).astype(np.float32),
           "text": rng.normal(size=(b, length, text_dim)).astype(np.float32),
           "text_mask": np.ones((b, length), np.float32)}
  h = models.latent_shape(config.data.resolution)[0]
  local["motion"] = rng.normal(size=(b, t, h, h, 2)).astype(np.float32)
  if config.train.flow_weight:
    local["flows"] = np.zeros((b, t - 1, h, h, 2), np.float32)
  return sharding.global_batch(mesh, local)


def train_step(config, repeats, peak):
  """The step from cached latents (random: the cost does not depend on the
  values)."""
  from bidigen import models, train
  config, mesh = train_setup(config)
  trainer = train.Trainer(config, mesh, text_dim=384)
  b, r = config.train.batch_size, config.data.resolution
  cached = random_batch(config, mesh)
  key = jax.random.key(1)
  holder = {"state": trainer.init(jax.random.key(0))}
  n_flops = flops(trainer.step, holder["state"], cached, key)
  lat = models.latent_shape(r)

  def step():
    holder["state"], m = trainer.step(holder["state"], cached, key)
    return m
  sec = timed(step, repeats)
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  jax.block_until_ready(step())  # One more: the pages a step faults in.
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
  print(f"train step from cached latents (batch {b}, {r}px -> latents "
        f"{lat}, window {config.model.window}): {sec:.3f} s/step = "
        f"{1 / sec:.2f} steps/s; {n_flops / 1e9:.1f} GFLOP/step -> "
        f"{n_flops / sec / 1e9:.1f} GFLOP/s = "
        f"{100 * n_flops / sec / 1e9 / peak:.0f}% of the matmul peak; "
        f"{faults} page faults a step")


def sampling(checkpoint, repeats, peak, sides=(4, 8, 16, 32), compiles=True):
  """The embedded model's sampler: compile times (a new length bucket,
  another length in the same bucket, another guidance), then seconds per
  generated frame for ``2 * side + 1`` frames with FLOP/s against the
  matmul peak, then (``compiles``) 17 frames with guidance 3 against the
  model's default guidance (when that is 1).
  FLOPs are counted from XLA's cost analysis of one UNet call (one window,
  with its unconditional twin unless guidance is 1) and of TAEF2, times the
  calls the plan makes: the analysis of the whole scanned sampler counts a
  loop's body once."""
  from bidigen import expansion, media, models, motion, sample
  from bidigen.models import taef2
  t = time.perf_counter()
  gen = sample.Generator(checkpoint)
  print(f"model load: {time.perf_counter() - t:.1f} s")
  cfg = gen.config
  window, context, steps, guidance = (
      cfg.model.window, cfg.model.context_frames, cfg.sample.steps,
      cfg.sample.guidance)
  image = media.load_image(
      os.path.join(media.EXAMPLES, "red_ball_temple.png"), gen.resolution)
  prompt = ["a red ball moves to the right"]
  call = lambda before, after, **kw: gen(
      image[None], prompt, frames_before=before, frames_after=after, seed=0,
      **kw)

  def wall(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t
  if compiles:
    first = wall(lambda: call(4, 4))
    steady = timed(lambda: call(4, 4), max(1, repeats // 2))
    same_bucket = wall(lambda: call(3, 4))
    other = 1.5 if guidance != 1.5 else 3.0
    other_time = wall(lambda: call(4, 4, guidance=other))
    programs = sum(f._cache_size() for f in gen._compiled.values())
    print(f"sampler compile, 9 frames: first call {first:.1f} s (steady "
          f"{steady:.1f} s, so ~{first - steady:.1f} s compiling); 8 "
          f"frames, the same bucket: {same_bucket:.1f} s; guidance {other:g} "
          f"instead of {guidance:g}: {other_time:.1f} s ({programs} "
          f"program{'s' * (programs > 1)} compiled)")

  # FLOPs of one UNet call per window (two with guidance) and of TAEF2.
  h = models.latent_shape(gen.resolution)
  x = h[:2] + (motion.channels(gen.target),)  # What the model generates.
  unet_flops = {}
  for n in (1, 2):
    text, mask = gen.encoder.encode([""] * n)
    unet_args = (jnp.zeros((n, window) + x), jnp.zeros((n, window)),
                 jnp.zeros((n,) + h), jnp.zeros((n, window), jnp.int32),
                 jnp.zeros((n, window)), text, mask)
    unet_flops[n] = flops(jax.jit(gen.unet.apply), gen.params["unet"],
                          *unet_args)
  ae = gen.params["autoencoder"]
  dec_flops = flops(jax.jit(taef2.decode), ae, jnp.zeros((1,) + h))
  enc_flops = flops(jax.jit(taef2.encode), ae, jnp.zeros(
      (1, gen.resolution, gen.resolution, 3)))
  print(f"one UNet call on a window of {window}: {unet_flops[1] / 1e9:.1f} "
        f"GFLOP ({unet_flops[2] / 1e9:.1f} with its unconditional twin, for "
        f"guidance other than 1); TAEF2 per frame: encode "
        f"{enc_flops / 1e9:.2f}, decode {dec_flops / 1e9:.2f} GFLOP")

  def run(side, g, n_steps=steps, **kw):
    """Seconds and GFLOP for 2 * side + 1 frames at guidance g."""
    bucket = expansion.bucket(side, side, window, context)
    solved = 1 + 2 * expansion.plan(bucket, bucket, window, context)[2]
    sample_kw = dict(guidance=g, steps=n_steps, **kw)
    call(side, side, **sample_kw)  # Compiles a new bucket.
    sec = timed(lambda: call(side, side, **sample_kw), max(1, repeats // 2))
    return sec, solved, (solved * n_steps * unet_flops[1 + (g != 1)]
                         + (2 * bucket + 1) * dec_flops + enc_flops) / 1e9

  print(f"guidance {guidance:g}:")
  print("frames  windows (needed)  s/sample  s/frame  GFLOP  GFLOP/s  "
        "of peak")
  results = {}
  for side in sides:
    n = 2 * side + 1
    need = 1 + 2 * expansion.plan(side, side, window, context)[2]
    sec, solved, total = results[side] = run(side, guidance)
    print(f"{n:6d}  {solved:7d} ({need:2d})      {sec:8.2f}  "
          f"{sec / n:7.3f}  {total:5.0f}  {total / sec:7.1f}  "
          f"{100 * total / sec / peak:5.0f}%")
  print(f"(each expansion step solves 2 windows for {window - context} new "
        "frames a side, so windows per frame rise from 1/9 towards 1/5; "
        "a bucket rounds expansion steps up to a power of two)")
  if 8 in results:
    sec, _, total = results[8]
    print(f"17 frames: {sec:.2f} s, {total / sec:.1f} GFLOP/s = "
          f"{100 * total / sec / peak:.0f}% of peak ({steps} "
          f"{cfg.sample.solver} steps, guidance {guidance:g})")
  if not (compiles and 8 in results):
    return
  if guidance == 1:
    sec3, _, total3 = run(8, 3.0)
    print(f"17 frames at guidance 3: {sec3:.2f} s, {total3 / sec3:.1f} "
          f"GFLOP/s = {100 * total3 / sec3 / peak:.0f}% of peak; guidance 1 "
          f"skips the unconditional half: {sec3 / results[8][0]:.2f}x as "
          "fast")


def designs(config, checkpoint, repeats):
  """The embedded model's design (what ``config.model.target`` it
  generates) against whole frames, the design before it, in the same run:
  train steps per second at equal batch, and seconds for 17 and 65 frames.
  Whole frames sample with the same UNet and random weights (time does not
  depend on them); the other targets also decode F0's reference once more
  per frame (and run OpenCV's flow on known frames, for "motion")."""
  import copy
  from bidigen import media, models, sample, sharding, train
  gen = sample.Generator(checkpoint)
  targets = ("latent", gen.target)
  steps = {}
  for target in targets:
    cfg, mesh = train_setup(config)
    cfg.model.target = target
    trainer = train.Trainer(cfg, mesh, text_dim=384)
    holder = {"state": trainer.init(jax.random.key(0))}
    batch, key = random_batch(cfg, mesh), jax.random.key(1)

    def step():
      holder["state"], m = trainer.step(holder["state"], batch, key)
      return m
    steps[target] = timed(step, repeats)
  old = copy.copy(gen)
  old.target, old._compiled = "latent", {}
  cfg = gen.config
  params = jax.jit(lambda k: train.init_state(
      k, unet=gen.unet, tx=train.make_optimizer(cfg.train),
      latent_shape=models.latent_shape(gen.resolution),
      window=cfg.model.window,
      text_shape=(cfg.model.text.max_length, gen.encoder.dim)).params)(
          jax.random.key(0))
  old.params = jax.device_put(dict(gen.params, unet=params),
                              sharding.replicated(gen.mesh))
  image = media.load_image(os.path.join(media.EXAMPLES, "cat.png"),
                           gen.resolution)[None]
  secs = {}
  for target, g in zip(targets, (old, gen)):
    for side in (8, 32):
      call = lambda: g(image, ["the camera pans to the left over a cat"],
                       frames_before=side, frames_after=side, seed=0)
      call()  # Compiles.
      secs[target, side] = timed(call, max(1, repeats // 2))
  a, b = targets
  model = checkpoint or "the embedded model"
  print(f"designs: whole frames against {b!r} ({model}'s target)")
  print(f"  train step, batch {config.train.batch_size}: {steps[a]:.3f} s "
        f"against {steps[b]:.3f} s ({steps[a] / steps[b]:.2f}x the steps/s)")
  for side in (8, 32):
    print(f"  {2 * side + 1} frames: {secs[a, side]:.2f} s against "
          f"{secs[b, side]:.2f} s ({secs[a, side] / secs[b, side]:.2f}x as "
          "fast)")


def cpu_processes(repeats, what: str, settings):
  """The train step and 17-frame sampling in one process per setting
  (``(name, environment changes)``: XLA and the loader read theirs once,
  when a process starts), each against the matmul peak measured in that
  process; then the first setting's times over the last's."""
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  times = {}
  for name, env in settings:
    out = subprocess.run(
        [sys.executable, "-m", "bidigen.benchmark", "--convolution_run",
         f"--repeats={repeats}",
         f"--config={config_flags.get_config_filename(FLAGS['config'])}"]
        + [f"--checkpoint={FLAGS.checkpoint}"] * bool(FLAGS.checkpoint),
        env=dict(os.environ, **env), capture_output=True, text=True,
        check=False)
    if out.returncode:
      raise RuntimeError(f"the {name} run failed:\n{out.stderr[-3000:]}")
    lines = out.stdout.splitlines()
    step = next(l for l in lines if l.startswith("train step from cached"))
    frames = next(l for l in lines if l.startswith("17 frames: "))
    times[name] = (float(step.split(": ")[1].split(" s/step")[0]),
                   float(frames.split()[2]))
    print(f"  {name}:\n    train step: {step.split(': ', 1)[1]}"
          f"\n    {frames}")
  old, new = times[settings[0][0]], times[settings[-1][0]]
  print(f"{what}: the train step {old[0] / new[0]:.2f}x as fast, sampling "
        f"{old[1] / new[1]:.2f}x")


def cpu_convolutions(repeats):
  """XLA's own default CPU convolutions (YNNPACK) against bidigen's
  ``CPU_CONV_FLAG``."""
  user = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split()
                  if "ynn_fusion_type" not in f)
  cpu_processes(repeats, "bidigen's CPU convolutions against XLA's default",
                [(f"{name} ({flag})", {"XLA_FLAGS": f"{flag} {user}".strip()})
                 for name, flag in (
                     ("XLA's default (YNNPACK)", process.XLA_DEFAULT_CONV_FLAG),
                     ("bidigen's default", process.CPU_CONV_FLAG))])


def cpu_allocators(repeats):
  """glibc's malloc against tcmalloc (``process.preload_tcmalloc``), where
  tcmalloc is installed."""
  path = process.tcmalloc_path()
  if path is None:
    print("allocators: tcmalloc is not installed (Debian: "
          "libtcmalloc-minimal4), nothing to compare")
    return
  user = " ".join(p for p in os.environ.get("LD_PRELOAD", "").split()
                  if "tcmalloc" not in p)
  cpu_processes(repeats, "tcmalloc against glibc's malloc", [
      ("glibc's malloc (BIDIGEN_MALLOC=system)",
       {"BIDIGEN_MALLOC": "system", "LD_PRELOAD": user}),
      (f"tcmalloc (LD_PRELOAD={path})",
       {"BIDIGEN_MALLOC": "tcmalloc", "LD_PRELOAD": user})])


def accelerator(config, repeats, budget_s, variants=ACCELERATOR_VARIANTS):
  """MFU of the real train step on this chip, per variant.

  MFU counts model FLOPs: the matmuls and convolutions of the step with
  XLA attention and no remat (``matmul_flops``; recomputation is overhead,
  not model work)."""
  from bidigen import train
  start = time.perf_counter()
  dev = jax.devices()[0]
  nominal = nominal_peak(dev.device_kind)
  n = 8192 if dev.platform != "cpu" else 1024
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
  matmul = jax.jit(lambda a, b: a @ b)
  measured = 2 * n**3 / timed(lambda: matmul(a, a), repeats) / 1e12
  print(f"accelerator: {len(jax.devices())} x {dev.device_kind}; bf16 "
        f"matmul {n}x{n}: {measured:.0f} TFLOP/s measured; data-sheet peak "
        f"{nominal if nominal else 'unknown'} TFLOP/s")
  base, mesh = train_setup(config)
  batch = random_batch(base, mesh)
  key = jax.random.key(1)
  print(f"train step: batch {base.train.batch_size}, "
        f"{base.data.resolution}px, {base.data.num_frames} frames, window "
        f"{base.model.window}, UNet channels {base.model.unet.channels}")
  model_flops = {}

  def variant(dtype, attention, remat):
    cfg = base.copy_and_resolve_references()
    cfg.model.update(dtype=dtype, attention=attention, remat=remat)
    return train.Trainer(cfg, mesh, text_dim=384)

  for name, dtype, attention, remat in variants:
    if time.perf_counter() - start > budget_s:
      print(f"  {name}: skipped (--budget_s={budget_s:g} reached)")
      continue
    try:
      if dtype not in model_flops:  # Traced, not compiled: seconds.
        ref = variant(dtype, "xla", "none")
        model_flops[dtype] = matmul_flops(jax.make_jaxpr(ref.step_fn)(
            ref.abstract_state, batch, key))
      trainer = variant(dtype, attention, remat)
      holder = {"state": trainer.init(jax.random.key(0))}
      t = time.perf_counter()
      compiled = trainer.step.lower(holder["state"], batch, key).compile()
      compile_s = time.perf_counter() - t
      mem = compiled.memory_analysis()
      temp = getattr(mem, "temp_size_in_bytes", 0) / 2**30 if mem else 0.0

      def step():
        holder["state"], m = compiled(holder["state"], batch, key)
        return m
      sec = timed(step, repeats)
      del holder
    except Exception as e:  # One variant's failure must not hide the rest.
      first = (str(e).strip().splitlines() or [""])[0][:300]
      print(f"  {name}: failed: {type(e).__name__}: {first}")
      continue
    tflops = model_flops[dtype] / sec / 1e12
    mfu = f"{100 * tflops / nominal:.1f}%" if nominal else "n/a"
    print(f"  {name}: {sec * 1e3:.1f} ms/step, {tflops:.1f} TFLOP/s "
          f"(model {model_flops[dtype] / 1e12:.2f} TFLOP/step), MFU {mfu} "
          f"of the data sheet, {100 * tflops / measured:.1f}% of the "
          f"measured peak; compile {compile_s:.0f} s; XLA temporaries "
          f"{temp:.1f} GiB")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  malloc = "tcmalloc" if process.tcmalloc_preloaded() else "system malloc"
  print(f"devices: {jax.devices()}  cores: {os.cpu_count()}  allocator: "
        f"{malloc}")
  if FLAGS.accelerator or jax.default_backend() != "cpu":
    by_key = {"/".join(v[1:]): v for v in ACCELERATOR_VARIANTS}
    unknown = [k for k in FLAGS.variants if k not in by_key]
    if unknown:
      raise app.UsageError(f"--variants: {', '.join(unknown)} unknown; "
                           f"known: {', '.join(by_key)}")
    chosen = [by_key[k] for k in FLAGS.variants] or ACCELERATOR_VARIANTS
    accelerator(FLAGS.config, FLAGS.repeats, FLAGS.budget_s, chosen)
    return
  peak = peak_matmul(FLAGS.repeats)
  print(f"peak float32 matmul (best of 20 jitted 2048x2048 a@b): "
        f"{peak:.0f} GFLOP/s")
  if FLAGS.convolution_run:
    train_step(FLAGS.config, FLAGS.repeats, peak)
    sampling(FLAGS.checkpoint, FLAGS.repeats, peak, sides=(8,),
             compiles=False)
    return
  unknown = [s for s in FLAGS.sections if s not in SECTIONS]
  if unknown:
    raise app.UsageError(f"--sections: {', '.join(unknown)} unknown; known: "
                         f"{', '.join(SECTIONS)}")
  run = lambda name: name in FLAGS.sections
  if run("autoencoder"):
    autoencoder(FLAGS.repeats)
  if run("train_step"):
    train_step(FLAGS.config, FLAGS.repeats, peak)
  if run("sampling"):
    sampling(FLAGS.checkpoint, FLAGS.repeats, peak)
  if run("designs"):
    designs(FLAGS.config, FLAGS.checkpoint, FLAGS.repeats)
  if run("cpu") and jax.default_backend() == "cpu":
    cpu_convolutions(FLAGS.repeats)
    cpu_allocators(FLAGS.repeats)


if __name__ == "__main__":
  app.run(main)
