#!/usr/bin/env bash
# N processes on this machine as one multi-process JAX job on CPU (what a pod does with
# hosts), each with D fake CPU devices. Used by tests/multiprocess_test.py.
#
#   launch/local_multiprocess.sh 2 2 --config=configs/tiny.py --workdir=/tmp/mp
#
# Every process gets the same flags plus --coordinator_address/--num_processes/
# --process_id. Output lines are prefixed with [process]. Exits non-zero if any fails.
# XLA_FLAGS, if set, is passed on (without a device count: D is added to it).
# PYTHON names the interpreter (default: python on PATH), e.g. a virtual environment's
# python without activating it; the tests pass their own.
# HOST_LOCAL_CACHE=DIR gives process i its own cache folder DIR/i (XDG_CACHE_HOME), as hosts
# with local disks have; by default all share one, as hosts on a shared filesystem do.
set -euo pipefail
if [[ $# -lt 2 ]]; then
  echo "usage: $0 NUM_PROCESSES DEVICES_PER_PROCESS [charlm.main flags...]" >&2
  exit 2
fi
n=$1 d=$2
shift 2
port=${PORT:-$((20000 + RANDOM % 20000))}
cd "$(dirname "$0")/.."
pids=()
for ((i = 0; i < n; i++)); do
  env ${HOST_LOCAL_CACHE:+"XDG_CACHE_HOME=$HOST_LOCAL_CACHE/$i"} \
    XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_force_host_platform_device_count=$d" JAX_PLATFORMS=cpu \
    "${PYTHON:-python}" -u -m charlm.main --coordinator_address="localhost:$port" --num_processes="$n" \
    --process_id="$i" "$@" > >(trap "" INT TERM; exec sed -u "s/^/[$i] /") 2>&1 &
  pids+=($!)
done
# A signal to the launcher goes to every process (they checkpoint and exit 0); the
# launcher then still waits for each and exits with the first failure, if any.
trap 'kill -TERM "${pids[@]}" 2>/dev/null || true' INT TERM
status=0
for i in "${!pids[@]}"; do
  p=${pids[$i]}
  while :; do  # a trapped signal interrupts wait (the process still runs): wait again
    wait "$p" 2>/dev/null && rc=0 || rc=$?  # (bash's own "Killed ..." notice is dropped)
    kill -0 "$p" 2>/dev/null || break
  done
  if ((rc > 128)); then echo "[$i] process $i was ended by SIG$(kill -l "$rc")" >&2; fi
  if [[ $status -eq 0 && $rc -ne 0 ]]; then status=$rc; fi
done
exit "$status"
