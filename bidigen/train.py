"""Training: masked video diffusion on cached TAEF2 latents.

The autoencoder (TAEF2) and the text encoder are pretrained and frozen; both
ran once, in ``--mode=encode`` (``bidigen.latents``), so a step reads latents
and caption embeddings and trains the UNet alone. The step is one pure
function, jitted once with explicit shardings and a donated state.

Nothing here imports TensorFlow, TFDS or transformers: training runs where
only jax, flax, optax, orbax, grain, array_record, ml_collections, absl and
clu are installed (without TensorFlow, clu's writers are replaced by
metrics.jsonl and the log, which this says when it starts).
"""

import contextlib
import functools
import json
import os
import signal
import threading
import time

from absl import logging
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from bidigen import checkpoints
from bidigen import diffusion
from bidigen import latents as latents_lib
from bidigen import models
from bidigen import motion
from bidigen import sharding


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: dict        # The UNet's, boxed with logical axes until sharded.
  opt_state: dict
  # EMAs of the params, one per config.train.ema_decays: the first is what
  # a workdir samples with; export --ema picks another after the gate has
  # scored each on held-out data.
  ema: tuple


SCHEDULES = ("constant", "cosine")


def make_optimizer(cfg) -> optax.GradientTransformation:
  """AdamW after a linear warm-up, clipped. ``cfg.schedule``: "constant"
  (a run that goes on across many sessions: a decay would end it) or
  "cosine" (decay to 5% at ``num_steps``)."""
  warmup = min(cfg.warmup_steps, max(cfg.num_steps - 1, 1))
  if cfg.schedule == "constant":
    schedule = optax.join_schedules(
        [optax.linear_schedule(0.0, cfg.learning_rate, max(warmup, 1)),
         optax.constant_schedule(cfg.learning_rate)], [max(warmup, 1)])
  elif cfg.schedule == "cosine":
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, cfg.learning_rate, warmup, max(cfg.num_steps, 2),
        end_value=cfg.learning_rate * 0.05)
  else:
    raise ValueError(f"config.train.schedule={cfg.schedule!r}; known: "
                     f"{', '.join(SCHEDULES)}")
  return optax.chain(optax.clip_by_global_norm(cfg.grad_clip),
                     optax.adamw(schedule, b2=0.99,
                                 weight_decay=cfg.weight_decay))


def init_state(rng, *, unet, tx, latent_shape, window, text_shape,
               target="latent", num_emas=1):
  b = 1
  x_shape = latent_shape[:2] + (motion.channels(target, latent_shape[2]),)
  params = unet.init(
      rng, jnp.zeros((b, window) + x_shape), jnp.zeros((b, window)),
      jnp.zeros((b,) + latent_shape), jnp.zeros((b, window), jnp.int32),
      jnp.zeros((b, window)), jnp.zeros((b,) + text_shape),
      jnp.ones((b, text_shape[0])))
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=tx.init(params), ema=(params,) * num_emas)


def augment(batch: dict, rng, *, mirror_prob: float, reverse_prob: float):
  """Clips mirrored left-right and played backwards, each with its caption's
  direction words swapped (encoded with the cache): the same scenes moving
  the other way, so that direction words must be read. F0, the centre
  frame, stays F0. Mirrored clips need their own latents (encoded with
  ``mirror_prob`` > 0): TAEF2's latent space is not mirror-symmetric (four
  photographs' latents flipped decode 15-20 dB from the flipped photos,
  against a 25-30 dB round trip), so flipping latents would teach noise.
  A clip is mirrored or reversed, never both (its caption would need both
  swaps)."""
  b = batch["latents"].shape[0]
  u = jax.random.uniform(rng, (b,))
  flags = {"_mirrored": (mirror_prob, u < mirror_prob),
           "_reversed": (reverse_prob, (u >= mirror_prob)
                         & (u < mirror_prob + reverse_prob))}
  flip = lambda a: a[:, :, :, ::-1] * jnp.array([-1.0, 1.0])
  out = dict(batch)
  for suffix, (prob, flag) in flags.items():
    if not prob or "text" + suffix not in batch:
      continue
    if suffix == "_mirrored":
      new = {"latents": batch["latents_mirrored"],
             "motion": flip(batch["motion"])}
      if "flows" in batch:
        new["flows"] = flip(batch["flows"])
    else:
      new = {"latents": batch["latents"][:, ::-1],
             "motion": batch["motion"][:, ::-1]}
      if "flows" in batch:  # t -> t+1 played backwards is -(t+1 -> t).
        new["flows"] = -batch["flows"][:, ::-1]
    new["text"] = batch["text" + suffix]
    new["text_mask"] = batch["text_mask" + suffix]
    for k, v in new.items():
      out[k] = jnp.where(flag.reshape((b,) + (1,) * (v.ndim - 1)), v, out[k])
  return out


def train_step(state, batch, rng, *, unet, tx, window, max_context,
               ema_decays, latent_mean, latent_std, task_probs,
               residual_rms=1.0, motion_rms=1.0, target="latent",
               flow_weight=0.0, min_snr=0.0, noise_levels="uniform",
               mirror_prob=0.0, reverse_prob=0.0):
  """One UNet update on random windows with the masks sampling uses.

  ``batch["latents"]`` holds TAEF2's raw latents [B, T, h, w, c] of whole
  clips and ``batch["motion"]`` their motion from the centre frame, F0,
  every window's anchor; the model learns what ``target`` says
  (bidigen.motion).
  """
  k_aug, k_win, k_loss = jax.random.split(rng, 3)
  batch = augment(batch, k_aug, mirror_prob=mirror_prob,
                  reverse_prob=reverse_prob)
  lat = (batch["latents"] - latent_mean) / latent_std
  b, t = lat.shape[:2]
  anchor = lat[:, t // 2]
  x = motion.to_model(lat, batch.get("motion"), anchor, target=target,
                      residual_rms=residual_rms, motion_rms=motion_rms)
  start, known, _ = diffusion.sample_windows(k_win, t, window, max_context, b,
                                             task_probs)
  cut = lambda a, n: jax.vmap(
      lambda v, s: jax.lax.dynamic_slice_in_dim(v, s, n, axis=0))(a, start)
  x0 = cut(x, window)
  offsets = start[:, None] + jnp.arange(window)[None] - t // 2
  # Flow t -> t+1 of the clip at latent resolution, when encoded with it.
  flows = cut(batch["flows"], window - 1) if "flows" in batch else None

  def loss_fn(params):
    return diffusion.diffusion_loss(
        unet.apply, params, k_loss, x0, known, anchor, offsets,
        batch["text"], batch["text_mask"], flows, flow_weight,
        min_snr=min_snr, noise_levels=noise_levels)

  # With config.model.dtype=bfloat16 the activations are bf16 but params,
  # grads and the loss are float32: bf16 has float32's exponent range, so
  # gradients do not underflow as in float16 and need no loss scaling.
  (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  # Warm-up by this run's own step: each EMA follows the weights closely
  # while they move fast (over about the last tenth of the run), then
  # averages over ~1 / (1 - decay) steps, so two decays part only after
  # ~10 / (1 - the smaller) steps (9,000 for 0.999).
  n = (state.step + 1).astype(jnp.float32)

  def average(ema, decay):
    decay = jnp.minimum(decay, (1.0 + n) / (10.0 + n))
    return jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, ema, params)
  ema = tuple(average(e, d) for e, d in zip(state.ema, ema_decays))
  state = state.replace(step=state.step + 1, params=params,
                        opt_state=opt_state, ema=ema)
  return state, dict(aux, loss=loss, grad_norm=optax.tree.norm(grads))


class Trainer:
  """Holds the compiled step and shardings for one config and mesh."""

  def __init__(self, config: ml_collections.ConfigDict, mesh, text_dim: int):
    self.config = config
    self.mesh = mesh
    cfg = config.train
    validate(config, mesh)
    self.unet = models.build(config.model)
    self.tx = make_optimizer(cfg)
    mean, std = motion.latent_stats(config.model)
    target = config.model.target
    init = functools.partial(
        init_state, unet=self.unet, tx=self.tx,
        latent_shape=models.latent_shape(config.data.resolution),
        window=config.model.window,
        text_shape=(config.model.text.max_length, text_dim), target=target,
        num_emas=len(cfg.ema_decays))
    # Parameters carry logical axis names only until their shardings are
    # known; the state itself holds plain arrays.
    abstract = jax.eval_shape(init, jax.random.key(0))
    self.state_sharding = sharding.logical_shardings(
        mesh, abstract, config.mesh.logical_axis_rules)
    self.abstract_state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        nn.unbox(abstract), self.state_sharding)
    rep = sharding.replicated(mesh)
    data = sharding.batch_sharding(mesh)
    self.init = jax.jit(lambda rng: nn.unbox(init(rng)),
                        out_shardings=self.state_sharding)
    self.step_fn = functools.partial(
        train_step, unet=self.unet, tx=self.tx, window=config.model.window,
        max_context=config.model.context_frames,
        ema_decays=tuple(float(d) for d in cfg.ema_decays),
        latent_mean=mean, latent_std=std, target=target,
        **motion.scales(config.model), **loss_options(cfg))
    self.step = jax.jit(
        self.step_fn, in_shardings=(self.state_sharding, data, rep),
        out_shardings=(self.state_sharding, rep), donate_argnums=0)


def kept_activations(config, batch: int, text_dim: int) -> int:
  """Bytes the UNet's forward pass keeps for its backward pass on ``batch``
  windows under the config's ``model.remat``: the residuals ``jax.vjp``
  closes over, from shapes alone (nothing runs). Parameters the backward
  needs are among them; the difference between two batch sizes leaves the
  activations. XLA may fuse some of these away (an elementwise result
  recomputed inside its consumer's fusion): with "none" one H200's
  temporaries were 12.6 GiB at 8 examples of configs/webvid.py:runlocal,
  less than half of this count, with "dots" 6.0 GiB, about this count."""
  unet = models.build(config.model)
  w, n = config.model.window, config.model.text.max_length
  lat = models.latent_shape(config.data.resolution)
  x = lat[:2] + (motion.channels(config.model.target, lat[2]),)
  shape = lambda *s, dtype=jnp.float32: jax.ShapeDtypeStruct(s, dtype)
  args = (shape(batch, w, *x), shape(batch, w), shape(batch, *lat),
          shape(batch, w, dtype=jnp.int32), shape(batch, w),
          shape(batch, n, text_dim), shape(batch, n))

  def residuals(params, *inputs):
    out = lambda p: jnp.sum(unet.apply(p, *inputs))
    return jax.tree.leaves(jax.vjp(out, params)[1])
  params = jax.eval_shape(unet.init, jax.random.key(0), *args)
  return sum(a.size * a.dtype.itemsize
             for a in jax.eval_shape(residuals, params, *args))


def loss_options(cfg) -> dict:
  """The diffusion loss's and the augmentation's options."""
  return {"task_probs": tuple(cfg.task_probs),
          "flow_weight": float(cfg.flow_weight),
          "min_snr": float(cfg.min_snr), "noise_levels": cfg.noise_levels,
          "mirror_prob": float(cfg.mirror_prob),
          "reverse_prob": float(cfg.reverse_prob)}


def validate(config, mesh=None) -> None:
  cfg = config.train
  for key in ("num_steps", "batch_size", "log_every", "checkpoint_every"):
    if cfg[key] < 1:
      raise ValueError(f"config.train.{key} must be >= 1, got {cfg[key]}")
  opts = loss_options(cfg)
  probs = opts["task_probs"]
  if (len(probs) != len(diffusion.TASKS) or min(probs) < 0
      or abs(sum(probs) - 1) > 1e-6):
    raise ValueError(f"config.train.task_probs must be {len(diffusion.TASKS)} "
                     f"non-negative numbers summing to 1 (for "
                     f"{', '.join(diffusion.TASKS)}), got {probs}")
  if not cfg.ema_decays or not all(0 <= d < 1 for d in cfg.ema_decays):
    raise ValueError("config.train.ema_decays must be one or more decays in "
                     f"[0, 1), got {tuple(cfg.ema_decays)}")
  for key in ("flow_weight", "min_snr"):
    if not opts[key] >= 0:
      raise ValueError(f"config.train.{key} must be >= 0, got {opts[key]}")
  for key in ("mirror_prob", "reverse_prob"):
    if not 0 <= opts[key] <= 1:
      raise ValueError(f"config.train.{key} must be in [0, 1], got "
                       f"{opts[key]}")
  if opts["mirror_prob"] + opts["reverse_prob"] > 1:
    raise ValueError("config.train.mirror_prob + reverse_prob must be <= 1: "
                     "a clip is mirrored or reversed, not both")
  if opts["noise_levels"] not in diffusion.NOISE_LEVELS:
    raise ValueError(f"config.train.noise_levels={opts['noise_levels']!r}; "
                     f"known: {', '.join(diffusion.NOISE_LEVELS)}")
  if cfg.schedule not in SCHEDULES:
    raise ValueError(f"config.train.schedule={cfg.schedule!r}; known: "
                     f"{', '.join(SCHEDULES)}")
  motion.check_target(config.model.target)
  if not 1 <= config.model.context_frames < config.model.window:
    raise ValueError("config.model.context_frames must be in [1, window)")
  if config.model.window > config.data.num_frames:
    raise ValueError(f"config.model.window={config.model.window} is longer "
                     f"than the clips ({config.data.num_frames} frames)")
  if mesh is not None:
    sharding.check_batch(mesh, cfg.batch_size)
  models.latent_shape(config.data.resolution)


def host_batch(raw: dict, null_text, null_mask, *, seed: int, step: int,
               text_dropout: float, row: int = 0,
               global_rows: int | None = None) -> dict:
  """This process's rows for the device; captions dropped to the empty
  prompt's embedding for guidance.

  ``raw`` holds rows ``row...`` of a global batch of ``global_rows``: the
  same captions drop however many processes share the batch.
  """
  n = len(raw["latents"])
  drop = np.random.default_rng([seed, step]).random(
      global_rows or n)[row:row + n] < text_dropout
  batch = dict(raw)
  for suffix in ("", "_mirrored", "_reversed"):
    if "text" + suffix in raw:
      batch["text" + suffix] = np.where(drop[:, None, None], null_text[None],
                                        raw["text" + suffix])
      batch["text_mask" + suffix] = np.where(
          drop[:, None], null_mask[None], raw["text_mask" + suffix])
  return batch


def with_latent_stats(config, meta: dict) -> ml_collections.ConfigDict:
  """The config to train and save with: the latent statistics (of the cache,
  or pooled over a mixture's) in ``config.model``, so the exported model
  carries what it normalises by."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.model.latent_mean = [round(v, 6) for v in meta["latent_mean"]]
  config.model.latent_std = [round(v, 6) for v in meta["latent_std"]]
  # What the target generates, in normalised latent units.
  rms = {"latent": None, "residual": meta.get("delta_rms"),
         "motion": meta.get("correction_rms")}[config.model.target]
  config.model.residual_rms = None if rms is None else [
      round(r / s, 6) for r, s in zip(rms, meta["latent_std"])]
  config.model.motion_rms = (round(meta["motion_rms"], 6)
                             if config.model.target == "motion" else None)
  return config


def warm_start(trainer: Trainer, rng, path: str) -> TrainState:
  """A state initialised from an exported model's weights (its EMA as the
  params and every EMA), with fresh optimizer moments and this run's schedule from
  step 0. This is how a model keeps training when only its export was kept.
  A model of another architecture is refused before anything compiles."""
  _, loaded = checkpoints.load_model(path)
  shapes = lambda t: jax.tree.map(lambda a: tuple(np.shape(a)), t)
  if shapes(trainer.abstract_state.params) != shapes(loaded["unet"]):
    raise ValueError(f"config.train.init_from={path}: its architecture does "
                     "not match this config's model")
  state = trainer.init(rng)
  shard = trainer.state_sharding
  return state.replace(params=jax.device_put(loaded["unet"], shard.params),
                       ema=tuple(jax.device_put(loaded["unet"], s)
                                 for s in shard.ema))


class _Writer:
  """clu's metric writer and progress report when clu can import them (its
  writers need TensorFlow); otherwise metrics.jsonl and the log only."""

  def __init__(self, workdir: str, is_main: bool, num_steps: int,
               every: int):
    try:
      from clu import metric_writers  # pylint: disable=g-import-not-at-top
      from clu import periodic_actions  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      if is_main:
        logging.warning("clu's metric writers are unavailable (%s): metrics "
                        "go to %s/metrics.jsonl and this log only", e,
                        workdir)
      self.writer = self.report = None
      return
    self.writer = metric_writers.create_default_writer(
        workdir, just_logging=not is_main)
    self.report = periodic_actions.ReportProgress(
        num_train_steps=num_steps, writer=self.writer, every_steps=every)

  def progress(self, step: int) -> None:
    if self.report is not None:
      self.report(step)

  def scalars(self, step: int, scalars: dict) -> None:
    if self.writer is not None:
      self.writer.write_scalars(step, scalars)

  def flush(self):
    if self.writer is not None:
      self.writer.flush()


def train(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains (or resumes) in ``workdir`` from the encoded latents; returns
  the final state.

  Every process runs this; each reads its rows of the global batch. SIGTERM
  (a preemption notice) saves a checkpoint at the step reached and returns,
  so a later run resumes there; a SIGKILL loses the steps since the last
  checkpoint.
  """
  import grain  # pylint: disable=g-import-not-at-top
  cfg = config.train
  validate(config)  # Before any slow work.
  srcs = latents_lib.sources(config.data)
  caches = [latents_lib.cache_dir(section) for section, _ in srcs.values()]
  weights = [w for _, w in srcs.values()]
  metas = [latents_lib.read_meta(cache) for cache in caches]
  for meta, cache in zip(metas, caches):
    latents_lib.check_matches(meta, config, cache)
    if cfg.mirror_prob and not meta["mirrored"]:
      raise ValueError(f"config.train.mirror_prob > 0 needs mirrored "
                       f"latents, but the latents in {cache} were encoded "
                       "without: encode again with this config "
                       "(--mode=encode --overwrite)")
    if loss_options(cfg)["flow_weight"] and not meta["flows"]:
      raise ValueError(f"config.train.flow_weight > 0 needs flows, but the "
                       f"latents in {cache} were encoded without: encode "
                       "again with this config (--mode=encode --overwrite)")
  mean, std = latents_lib.pooled_stats(metas, weights)
  config = with_latent_stats(config, {
      "latent_mean": mean, "latent_std": std,
      **{k: motion.pooled_rms([m[k] for m in metas], weights)
         for k in ("delta_rms", "correction_rms")},
      "motion_rms": motion.pooled_rms([m["motion_rms"] for m in metas],
                                      weights)})
  null_text, null_mask = latents_lib.load_null_text(caches[0])
  mesh = sharding.make_mesh(config.mesh.axes)
  trainer = Trainer(config, mesh, metas[0]["text_dim"])
  process, processes = jax.process_index(), jax.process_count()
  if len(caches) > 1:
    logging.info("training on %s", ", ".join(
        f"{name} ({w / sum(weights):.0%}, {m['num_clips']} clips)"
        for name, w, m in zip(srcs, weights, metas)))
  loader = latents_lib.make_mixture_loader(
      caches, weights, global_batch_size=cfg.batch_size, seed=config.seed,
      shard_index=process, shard_count=processes)
  data_iter = iter(loader)

  mngr = checkpoints.manager(workdir, cfg.keep_checkpoints)
  args = checkpoints.ocp.args
  is_main = process == 0
  jsonl = os.path.join(workdir, "metrics.jsonl")
  start = mngr.latest_step()
  if start is None:
    if cfg.init_from:
      state = warm_start(trainer, jax.random.key(config.seed), cfg.init_from)
      logging.info("warm start from %s", cfg.init_from)
    else:
      state = trainer.init(jax.random.key(config.seed))
    start = 0
  else:
    restored = mngr.restore(start, args=args.Composite(
        state=args.StandardRestore(trainer.abstract_state),
        data=grain.checkpoint.CheckpointRestore(data_iter)))
    state = restored["state"]
    if is_main:  # Steps after the checkpoint are logged again below.
      drop_metrics_after(jsonl, start)
    logging.info("resuming from step %d in %s", start, workdir)

  writer = _Writer(workdir, is_main, cfg.num_steps, cfg.log_every)
  root = jax.random.key(config.seed)
  pending = []  # Metrics stay on the device until a log step.
  t_log, s_log = time.time(), start
  waited = 0.0  # Seconds the loop spent waiting for input since the log.

  def save(step):
    mngr.save(step, args=args.Composite(
        state=args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(data_iter),
        config=args.JsonSave(config.to_dict())), force=True)

  with preemption_notice(mngr) as preempted:
    for step in range(start, cfg.num_steps):
      t_data = time.time()
      raw = next(data_iter)
      waited += time.time() - t_data
      local = len(raw["latents"])
      batch = sharding.global_batch(mesh, host_batch(
          raw, null_text, null_mask, seed=config.seed, step=step,
          text_dropout=cfg.text_dropout, row=process * local,
          global_rows=cfg.batch_size))
      state, metrics = trainer.step(state, batch,
                                    jax.random.fold_in(root, step))
      pending.append(metrics)
      done = step + 1
      writer.progress(done)
      stop = preempted(done)
      if (done % cfg.log_every == 0 or done == cfg.num_steps or stop):
        rows = jax.device_get(pending)
        pending = []
        means = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
        if not all(np.isfinite(r["loss"]) for r in rows):
          mngr.wait_until_finished()
          raise FloatingPointError(
              f"loss is {means['loss']} at step {done} (mean of the steps "
              f"since the last log): stopping; the last good checkpoint is "
              f"step {mngr.latest_step()} in {workdir}")
        rate = (done - s_log) / max(time.time() - t_log, 1e-9)
        wait_ms = 1000 * waited / max(done - s_log, 1)
        t_log, s_log, waited = time.time(), done, 0.0
        eta = (cfg.num_steps - done) / max(rate, 1e-9)
        if is_main:
          writer.scalars(done, means)
          with open(jsonl, "a") as f:
            f.write(json.dumps(dict(step=done, time=time.time(),
                                    steps_per_sec=rate, data_wait_ms=wait_ms,
                                    **means)) + "\n")
          print(f"step {done}/{cfg.num_steps} loss {means['loss']:.4f}  "
                f"{rate:.2f} steps/s  data wait {wait_ms:.0f} ms/step  ETA "
                f"{time.strftime('%H:%M:%S', time.gmtime(eta))}"
                f"{f' (+{int(eta // 86400)} days)' if eta >= 86400 else ''}",
                flush=True)
      if stop or done % cfg.checkpoint_every == 0 or done == cfg.num_steps:
        save(done)
      if stop:
        mngr.wait_until_finished()
        logging.info("stopped at step %d (SIGTERM or Ctrl-C): saved a "
                     "checkpoint, exiting", done)
        break
  mngr.wait_until_finished()
  writer.flush()
  return state


def drop_metrics_after(path: str, step: int) -> None:
  """Keeps metrics.jsonl one history: rows past the resumed checkpoint came
  from steps whose state was lost, and are about to be logged again."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    rows = [line for line in f if line.strip()]
  keep = [line for line in rows if json.loads(line)["step"] <= step]
  if len(keep) < len(rows):
    with open(path, "w") as f:
      f.writelines(keep)


@contextlib.contextmanager
def preemption_notice(mngr):
  """Yields ``preempted(step) -> bool``, checked once per step: whether to
  save and stop there.

  One process turns SIGTERM and Ctrl-C (SIGINT) into a flag (their
  defaults die mid-step, losing the steps since the last checkpoint); a
  second Ctrl-C interrupts at once. Several processes must stop at the same step, so there jax's preemption
  service, which catches SIGTERM on any of them, picks the step
  (``CheckpointManager.reached_preemption``).
  """
  if jax.process_count() > 1:
    yield mngr.reached_preemption
    return
  if threading.current_thread() is not threading.main_thread():
    yield lambda step: False  # Only the main thread may take signals.
    return
  caught = []

  def on_signal(signum, frame):
    if caught and signum == signal.SIGINT:
      raise KeyboardInterrupt
    caught.append(signum)
  previous = {s: signal.signal(s, on_signal)
              for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    yield lambda step: bool(caught)
  finally:
    for s, handler in previous.items():
      signal.signal(s, signal.SIG_DFL if handler is None else handler)
