"""The supported Python versions agree everywhere they are named, and the
script that checks them (.ci/check_python, run by `make check-pythons`) is
sound; the check itself installs and runs bidigen on each version, too slow
for this suite."""

import os
import re
import shutil
import subprocess
import sys
import tomllib

import pytest
from packaging.specifiers import SpecifierSet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECK = os.path.join(ROOT, ".ci", "check_python")


def make_variable(name):
  with open(os.path.join(ROOT, "Makefile")) as f:
    match = re.search(rf"^{name} \?= (.*)$", f.read(), re.MULTILINE)
  return match.group(1).split()


@pytest.fixture(scope="module")
def project():
  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    return tomllib.load(f)["project"]


def test_checked_versions_are_the_supported_ones(project):
  default = make_variable("PY")[0].removeprefix("python")
  checked = [default] + make_variable("PYTHONS")
  assert make_variable("NOTEBOOK_PY")[0] in checked
  supported = SpecifierSet(project["requires-python"])
  classified = [c.rsplit(" ", 1)[1] for c in project["classifiers"]
                if re.fullmatch(r"Programming Language :: Python :: 3\.\d+",
                                c)]
  for version in checked + classified:
    assert f"{version}.0" in supported, (version, supported)
  assert set(checked) <= set(classified)


def test_missing_interpreter_is_a_clear_error(tmp_path):
  env = dict(os.environ, PATH="/usr/bin:/bin", HOME=str(tmp_path),
             PYENV_ROOT=str(tmp_path))
  result = subprocess.run([CHECK, "3.99"], capture_output=True, text=True,
                          env=env, timeout=60)
  assert result.returncode == 2
  assert "no python3.99" in result.stderr
  assert not os.path.exists(os.path.join(ROOT, ".venv-py399"))


def test_check_venvs_are_ignored():
  if not (shutil.which("git") and os.path.isdir(os.path.join(ROOT, ".git"))):
    pytest.skip("not a git checkout")
  for v in make_variable("PYTHONS"):
    venv = ".venv-py" + v.replace(".", "")
    assert subprocess.run(["git", "check-ignore", "-q", venv],
                          cwd=ROOT).returncode == 0, venv


@pytest.mark.parametrize("script", ["check_python", "run"])
def test_shellcheck_clean(script):
  shellcheck = (shutil.which("shellcheck",
                             path=os.path.dirname(sys.executable))
                or shutil.which("shellcheck"))
  assert shellcheck, "shellcheck is not installed (the `test` extra's)"
  result = subprocess.run([shellcheck, os.path.join(ROOT, ".ci", script)],
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stdout
