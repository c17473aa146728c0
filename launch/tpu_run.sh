#!/usr/bin/env bash
# Run an llmcxr-jax job on every worker of a Cloud TPU v4 VM or pod slice.
#
#   launch/tpu_run.sh --name llmcxr --zone us-central2-b --accelerator-type v4-32 --create \
#       --config configs/llmcxr_stage1.py --workdir gs://my-bucket/stage1 \
#       -- --config.init.checkpoint=gs://my-bucket/dolly --config.data.data_dir=gs://my-bucket/tfds
#
# Steps (each printed before it runs; --dry-run prints them and runs nothing):
#   1. create the TPU VM / slice (only with --create),
#   2. put the code on every worker: a tarball of this checkout (default) or `git clone --repo`,
#   3. install it with JAX for TPUs into ~/llmcxr_jax/.venv on every worker,
#   4. start the job on all workers at once (--worker=all): `llmcxr-jax <job> --config ...
#      --workdir ... --config.distributed=True <extra args>`, detached from the SSH session
#      (nohup setsid, stdin closed): a dropped connection or a closed laptop does not stop it.
#      Every worker logs to ~/llmcxr_logs/<run>.log and keeps the job's pid in <run>.pid,
#   5. follow worker 0's log until the job ends (--no-follow returns at once; the command to
#      re-attach is printed), then wait for every worker (only with --fetch-logs / --delete),
#      copy the logs here (--fetch-logs) and delete the VM (--delete).
# The workdir should be a gs:// path: every host reads and writes the same checkpoints.
#
#   launch/tpu_run.sh --name bench --zone us-central2-b --accelerator-type v4-8 --create \
#       --job bench-accelerator --fetch-logs logs/ --delete -- --batch-start 8
#
# `--job bench-accelerator` runs `python benchmarks/accelerator.py <extra args>` instead (one
# host: a single-host slice such as v4-8; no --config or --workdir); --fetch-logs then also
# copies the record it appends to, benchmarks/results/accelerator.md.
set -euo pipefail

usage() {
  sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'
  cat <<'EOF'
Flags:
  --name NAME                TPU VM name (required)
  --zone ZONE                e.g. us-central2-b (required)
  --project PROJECT          gcloud project (default: gcloud's configured one)
  --accelerator-type TYPE    v4-8 (default), v4-16, v4-32, ...
  --runtime-version VERSION  TPU VM image (default tpu-ubuntu2204-base)
  --create                   create the VM first
  --delete                   delete the VM when the job ends
  --repo URL [--branch B]    clone this repository on the workers instead of copying the checkout
  --job JOB                  llmcxr-jax subcommand (default train; train-vqgan, encode-images, ...)
                             or bench-accelerator (benchmarks/accelerator.py, one host)
  --config FILE[:ARG]        config file, relative to the repository root
  --workdir DIR              run directory, normally gs://bucket/path
  --fetch-logs DIR           copy the workers' logs into DIR at the end
  --no-follow                start the job and return (it keeps running on the workers)
  --dry-run                  print every command, run none
  -- ARGS...                 passed on to llmcxr-jax (e.g. --config.data.data_dir=gs://...)
                             or to benchmarks/accelerator.py (e.g. --batch-start 8)
EOF
}

NAME="" ZONE="" PROJECT="" ACCEL="v4-8" RUNTIME="tpu-ubuntu2204-base" CREATE=0 DELETE=0
REPO="" BRANCH="main" JOB="train" CONFIG="" WORKDIR="" FETCH_LOGS="" DRY_RUN=0 FOLLOW=1
EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) NAME="$2"; shift 2 ;;
    --zone) ZONE="$2"; shift 2 ;;
    --project) PROJECT="$2"; shift 2 ;;
    --accelerator-type) ACCEL="$2"; shift 2 ;;
    --runtime-version) RUNTIME="$2"; shift 2 ;;
    --create) CREATE=1; shift ;;
    --delete) DELETE=1; shift ;;
    --repo) REPO="$2"; shift 2 ;;
    --branch) BRANCH="$2"; shift 2 ;;
    --job) JOB="$2"; shift 2 ;;
    --config) CONFIG="$2"; shift 2 ;;
    --workdir) WORKDIR="$2"; shift 2 ;;
    --fetch-logs) FETCH_LOGS="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --no-follow) FOLLOW=0; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "tpu_run.sh: unknown flag $1 (see --help)" >&2; exit 2 ;;
  esac
done

BENCH_JOB="bench-accelerator"
missing=()
[[ -n "$NAME" ]] || missing+=(--name)
[[ -n "$ZONE" ]] || missing+=(--zone)
if [[ "$JOB" != "$BENCH_JOB" ]]; then
  [[ -n "$CONFIG" ]] || missing+=(--config)
  [[ -n "$WORKDIR" ]] || missing+=(--workdir)
fi
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "tpu_run.sh: missing ${missing[*]} (see --help)" >&2
  exit 2
fi
if [[ "$JOB" != "$BENCH_JOB" && "$WORKDIR" != gs://* ]]; then
  echo "tpu_run.sh: warning: --workdir $WORKDIR is not a gs:// path; on a multi-host slice" \
       "every worker must see the same directory" >&2
fi

RUN_ID="$(date -u +%Y%m%d-%H%M%S)"
GCLOUD_TPU=(gcloud compute tpus tpu-vm)
WHERE=(--zone "$ZONE")
[[ -n "$PROJECT" ]] && WHERE+=(--project "$PROJECT")

# One argument as the shell would need it: as is when plain, else in single quotes.
shell_quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_@%+=:,./~-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# Print a command (quoted, so it can be pasted) and run it unless --dry-run.
run() {
  printf '+'
  for a in "$@"; do printf ' %s' "$(shell_quote "$a")"; done
  printf '\n'
  if [[ "$DRY_RUN" -eq 0 ]]; then
    "$@"
  fi
}

on_all_workers() {
  run "${GCLOUD_TPU[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all --command "$1"
}

if [[ "$CREATE" -eq 1 ]]; then
  run "${GCLOUD_TPU[@]}" create "$NAME" "${WHERE[@]}" \
    --accelerator-type "$ACCEL" --version "$RUNTIME"
fi

if [[ -n "$REPO" ]]; then
  on_all_workers "rm -rf ~/llmcxr_jax && git clone --depth 1 --branch $(printf %q "$BRANCH") \
$(printf %q "$REPO") ~/llmcxr_jax"
else
  ROOT="$(cd "$(dirname "$0")/.." && pwd)"
  TARBALL="/tmp/llmcxr_jax-$RUN_ID.tar.gz"
  run tar -czf "$TARBALL" -C "$ROOT" --exclude=.venv --exclude=.git --exclude='*.egg-info' \
    --exclude=__pycache__ .
  run "${GCLOUD_TPU[@]}" scp "$TARBALL" "$NAME:/tmp/llmcxr_jax.tar.gz" "${WHERE[@]}" --worker=all
  on_all_workers "rm -rf ~/llmcxr_jax && mkdir -p ~/llmcxr_jax && \
tar -xzf /tmp/llmcxr_jax.tar.gz -C ~/llmcxr_jax"
fi

on_all_workers "cd ~/llmcxr_jax && python3 -m venv .venv && .venv/bin/pip install -q -U pip && \
.venv/bin/pip install -q -e '.[tb,tfds]' 'jax[tpu]' \
-f https://storage.googleapis.com/jax-releases/libtpu_releases.html"

if [[ "$JOB" == "$BENCH_JOB" ]]; then
  JOB_CMD=".venv/bin/python benchmarks/accelerator.py"
  JOB_ARGS=("${EXTRA[@]}")
else
  JOB_CMD=".venv/bin/llmcxr-jax $(printf %q "$JOB")"
  JOB_ARGS=(--config "$CONFIG" --workdir "$WORKDIR" --config.distributed=True "${EXTRA[@]}")
fi
QUOTED=""
for a in "${JOB_ARGS[@]}"; do QUOTED+=" $(printf %q "$a")"; done
# paths on the workers: the tilde is expanded there, by the remote shell
# shellcheck disable=SC2088
LOG="~/llmcxr_logs/$RUN_ID.log" PID="~/llmcxr_logs/$RUN_ID.pid"
# Detached: the job's parent is init, not the SSH session, so hanging up does not reach it.
on_all_workers "mkdir -p ~/llmcxr_logs && cd ~/llmcxr_jax && \
nohup setsid $JOB_CMD$QUOTED > $LOG 2>&1 < /dev/null & \
echo \$! > $PID"

ON_WORKER0=("${GCLOUD_TPU[@]}" ssh "$NAME" "${WHERE[@]}" --worker=0 --command)
FOLLOW_CMD="tail -n +1 --pid=\$(cat $PID) -f $LOG"
echo "tpu_run.sh: job $RUN_ID started; follow it with:"
echo "  ${ON_WORKER0[*]} \"$FOLLOW_CMD\""
if [[ "$FOLLOW" -eq 1 ]]; then
  run "${ON_WORKER0[@]}" "$FOLLOW_CMD"
fi
if [[ -n "$FETCH_LOGS" || "$DELETE" -eq 1 ]]; then
  # the job ends on every worker before its logs are copied or its VM deleted
  on_all_workers "while kill -0 \$(cat $PID) 2>/dev/null; do sleep 30; done"
fi

if [[ -n "$FETCH_LOGS" ]]; then
  run mkdir -p "$FETCH_LOGS"
  run "${GCLOUD_TPU[@]}" scp "$NAME:~/llmcxr_logs/$RUN_ID.log" "$FETCH_LOGS/" "${WHERE[@]}" \
    --worker=all
  if [[ "$JOB" == "$BENCH_JOB" ]]; then
    run "${GCLOUD_TPU[@]}" scp "$NAME:~/llmcxr_jax/benchmarks/results/accelerator.md" \
      "$FETCH_LOGS/" "${WHERE[@]}" --worker=0
  fi
fi

if [[ "$DELETE" -eq 1 ]]; then
  run "${GCLOUD_TPU[@]}" delete "$NAME" "${WHERE[@]}" --quiet
fi
