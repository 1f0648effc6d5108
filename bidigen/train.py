"""Training: the autoencoder first, then masked video diffusion on its latents.

Both phases share one TrainState and one loop. Each phase has its own pure
step function, jitted once with explicit shardings and a donated state, so
nothing recompiles after its first step.
"""

import contextlib
import functools
import json
import os
import signal
import threading
import time

from absl import logging
from clu import metric_writers
from clu import periodic_actions
import flax
import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from bidigen import checkpoints
from bidigen import data as data_lib
from bidigen import diffusion
from bidigen import metrics
from bidigen import models
from bidigen import sharding
from bidigen import text as text_lib
from bidigen.models import vae as vae_lib


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: dict        # {"vae": ..., "unet": ...}, boxed with logical axes.
  opt_state: dict     # Same keys: each phase has its own optimizer.
  ema: dict           # EMA of the UNet params: what sampling uses.
  latent_scale: jax.Array  # 1 / std of latents, fixed when diffusion starts.


def make_optimizers(cfg) -> dict[str, optax.GradientTransformation]:
  def adamw(lr, steps):
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, lr, min(cfg.warmup_steps, max(steps - 1, 1)), max(steps, 2),
        end_value=lr * 0.05)
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip),
                       optax.adamw(schedule, b2=0.99,
                                   weight_decay=cfg.weight_decay))
  return {"vae": adamw(cfg.vae_learning_rate, cfg.vae_steps),
          "unet": adamw(cfg.learning_rate, cfg.num_steps - cfg.vae_steps)}


def to_float(video):
  return video.astype(jnp.float32) / 127.5 - 1.0


def init_state(rng, *, vae, unet, txs, resolution, window, text_shape):
  k_vae, k_unet, k_noise = jax.random.split(rng, 3)
  frames = jnp.zeros((1, resolution, resolution, 3))
  vae_params = vae.init(k_vae, frames, k_noise)
  lat = jax.eval_shape(
      lambda p: vae.apply(p, frames, method=vae.encode), vae_params)[0].shape
  b = 1
  unet_params = unet.init(
      k_unet, jnp.zeros((b, window) + lat[1:]), jnp.zeros((b, window)),
      jnp.zeros((b,) + lat[1:]), jnp.zeros((b, window), jnp.int32),
      jnp.zeros((b, window)), jnp.zeros((b,) + text_shape),
      jnp.ones((b, text_shape[0])))
  params = {"vae": vae_params, "unet": unet_params}
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params,
      opt_state={k: txs[k].init(params[k]) for k in params},
      ema=unet_params, latent_scale=jnp.zeros((), jnp.float32))


def vae_step(state, batch, rng, *, vae, tx, frames_per_clip, kl_weight):
  """One autoencoder update on a few random frames of every clip."""
  video = batch["video"]
  b, t = video.shape[:2]
  k_idx, k_noise = jax.random.split(rng)
  idx = jax.random.randint(k_idx, (b, frames_per_clip), 0, t)
  frames = jnp.take_along_axis(video, idx[:, :, None, None, None], axis=1)
  frames = to_float(frames.reshape((-1,) + frames.shape[2:]))

  def loss_fn(params):
    recon, mean, logvar = vae.apply(params, frames, k_noise)
    return vae_lib.vae_loss(recon, frames, mean, logvar, kl_weight)

  (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params["vae"])
  updates, opt = tx.update(grads, state.opt_state["vae"], state.params["vae"])
  params = dict(state.params, vae=optax.apply_updates(state.params["vae"],
                                                      updates))
  state = state.replace(step=state.step + 1, params=params,
                        opt_state=dict(state.opt_state, vae=opt))
  return state, dict(aux, loss=loss)


def encode_latents(vae, vae_params, frames, scale):
  shape = frames.shape
  flat = to_float(frames.reshape((-1,) + shape[-3:]))
  mean, _ = vae.apply(vae_params, flat, method=vae.encode)
  return jax.lax.stop_gradient(mean.reshape(shape[:-3] + mean.shape[1:])
                               * scale)


def latent_scale_step(state, batch, *, vae):
  lat = encode_latents(vae, state.params["vae"], batch["video"][:, ::4], 1.0)
  return state.replace(latent_scale=1.0 / (jnp.std(lat) + 1e-6))


def diffusion_step(state, batch, rng, *, vae, unet, tx, window, max_context,
                   ema_decay, task_probs=diffusion.TASK_PROBS,
                   motion_weight=0.0, flow_weight=0.0):
  """One UNet update on random windows with the masks sampling uses."""
  video = batch["video"]
  b, t = video.shape[:2]
  centre = t // 2
  k_win, k_loss = jax.random.split(rng)
  start, known, _ = diffusion.sample_windows(k_win, t, window, max_context, b,
                                           task_probs)
  clips = jax.vmap(
      lambda v, s: jax.lax.dynamic_slice_in_dim(v, s, window, axis=0))(
          video, start)
  x0 = encode_latents(vae, state.params["vae"], clips, state.latent_scale)
  anchor = encode_latents(vae, state.params["vae"], video[:, centre],
                          state.latent_scale)
  offsets = start[:, None] + jnp.arange(window)[None] - centre
  flows = None
  if "flows" in batch:  # Flow t -> t+1 of the clip, at latent resolution.
    flows = jax.vmap(
        lambda f, s: jax.lax.dynamic_slice_in_dim(f, s, window - 1, axis=0))(
            batch["flows"], start)

  def loss_fn(params):
    return diffusion.diffusion_loss(
        unet.apply, params, k_loss, x0, known, anchor, offsets,
        batch["text"], batch["text_mask"], motion_weight, flows, flow_weight)

  (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params["unet"])
  updates, opt = tx.update(grads, state.opt_state["unet"],
                           state.params["unet"])
  unet_params = optax.apply_updates(state.params["unet"], updates)
  n = (state.step + 1).astype(jnp.float32)
  decay = jnp.minimum(ema_decay, (1.0 + n) / (10.0 + n))
  ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, state.ema,
                     unet_params)
  state = state.replace(step=state.step + 1,
                        params=dict(state.params, unet=unet_params),
                        opt_state=dict(state.opt_state, unet=opt), ema=ema)
  return state, dict(aux, loss=loss, grad_norm=optax.tree.norm(grads))


class Trainer:
  """Holds the compiled steps and shardings for one config and mesh."""

  def __init__(self, config: ml_collections.ConfigDict, mesh, text_dim: int):
    self.config = config
    self.mesh = mesh
    cfg = config.train
    validate(config, mesh)
    self.vae, self.unet = models.build(config.model)
    self.txs = make_optimizers(cfg)
    init = functools.partial(
        init_state, vae=self.vae, unet=self.unet, txs=self.txs,
        resolution=config.data.resolution, window=config.model.window,
        text_shape=(config.model.text.max_length, text_dim))
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
    jit_step = lambda f: jax.jit(
        f, in_shardings=(self.state_sharding, data, rep),
        out_shardings=(self.state_sharding, rep), donate_argnums=0)
    self.vae_step = jit_step(functools.partial(
        vae_step, vae=self.vae, tx=self.txs["vae"],
        frames_per_clip=cfg.vae_frames_per_clip, kl_weight=cfg.kl_weight))
    self.diffusion_step = jit_step(functools.partial(
        diffusion_step, vae=self.vae, unet=self.unet, tx=self.txs["unet"],
        window=config.model.window, max_context=config.model.context_frames,
        ema_decay=cfg.ema_decay, **loss_options(cfg)))
    self.latent_scale_step = jax.jit(
        functools.partial(latent_scale_step, vae=self.vae),
        in_shardings=(self.state_sharding, data),
        out_shardings=self.state_sharding, donate_argnums=0)

  def step(self, state, batch, rng, step: int):
    if step < self.config.train.vae_steps:
      return self.vae_step(state, batch, rng)
    if step == self.config.train.vae_steps and not float(state.latent_scale):
      state = self.latent_scale_step(state, batch)
    return self.diffusion_step(state, batch, rng)


def loss_options(cfg) -> dict:
  """The diffusion loss's options; checkpoints from before a key existed
  get the value that reproduces how they were trained."""
  return {"task_probs": tuple(cfg.get("task_probs", diffusion.TASK_PROBS)),
          "motion_weight": float(cfg.get("motion_weight", 0.0)),
          "flow_weight": float(cfg.get("flow_weight", 0.0))}


def validate(config, mesh=None) -> None:
  cfg = config.train
  for key in ("num_steps", "batch_size", "log_every", "checkpoint_every"):
    if cfg[key] < 1:
      raise ValueError(f"config.train.{key} must be >= 1, got {cfg[key]}")
  if not 0 <= cfg.vae_steps < cfg.num_steps:
    raise ValueError(f"config.train.vae_steps must be in [0, num_steps), got "
                     f"{cfg.vae_steps} with num_steps={cfg.num_steps}")
  opts = loss_options(cfg)
  probs = opts["task_probs"]
  if (len(probs) != len(diffusion.TASKS) or min(probs) < 0
      or abs(sum(probs) - 1) > 1e-6):
    raise ValueError(f"config.train.task_probs must be {len(diffusion.TASKS)} "
                     f"non-negative numbers summing to 1 (for "
                     f"{', '.join(diffusion.TASKS)}), got {probs}")
  for key in ("flow_weight", "motion_weight"):
    if opts[key] < 0:
      raise ValueError(f"config.train.{key} must be >= 0, got {opts[key]}")
  if not 1 <= config.model.context_frames < config.model.window:
    raise ValueError("config.model.context_frames must be in [1, window)")
  if config.model.window > config.data.num_frames:
    raise ValueError(f"config.model.window={config.model.window} is longer "
                     f"than the clips ({config.data.num_frames} frames)")
  if mesh is not None:
    sharding.check_batch(mesh, cfg.batch_size)
  models.latent_shape(config.model, config.data.resolution)


def host_batch(raw: dict, encoder, *, seed: int, step: int,
               text_dropout: float, row: int = 0,
               global_rows: int | None = None,
               flow_factor: int = 0) -> dict:
  """Numpy batch for the device; captions dropped to "" for guidance.

  ``raw`` holds rows ``row...`` of a global batch of ``global_rows``: the
  same captions drop however many processes share the batch.
  """
  captions = [str(c) for c in raw["caption"]]
  drop = np.random.default_rng([seed, step]).random(
      global_rows or len(captions))[row:row + len(captions)]
  captions = ["" if d < text_dropout else c for d, c in zip(drop, captions)]
  emb, mask = encoder.encode(captions)
  batch = {"video": np.asarray(raw["video"]), "text": emb, "text_mask": mask}
  if flow_factor:
    batch["flows"] = metrics.clip_flows(batch["video"], flow_factor)
  return batch


def warm_start(trainer: Trainer, state: TrainState, path: str) -> TrainState:
  """Starts from an exported model's weights (EMA as both params and EMA),
  skipping the autoencoder phase. This is how a model keeps training in a
  later session when only its export was kept: fresh optimizer moments, the
  schedule from ``vae_steps`` on."""
  _, loaded = checkpoints.load_model(path)
  want = {"vae": state.params["vae"], "unet": state.params["unet"]}
  got = {"vae": loaded["vae"], "unet": loaded["unet"]}
  shapes = lambda t: jax.tree.map(lambda a: tuple(np.shape(a)), t)
  if shapes(want) != shapes(got):
    raise ValueError(f"config.train.init_from={path}: its architecture does "
                     "not match this config's model")
  shard = trainer.state_sharding
  params = jax.device_put(got, {"vae": shard.params["vae"],
                                "unet": shard.params["unet"]})
  return state.replace(
      step=jnp.asarray(trainer.config.train.vae_steps, jnp.int32),
      params=params, ema=jax.device_put(got["unet"], shard.ema),
      latent_scale=jnp.asarray(loaded["latent_scale"], jnp.float32))


def restore_for_sampling(workdir: str):
  """(config, sampling params) from the latest checkpoint of a workdir."""
  mngr = checkpoints.manager(workdir)
  step = mngr.latest_step()
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints")
  config = ml_collections.ConfigDict(mngr.restore(
      step, args=checkpoints.ocp.args.Composite(
          config=checkpoints.ocp.args.JsonRestore()))["config"])
  encoder = text_lib.load_text_encoder(
      config.model.text.kind, config.model.text.path,
      config.model.text.max_length)
  mesh = sharding.make_mesh([("data", 1)], jax.devices()[:1])
  trainer = Trainer(config, mesh, encoder.dim)
  restored = mngr.restore(step, args=checkpoints.ocp.args.Composite(
      state=checkpoints.ocp.args.StandardRestore(trainer.abstract_state)))
  if not float(restored["state"].latent_scale):
    raise ValueError(
        f"the checkpoint at step {step} in {workdir} has trained only the "
        f"autoencoder (config.train.vae_steps={config.train.vae_steps}); "
        "train past that before sampling")
  return config, checkpoints.sampling_params(restored["state"])


def train(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains (or resumes) in ``workdir``; returns the final state.

  Every process runs this; each reads its rows of the global batch. SIGTERM
  (a preemption notice) saves a checkpoint at the step reached and returns,
  so a later run resumes there; a SIGKILL loses the steps since the last
  checkpoint.
  """
  cfg = config.train
  validate(config)  # Before any slow work.
  # Procedural data is made on first use; real video is prepared beforehand
  # (building it here would run on every host at once).
  builder = data_lib.get_builder(
      config.data, prepare=config.data.name == "bidigen_synthetic")
  mesh = sharding.make_mesh(config.mesh.axes)
  encoder = text_lib.load_text_encoder(
      config.model.text.kind, config.model.text.path,
      config.model.text.max_length)
  trainer = Trainer(config, mesh, encoder.dim)
  flow_factor = 2 ** (len(config.model.vae.channels) - 1)  # Pixels/latent.
  process, processes = jax.process_index(), jax.process_count()
  loader = data_lib.make_loader(builder, "train",
                                global_batch_size=cfg.batch_size,
                                seed=config.seed, shard_index=process,
                                shard_count=processes)
  data_iter = iter(loader)

  mngr = checkpoints.manager(workdir, cfg.keep_checkpoints)
  args = checkpoints.ocp.args
  is_main = process == 0
  jsonl = os.path.join(workdir, "metrics.jsonl")
  start = mngr.latest_step()
  if start is None:
    state = trainer.init(jax.random.key(config.seed))
    if cfg.init_from:
      state = warm_start(trainer, state, cfg.init_from)
      print(f"warm start from {cfg.init_from}: diffusion from step "
            f"{int(state.step)}", flush=True)
    start = int(state.step)
  else:
    restored = mngr.restore(start, args=args.Composite(
        state=args.StandardRestore(trainer.abstract_state),
        data=grain.checkpoint.CheckpointRestore(data_iter)))
    state = restored["state"]
    if is_main:  # Steps after the checkpoint are logged again below.
      drop_metrics_after(jsonl, start)
    logging.info("resumed from step %d", start)
    print(f"resuming from step {start} in {workdir}", flush=True)

  writer = metric_writers.create_default_writer(
      workdir, just_logging=not is_main)
  report = periodic_actions.ReportProgress(
      num_train_steps=cfg.num_steps, writer=writer,
      every_steps=cfg.log_every)
  root = jax.random.key(config.seed)
  pending: dict[str, list[float]] = {}
  t_log, s_log = time.time(), start

  def save(step):
    mngr.save(step, args=args.Composite(
        state=args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(data_iter),
        config=args.JsonSave(config.to_dict())), force=True)

  with preemption_notice(mngr) as preempted:
    for step in range(start, cfg.num_steps):
      raw = next(data_iter)
      local = len(raw["caption"])
      batch = sharding.global_batch(mesh, host_batch(
          raw, encoder, seed=config.seed, step=step,
          text_dropout=cfg.text_dropout, row=process * local,
          global_rows=cfg.batch_size,
          flow_factor=flow_factor if loss_options(cfg)["flow_weight"] else 0))
      state, metrics = trainer.step(state, batch,
                                    jax.random.fold_in(root, step), step)
      metrics = jax.device_get(metrics)
      if not np.isfinite(metrics["loss"]):
        mngr.wait_until_finished()
        raise FloatingPointError(
            f"loss is {metrics['loss']} at step {step + 1}: stopping; the "
            f"last good checkpoint is step {mngr.latest_step()} in {workdir}")
      for k, v in metrics.items():
        pending.setdefault(k, []).append(float(v))
      done = step + 1
      report(done)
      if done % cfg.log_every == 0 or done == cfg.num_steps:
        means = {k: float(np.mean(v)) for k, v in pending.items()}
        pending = {}
        phase = "vae" if step < cfg.vae_steps else "diffusion"
        rate = (done - s_log) / max(time.time() - t_log, 1e-9)
        t_log, s_log = time.time(), done
        eta = (cfg.num_steps - done) / max(rate, 1e-9)
        if is_main:
          writer.write_scalars(done, means)
          with open(jsonl, "a") as f:
            f.write(json.dumps(dict(step=done, phase=phase, time=time.time(),
                                    steps_per_sec=rate, **means)) + "\n")
          print(f"step {done}/{cfg.num_steps} [{phase}] loss "
                f"{means['loss']:.4f}  {rate:.2f} steps/s  ETA "
                f"{time.strftime('%H:%M:%S', time.gmtime(eta))}", flush=True)
      stop = preempted(done)
      if stop or done % cfg.checkpoint_every == 0 or done == cfg.num_steps:
        save(done)
      if stop:
        mngr.wait_until_finished()
        print(f"SIGTERM at step {done}: saved checkpoint, exiting",
              flush=True)
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

  One process turns SIGTERM into a flag (its default is to die mid-step).
  Several processes must stop at the same step, so there jax's preemption
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
  previous = signal.signal(signal.SIGTERM, lambda *_: caught.append(1))
  try:
    yield lambda step: bool(caught)
  finally:
    signal.signal(signal.SIGTERM,
                  signal.SIG_DFL if previous is None else previous)
