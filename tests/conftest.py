"""Test set-up: 8 virtual CPU devices, offline, and the tiny config."""

import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # `configs` as a package, as config_flags sees it.


@pytest.fixture(scope="session")
def tiny_config():
  from configs import synthetic
  return synthetic.get_config("tiny")
