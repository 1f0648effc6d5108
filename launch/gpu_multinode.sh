#!/usr/bin/env bash
# Trains bidigen on several GPU hosts: one process per host over ssh, all
# meeting at the first host for jax.distributed.
set -euo pipefail

PROG=$(basename "$0")
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

usage() {
  cat <<EOF
Usage: $PROG (--hosts H0,H1,... | --hostfile FILE) --workdir DIR [options]
       [-- extra bidigen.main flags]

Starts process i of N on host i with ssh and waits for all of them; the
output of host i goes to logs/host-i.log. When one process fails, the others
are stopped and the exit status is the failed one's.

Options:
  --hosts LIST        comma-separated ssh destinations ([user@]host)
  --hostfile FILE     one host per line; blank lines and # comments skipped
  --workdir DIR       training workdir, shared by all hosts (e.g. gs://...)
  --config PATH       default configs/webvid.py
  --port PORT         coordinator port on the first host, default 1234
  --coordinator HOST  coordinator address if the first host is reached under
                      another name, default the first host without user@
  --python EXE        default .venv/bin/python (relative to --repo-dir)
  --repo-dir DIR      the checkout on every host, default this one's path
                      ($ROOT)
  --dry-run           print the ssh command for each host and run nothing
  -h, --help          show this help

Example:
  $PROG --hosts=gpu0,gpu1 --workdir=/shared/runs/webvid --dry-run
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

hosts="" hostfile="" workdir="" coordinator="" port=1234
config=configs/webvid.py python=.venv/bin/python repo_dir=$ROOT
dry_run=0 extra=()
while (($#)); do
  if [[ $1 == --*=* ]]; then set -- "${1%%=*}" "${1#*=}" "${@:2}"; fi
  case $1 in
    -h | --help) usage; exit 0 ;;
    --dry-run) dry_run=1; shift; continue ;;
    --) shift; extra=("$@"); break ;;
    --hosts | --hostfile | --workdir | --config | --port | --coordinator | \
      --python | --repo-dir)
      [[ $# -ge 2 && ${2-} != -* ]] || die "$1 needs a value" ;;
    *) die "unknown option '$1'" ;;
  esac
  option=${1#--}
  printf -v "${option//-/_}" '%s' "$2"
  shift 2
done

host_list=()
if [[ -n $hosts && -n $hostfile ]]; then
  die "give --hosts or --hostfile, not both"
elif [[ -n $hosts ]]; then
  IFS=, read -ra host_list <<<"$hosts"
elif [[ -n $hostfile ]]; then
  [[ -r $hostfile ]] || die "cannot read --hostfile $hostfile"
  while IFS= read -r line || [[ -n $line ]]; do
    read -ra words <<<"${line%%#*}"
    if ((${#words[@]})); then host_list+=("${words[0]}"); fi
  done <"$hostfile"
fi
((${#host_list[@]})) || die "missing --hosts or --hostfile"
for host in "${host_list[@]}"; do
  [[ -n $host ]] || die "empty host name in '$hosts'"
done
[[ -n $workdir ]] || die "missing --workdir"
[[ $port =~ ^[0-9]+$ ]] || die "--port must be a number, got '$port'"
coordinator=${coordinator:-${host_list[0]##*@}}

num_processes=${#host_list[@]}
commands=()
for ((i = 0; i < num_processes; i++)); do
  train=$(join_quoted "$python" -m bidigen.main --config="$config" \
    --mode=train --workdir="$workdir" \
    --coordinator_address="$coordinator:$port" \
    --num_processes="$num_processes" --process_id="$i" \
    ${extra[@]+"${extra[@]}"})
  commands+=("cd $(quote "$repo_dir") && exec $train")
done

if ((dry_run)); then
  for ((i = 0; i < num_processes; i++)); do
    join_quoted ssh -o BatchMode=yes "${host_list[i]}" "${commands[i]}"
    printf '\n'
  done
  exit 0
fi

mkdir -p logs
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; exit 130' INT TERM
for ((i = 0; i < num_processes; i++)); do
  printf '%s: process %d on %s, log in logs/host-%d.log\n' \
    "$PROG" "$i" "${host_list[i]}" "$i" >&2
  ssh -o BatchMode=yes "${host_list[i]}" "${commands[i]}" \
    >"logs/host-$i.log" 2>&1 </dev/null &
  pids+=("$!")
done

# Process i is pids[i]; running holds the indices of those not yet done.
# Polled: `wait -n PID...` loses a child that ended before the call (bash
# reaps it first: "no such job"), which `wait PID` never does.
status=0
running=("${!pids[@]}")
while ((${#running[@]})); do
  left=()
  for i in "${running[@]}"; do
    if kill -0 "${pids[i]}" 2>/dev/null; then left+=("$i"); continue; fi
    code=0
    wait "${pids[i]}" || code=$?
    if ((code && !status)); then
      printf '%s: process %d on %s exited with %d; stopping the others\n' \
        "$PROG" "$i" "${host_list[i]}" "$code" >&2
      status=$code
    fi
  done
  running=(${left[@]+"${left[@]}"})
  if ((status && ${#running[@]})); then
    for i in "${running[@]}"; do kill "${pids[i]}" 2>/dev/null || true; done
  fi
  if ((${#running[@]})); then sleep 0.2; fi
done
exit "$status"
