"""The latent cache: a dataset's clips through the frozen encoders once.

``--mode=encode`` runs every training clip through TAEF2's encoder and every
caption through the text encoder, once, and writes them next to the data:

  {cache}/train.array_record   one record per clip, the bytes of an .npz of
                               latents float16 [T, h, w, 32] (TAEF2's raw
                               output); motion float16 [T, h, w, 2], where
                               each latent cell of a frame comes from in
                               the centre frame F0 (OpenCV DIS, latent
                               cells; bidigen.motion); text float16 [L, D]
                               and text_mask uint8 [L] of the caption, and
                               of the caption with its direction words
                               swapped for the clip mirrored left-right
                               (text_mirrored) and played backwards
                               (text_reversed); when the config trains with
                               the flow loss, flows float16 [T-1, h, w, 2];
                               with mirroring, latents_mirrored (the clip
                               flipped left-right, encoded)
  {cache}/null_text.npz        the empty prompt's embedding and mask (what a
                               caption dropped for guidance becomes)
  {cache}/meta.json            shapes, counts, the text encoder, the
                               per-channel latent mean/std the model
                               normalises with, the root mean squares of
                               the differences it generates (from F0,
                               from F0 moved, the motion), and what
                               encoding cost

Training then reads latents and embeddings, and runs neither encoder: this
module's reading half needs only grain, array_record and numpy (no
TensorFlow, no transformers), which is all an accelerator machine may have.
"""

import io
import json
import os
import re
import shutil
import time

from absl import logging
import grain
import numpy as np

from bidigen.data import pipeline

META = "meta.json"
NULL_TEXT = "null_text.npz"
RECORDS = "train.array_record"
FORMAT = 2

# Direction words a caption swaps when its clip is mirrored left-right, and
# (with the rest) when it plays backwards: free data that teaches direction,
# which a sentence embedding barely separates ("pans to the left" and "...
# right" have cosine 0.98 under MiniLM).
MIRRORED = (("left", "right"), ("clockwise", "anticlockwise"),
            ("counterclockwise", "clockwise"), ("leftward", "rightward"),
            ("leftwards", "rightwards"))
REVERSED = MIRRORED + (("up", "down"), ("zooms in", "zooms out"),
                       ("zooming in", "zooming out"), ("zoom in", "zoom out"),
                       ("pushes in", "pulls out"), ("push in", "pull out"),
                       ("upward", "downward"),
                       ("upwards", "downwards"), ("rises", "falls"),
                       ("rising", "falling"), ("towards", "away from"),
                       ("toward", "away from"), ("enters", "leaves"),
                       ("opens", "closes"), ("forward", "backward"),
                       ("forwards", "backwards"))


def swap_words(caption: str, pairs) -> str:
  """``caption`` with each word of ``pairs`` replaced by its partner (both
  ways, whole words, the first letter's case kept)."""
  table = {}
  for a, b in pairs:
    table.setdefault(a, b)
    table.setdefault(b, a)
  words = sorted(table, key=len, reverse=True)
  pattern = re.compile(r"\b(" + "|".join(map(re.escape, words)) + r")\b",
                       re.IGNORECASE)

  def swap(match):
    word = match.group(0)
    out = table[word.lower()]
    return out[0].upper() + out[1:] if word[0].isupper() else out
  return pattern.sub(swap, caption)


def cache_dir(data_config) -> str:
  """Where ``data_config``'s latents live: ``config.data.latents_dir``, or a
  folder named for the dataset under its data_dir."""
  given = data_config.latents_dir
  if given:
    return os.path.expanduser(given)
  tag = data_config.get("builder_config") or (
      f"{data_config.resolution}px_{data_config.num_frames}f")
  return os.path.join(os.path.expanduser(data_config.data_dir),
                      "bidigen_latents", f"{data_config.name}_{tag}")


def sources(data_config) -> dict:
  """{name: (data section, weight)}: the datasets a run trains on.

  A mixture lists them in ``config.data.sources``, each a whole data section
  plus its ``weight`` (0 leaves a source out); all share the top level's
  resolution and frame count, since their clips batch together. Without
  ``sources`` the one dataset is ``config.data`` itself, weight 1.
  """
  mix = data_config.get("sources")
  if not mix:
    return {data_config.name: (data_config, 1.0)}
  out = {}
  for name, section in mix.items():
    weight = float(section.get("weight", 0.0))
    if not weight >= 0:  # Also NaN.
      raise ValueError(f"config.data.sources.{name}.weight must be >= 0, "
                       f"got {weight}")
    for key in ("resolution", "num_frames"):
      if section[key] != data_config[key]:
        raise ValueError(
            f"config.data.sources.{name}.{key}={section[key]} differs from "
            f"config.data.{key}={data_config[key]}: a mixture's clips must "
            "batch together")
    if weight > 0:
      out[name] = (section, weight)
  if not out:
    raise ValueError("config.data.sources: no source has a weight above 0")
  return out


def pooled_stats(metas: list[dict], weights: list[float]):
  """The per-channel mean and std of the mixture the model trains on: each
  cache's statistics weighted by how often training draws from it."""
  w = np.asarray(weights, np.float64) / np.sum(weights)
  mean = np.stack([m["latent_mean"] for m in metas])
  std = np.stack([m["latent_std"] for m in metas])
  mu = w @ mean
  second = w @ (std**2 + mean**2)
  return mu.tolist(), np.sqrt(np.maximum(second - mu**2, 0)).tolist()


def read_meta(path: str) -> dict:
  """The cache's meta.json; a missing cache is a one-line error that says
  how to make it."""
  meta_path = os.path.join(path, META)
  if not os.path.exists(meta_path):
    raise FileNotFoundError(
        f"no encoded latents in {path}: run `python -m bidigen.main "
        "--config=CONFIG --mode=encode` with the config and overrides of "
        "this training run first")
  with open(meta_path) as f:
    meta = json.load(f)
  if meta.get("format") != FORMAT:
    raise ValueError(f"the latents in {path} were written by another version "
                     f"of bidigen (format {meta.get('format')}, this one reads"
                     f" {FORMAT}); encode again with --overwrite")
  return meta


def check_matches(meta: dict, config, path: str) -> None:
  """The cache must be what this config would have encoded."""
  want = {"resolution": config.data.resolution,
          "num_frames": config.data.num_frames,
          "text_kind": config.model.text.kind,
          "text_path": config.model.text.path,
          "text_max_length": config.model.text.max_length}
  for key, value in want.items():
    if meta.get(key) != value:
      raise ValueError(
          f"the latents in {path} have {key}={meta[key]!r} but the config "
          f"has {value!r}: encode again with this config (--mode=encode "
          "--overwrite) or point config.data.latents_dir elsewhere")


def to_bytes(arrays: dict[str, np.ndarray]) -> bytes:
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  return buf.getvalue()


def from_bytes(data: bytes) -> dict[str, np.ndarray]:
  with np.load(io.BytesIO(data), allow_pickle=False) as f:
    return {k: f[k] for k in f.files}


class _Decode(grain.transforms.Map):
  """Record bytes -> arrays in the dtypes the train step takes."""

  def map(self, element: bytes) -> dict[str, np.ndarray]:
    ex = from_bytes(element)
    return {k: v.astype(np.float32) for k, v in ex.items()}


def make_loader(path: str, **kwargs) -> grain.DataLoader:
  """Batches of encoded clips; arguments as ``pipeline.make_loader``."""
  source = grain.sources.ArrayRecordDataSource(
      [os.path.join(path, RECORDS)])
  return pipeline.loader(source, _Decode(), **kwargs)


def make_mixture_loader(paths: list[str], weights: list[float], *,
                        seed: int, **kwargs) -> grain.DataLoader:
  """Batches drawn from several caches with ``weights`` (grain's
  ``MapDataset.mix`` of each cache shuffled and repeated with the seed), as
  one endless random-access stream that the loader cuts into global batches
  and shards over processes as it does one cache. One cache is read as
  ``make_loader`` reads it."""
  if len(paths) == 1:
    return make_loader(paths[0], seed=seed, **kwargs)
  datasets = [grain.MapDataset.source(grain.sources.ArrayRecordDataSource(
      [os.path.join(p, RECORDS)])).shuffle(seed=seed + i).repeat()
              for i, p in enumerate(paths)]
  mixed = grain.MapDataset.mix(datasets, list(weights))
  return pipeline.loader(mixed, _Decode(), seed=seed, shuffle=False,
                         num_epochs=None, **kwargs)


def load_null_text(path: str) -> tuple[np.ndarray, np.ndarray]:
  with np.load(os.path.join(path, NULL_TEXT), allow_pickle=False) as f:
    return f["text"].astype(np.float32), f["text_mask"].astype(np.float32)


class Stats:
  """Per-channel mean and standard deviation, accumulated in float64."""

  def __init__(self, channels: int):
    self.n = 0
    self.sum = np.zeros(channels)
    self.sq = np.zeros(channels)

  def add(self, latents: np.ndarray) -> None:
    flat = latents.reshape(-1, latents.shape[-1]).astype(np.float64)
    self.n += flat.shape[0]
    self.sum += flat.sum(0)
    self.sq += (flat**2).sum(0)

  def result(self) -> tuple[list[float], list[float]]:
    mean = self.sum / self.n
    std = np.sqrt(np.maximum(self.sq / self.n - mean**2, 0)) + 1e-6
    return mean.tolist(), std.tolist()


def encode(config, *, overwrite: bool = False,
           batch_clips: int = 8) -> list[str]:
  """``--mode=encode``: the cache of each dataset the config trains on (a
  mixture's sources one after the other); returns their paths."""
  paths = []
  for name, (section, _) in sources(config.data).items():
    one = config.copy_and_resolve_references()
    one.data = section
    if len(config.data.get("sources") or ()) > 1:
      logging.info("encoding source %s", name)
    paths.append(encode_one(one, overwrite=overwrite,
                            batch_clips=batch_clips))
  return paths


def encode_one(config, *, overwrite: bool = False,
               batch_clips: int = 8) -> str:
  """Writes the cache for ``config.data`` (one dataset) and returns its path.

  An existing complete cache is kept (a second call is a no-op) unless
  ``overwrite``. The cache is written to a temporary folder and renamed, so
  an interrupted encode leaves nothing a training run would read.
  ``config.data.encode_clips`` (0: all) encodes only the first clips.
  """
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  from bidigen import data as data_lib  # TFDS: only here, not in training.
  from bidigen import sharding
  from bidigen import text as text_lib
  from bidigen.models import taef2

  path = cache_dir(config.data)
  if os.path.exists(os.path.join(path, META)) and not overwrite:
    read_meta(path)
    logging.info("latents already encoded in %s (--overwrite encodes "
                 "again)", path)
    return path
  # The folder is replaced at the end: only if it holds a cache and nothing
  # else (a user's folder given as latents_dir is never removed).
  if os.path.isdir(path) and os.listdir(path):
    foreign = sorted(set(os.listdir(path)) - {META, NULL_TEXT, RECORDS})
    if foreign or not os.path.exists(os.path.join(path, META)):
      raise ValueError(
          f"{path} holds files that are not a latent cache "
          f"({', '.join(foreign or sorted(os.listdir(path)))}): choose "
          "another config.data.latents_dir, or move them away")
  builder = data_lib.get_builder(
      config.data, prepare=config.data.name == "bidigen_synthetic")
  source = builder.as_data_source(split="train")
  count = len(source)
  limit = int(config.data.encode_clips)
  if limit:
    count = min(count, limit)
  text_cfg = config.model.text
  encoder = text_lib.load_text_encoder(text_cfg.kind, text_cfg.path,
                                       text_cfg.max_length)
  ae = taef2.load()
  from bidigen import metrics  # OpenCV's DIS flow, on the host.
  from bidigen import motion as motion_lib
  flows = float(config.train.flow_weight) > 0
  mirrored = float(config.train.mirror_prob) > 0

  @jax.jit
  def to_latents(video):  # uint8 [B, T, R, R, 3] -> float [B, T, h, w, 32]
    return taef2.encode(ae, video.astype(np.float32) / 255.0)

  @jax.jit
  def differences(lat, m):
    """Squared differences per channel from F0 and from F0 moved, summed
    over clips, frames and cells, and the squared motion summed."""
    z0 = lat[:, lat.shape[1] // 2][:, None]
    total = lambda a: jnp.sum(a**2, axis=(0, 1, 2, 3))
    return (total(lat - z0), total(lat - motion_lib.warp(z0, m)),
            jnp.sum(m**2))

  tmp = f"{path}.tmp-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  writer = array_record_module.ArrayRecordWriter(
      os.path.join(tmp, RECORDS), "group_size:1")
  stats = Stats(taef2.LATENT_CHANNELS)
  sq = [np.zeros(taef2.LATENT_CHANNELS), np.zeros(taef2.LATENT_CHANNELS),
        np.zeros(())]  # Arrays: summed in place below.
  cells = 0  # Latent cells of the frames other than F0.
  t0 = time.time()
  encode_seconds = 0.0
  record_bytes = 0
  try:
    for i in range(0, count, batch_clips):
      n = min(batch_clips, count - i)
      exs = [source[j] for j in range(i, i + n)]
      video = np.stack([np.asarray(e["video"]) for e in exs])
      t = time.time()
      lat = sharding.in_batches(to_latents, batch_clips, video)
      if mirrored:
        lat_m = sharding.in_batches(to_latents, batch_clips,
                                    video[:, :, :, ::-1])
      encode_seconds += time.time() - t
      captions = [c.decode() if isinstance(c, bytes) else str(c)
                  for c in (e["caption"] for e in exs)]
      texts = {"": encoder.encode(captions),
               "_mirrored": encoder.encode(
                   [swap_words(c, MIRRORED) for c in captions]),
               "_reversed": encoder.encode(
                   [swap_words(c, REVERSED) for c in captions])}
      fl = metrics.clip_flows(video, taef2.FACTOR) if flows else None
      centre = video.shape[1] // 2
      mot = np.stack([metrics.motion_from(v, v[centre], taef2.FACTOR)
                      for v in video])
      for acc, part in zip(sq, differences(lat, mot)):
        acc += np.asarray(part, np.float64)
      cells += n * (video.shape[1] - 1) * lat.shape[2] * lat.shape[3]
      for k in range(n):
        stats.add(lat[k])
        arrays = {"latents": lat[k].astype(np.float16),
                  "motion": mot[k].astype(np.float16)}
        for suffix, (emb, mask) in texts.items():
          arrays["text" + suffix] = emb[k].astype(np.float16)
          arrays["text_mask" + suffix] = mask[k].astype(np.uint8)
        if flows:
          arrays["flows"] = fl[k].astype(np.float16)
        if mirrored:
          arrays["latents_mirrored"] = lat_m[k].astype(np.float16)
        data = to_bytes(arrays)
        record_bytes += len(data)
        writer.write(data)
      print(f"  encoded {i + n}/{count} clips", flush=True)
  finally:
    writer.close()
  null, null_mask = encoder.encode([""])
  np.savez(os.path.join(tmp, NULL_TEXT), text=null[0], text_mask=null_mask[0])
  mean, std = stats.result()
  seconds = time.time() - t0
  meta = {
      "format": FORMAT, "num_clips": count,
      "source": f"{builder.info.full_name}/train",
      "resolution": config.data.resolution,
      "num_frames": config.data.num_frames,
      "latent_shape": list(lat.shape[1:]),
      "text_kind": text_cfg.kind, "text_path": text_cfg.path,
      "text_max_length": text_cfg.max_length,
      "text_dim": encoder.dim, "flows": flows, "mirrored": mirrored,
      "latent_mean": mean, "latent_std": std,
      # Root mean squares (raw latent units; motion in latent cells) of
      # what the "residual" and "motion" targets generate (bidigen.motion).
      "delta_rms": np.sqrt(sq[0] / cells).tolist(),
      "correction_rms": np.sqrt(sq[1] / cells).tolist(),
      "motion_rms": float(np.sqrt(sq[2] / (2 * cells))),
      "seconds": round(seconds, 2),
      "encoder_seconds": round(encode_seconds, 2),
      "bytes_per_clip": record_bytes // max(count, 1),
      "video_bytes_per_clip": int(np.prod(video.shape[1:])),
  }
  with open(os.path.join(tmp, META), "w") as f:
    json.dump(meta, f, indent=2)
  if os.path.exists(path):
    shutil.rmtree(path)
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  os.replace(tmp, path)
  logging.info("encoded %d clips into %s in %.1fs (%.0fs per 1000 clips, "
               "%d bytes per clip; the uint8 video is %d)", count, path,
               seconds, 1000 * seconds / max(count, 1),
               meta["bytes_per_clip"], meta["video_bytes_per_clip"])
  return path
