#!/usr/bin/env bash
# Fuzzes the chat-command parser for a bounded time (default 60 s):
#   scripts/fuzz.sh [SECONDS]
# cargo-fuzz needs nightly features; RUSTC_BOOTSTRAP=1 enables them on the
# machine's stable toolchain (the only one we can install here).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$ROOT/scripts/lib.sh"
ensure_fuzz_tools
cd "$ROOT"
export RUSTC_BOOTSTRAP=1
# Keep the fuzz build (sanitizer flags) apart from the normal target dir.
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-$HOME/.cache/vaultgram-fuzz-target}
mkdir -p fuzz/corpus/parse
for seed in "/kv get secret/x" "/kv put secret/a/b k=v \"x=y z\"" "/kv delete -versions=1,2 secret/x" \
  "/panel show --reveal p1" "/mtproto issue 42" "/approve ab12 123456" "/transit encrypt k \"a b\""; do
  printf '%s' "$seed" >"fuzz/corpus/parse/$(printf '%s' "$seed" | sha1sum | cut -c1-16)"
done
cargo fuzz run parse fuzz/corpus/parse -- -max_total_time="${1:-60}" -max_len=512
