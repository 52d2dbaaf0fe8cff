#!/usr/bin/env bash
# Train charlm on a Cloud TPU VM pod slice: every worker runs the same charlm.main, and
# JAX joins them into one data-parallel job (--multihost).
#
#   launch/tpu_pod.sh [--dry-run] SUBCOMMAND [extra charlm.main flags]
#
# Subcommands, each one step (run them in order, or `all`):
#   create   create the TPU VM slice
#   setup    copy this repository to every worker, install requirements + jax[tpu],
#            and mount the GCS bucket at /gcs with gcsfuse (the shared workdir)
#   train    start training on all workers (--worker=all) in the background, logs in
#            ~/charlm.log on each worker
#   logs     stream worker 0's log (Ctrl-C stops watching, not training)
#   stop     send SIGTERM to training on all workers: each checkpoints and exits
#   delete   delete the slice (checkpoints stay in the bucket)
#   all      create, setup, train, logs
# --dry-run prints the gcloud commands instead of running them.
#
# Settings, as environment variables (defaults in brackets):
#   TPU_NAME [charlm]  ZONE [us-central2-b]  ACCELERATOR [v4-32]
#   VERSION [tpu-ubuntu2204-base]  PROJECT [gcloud's default]
#   BUCKET   GCS bucket for checkpoints and events (required for setup/train)
#   CONFIG [configs/shakespeare.py]  RUN [shakespeare]: the workdir is /gcs/runs/$RUN
# Example:
#   BUCKET=my-bucket launch/tpu_pod.sh all --config.batch_size=1024 \
#       --config.model.hidden_size=1024 --config.model.dtype=bfloat16
# Resume after a preemption or `stop`: run `train` again; it continues from the bucket.
set -euo pipefail

dry=0
if [[ "${1:-}" == "--dry-run" ]]; then dry=1; shift; fi
cmd=${1:-}
shift || true
extra=("$@")

TPU_NAME=${TPU_NAME:-charlm}
ZONE=${ZONE:-us-central2-b}
ACCELERATOR=${ACCELERATOR:-v4-32}
VERSION=${VERSION:-tpu-ubuntu2204-base}
CONFIG=${CONFIG:-configs/shakespeare.py}
RUN=${RUN:-shakespeare}
project=()
[[ -n "${PROJECT:-}" ]] && project=(--project="$PROJECT")

run() {
  if ((dry)); then
    local out=() a
    for a in "$@"; do
      if [[ "$a" =~ [[:space:]] ]]; then out+=("'$a'"); else out+=("$a"); fi
    done
    echo "${out[*]}"
  else
    "$@"
  fi
}

on_all() {  # a shell command on every worker
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" "${project[@]}" \
    --worker=all --command="$1"
}

need_bucket() {
  if [[ -z "${BUCKET:-}" ]]; then
    echo "tpu_pod.sh: set BUCKET=<gcs bucket> for checkpoints shared by all workers" >&2
    exit 2
  fi
}

create() {
  run gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" "${project[@]}" \
    --accelerator-type="$ACCELERATOR" --version="$VERSION"
}

setup() {
  need_bucket
  local repo
  repo=$(cd "$(dirname "$0")/.." && pwd)
  run gcloud compute tpus tpu-vm scp --recurse "$repo" "$TPU_NAME":~/charlm --zone="$ZONE" \
    "${project[@]}" --worker=all
  on_all "cd ~/charlm && pip install -q -r requirements.txt && pip install -q 'jax[tpu]' && \
sudo apt-get install -y -q gcsfuse >/dev/null 2>&1 || true; \
sudo mkdir -p /gcs && sudo chown \$USER /gcs && gcsfuse --implicit-dirs $BUCKET /gcs"
}

train() {
  need_bucket
  local flags
  flags=$(printf '%q ' "${extra[@]}")
  on_all "cd ~/charlm && nohup python -m charlm.main --multihost --config=$CONFIG \
--workdir=/gcs/runs/$RUN $flags > ~/charlm.log 2>&1 &"
}

logs() {
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" "${project[@]}" --worker=0 \
    --command="tail -F ~/charlm.log"
}

stop() {
  on_all "pkill -TERM -f charlm.main || true"
}

delete() {
  run gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" "${project[@]}" --quiet
}

case "$cmd" in
  create) create ;;
  setup) setup ;;
  train) train ;;
  logs) logs ;;
  stop) stop ;;
  delete) delete ;;
  all) create; setup; train; logs ;;
  *)
    sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'
    [[ -z "$cmd" || "$cmd" == "-h" || "$cmd" == "--help" ]] && exit 0
    echo "tpu_pod.sh: unknown subcommand '$cmd'" >&2
    exit 2
    ;;
esac
