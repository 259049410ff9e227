#!/usr/bin/env bash
# The tests' Telegram stand-in (src/transport/telegram/file.rs, with its
# injected panics, `_exit(137)` and hangs) is compiled only with the
# `telegram-standin` feature. This builds the binary as a release build
# would (no features) and checks that (1) none of the stand-in's control
# words is in it, while a build with the feature has them all (so the
# check can fail), and (2) `check-config` refuses `backend = "file"` with
# an error that names the key and says why.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}/debug
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# Words only the stand-in's code spells (inbox file, control names).
WORDS=(inbox.jsonl die_after_send connect_hang_ blackhole auth_key_duplicated)

cargo build --locked --quiet --features telegram-standin --bin vaultgram
cp "$TARGET/vaultgram" "$WORK/with-standin"
cargo build --locked --quiet --bin vaultgram
cp "$TARGET/vaultgram" "$WORK/without"
fail=0
for w in "${WORDS[@]}"; do
  if ! grep -aqF "$w" "$WORK/with-standin"; then
    echo "check-standin: the feature build lacks \`$w\`: the word list is stale" >&2
    fail=1
  fi
  if grep -aqF "$w" "$WORK/without"; then
    echo "check-standin: a build without the feature contains \`$w\`" >&2
    fail=1
  fi
done

# A config valid in every other respect (validation only checks that the
# files exist), with the stand-in as Telegram backend.
mkdir -p "$WORK/cfg/secrets" "$WORK/cfg/etcd" "$WORK/cfg/tg"
for f in vault-ca.pem secrets/role_id secrets/secret_id etcd/ca.pem etcd/client.pem etcd/client-key.pem; do
  : >"$WORK/cfg/$f"
done
cat >"$WORK/cfg/vaultgram.toml" <<'EOF'
vault = { addr = "https://127.0.0.1:8200", ca_cert = "vault-ca.pem", auth = { method = "approle", role_id_file = "secrets/role_id", secret_id_file = "secrets/secret_id" } }
etcd = { endpoints = ["https://127.0.0.1:2379"], ca_cert = "etcd/ca.pem", cert = "etcd/client.pem", key = "etcd/client-key.pem" }
telegram = { backend = "file", file_dir = "tg" }
operators = [{ name = "alice", telegram_id = 111111, role = "admin" }]
EOF
if out=$("$WORK/without" --config "$WORK/cfg/vaultgram.toml" check-config 2>&1); then
  echo "check-standin: check-config accepted backend = \"file\" in a build without the stand-in" >&2
  fail=1
elif ! grep -q 'telegram.backend' <<<"$out" || ! grep -q 'telegram-standin' <<<"$out"; then
  echo "check-standin: check-config refused, but not clearly: $out" >&2
  fail=1
fi
if ! "$WORK/with-standin" --config "$WORK/cfg/vaultgram.toml" check-config >/dev/null 2>&1; then
  echo "check-standin: the feature build refuses the same config: $("$WORK/with-standin" --config "$WORK/cfg/vaultgram.toml" check-config 2>&1)" >&2
  fail=1
fi
((fail == 0)) && echo "check-standin: no stand-in in a build without the feature (${#WORDS[@]} control words absent, present with it); check-config refuses backend = \"file\" there: ${out##*: }"
exit "$fail"
