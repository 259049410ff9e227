#!/usr/bin/env bash
# Benchmark P1: `/kv get` over the Unix socket through the dispatcher vs a
# bare vaultrs read of the same secret, one run, against the dev stack.
# Release build; prints a table with p50/p99 and the ratio (goal ≤ 1.10).
#
#   bench/run.sh [ROUNDS] [PER_ROUND]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
STATE=${VAULTGRAM_DEV_DIR:-$ROOT/.dev-stack}
BAO_PORT=${VAULTGRAM_DEV_BAO_PORT:-18200}

cargo build --release --quiet --bin vaultgram --example kv_get
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}/release
VAULTGRAM_BIN=$TARGET/vaultgram scripts/dev-stack.sh start

"$TARGET/vaultgram" --config "$STATE/vaultgram.toml" run >"$STATE/bench-run.log" 2>&1 &
RUN_PID=$!
trap 'kill -TERM $RUN_PID 2>/dev/null; wait $RUN_PID 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  [[ -S $STATE/vaultgram.sock ]] && break
  sleep 0.1
done
[[ -S $STATE/vaultgram.sock ]] || { cat "$STATE/bench-run.log" >&2; exit 1; }

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; $(date -u +%Y-%m-%dT%H:%MZ)"
"$TARGET/examples/kv_get" "https://127.0.0.1:$BAO_PORT" "$STATE/tls/ca.pem" \
  "$STATE/root-token" "$STATE/vaultgram.sock" "${1:-20}" "${2:-50}"
