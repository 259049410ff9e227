#!/usr/bin/env bash
# The import invariants of ARCHITECTURE.md, checked: each external client
# crate is used by exactly one module; `command/` never imports the
# dispatcher or the approval gate; KV paths of the broker's records are
# spelt only in `records/`; the Telegram leader writes etcd only through
# its Guard; no import cycle between any two files of src/, and neither
# the ground floor `config/` nor a leaf imports anything above it
# (scripts/import-graph.py). Comment
# lines and string literals (a tracing target names a crate, it imports
# nothing) are ignored; paths through our own module (`crate::kube::`,
# `vaultgram::kube::`) are ours.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
fail=0
check() { # crate-regex allowed-path-regex what
  local hits
  hits=$(grep -rnE "$1" src --include='*.rs' |
    grep -vE '^[^:]+:[0-9]+:[[:space:]]*//' |
    grep -vE '(crate|vaultgram|super)::kube::' |
    grep -vE "^($2)" || true)
  if [[ -n $hits ]]; then
    echo "check-imports: $3 used outside its module:" >&2
    echo "$hits" >&2
    fail=1
  fi
}
check '(^|[^A-Za-z0-9_:"])(::)?(vaultrs|rustify)::' 'src/vault/' 'vaultrs/rustify'
check '(^|[^A-Za-z0-9_:"])(::)?etcd_client::' 'src/etcd\.rs:' 'etcd_client'
check '(^|[^A-Za-z0-9_:"])(::)?grammers_[a-z_]+::' 'src/transport/telegram/grammers\.rs:' 'grammers_*'
check '(^|[^A-Za-z0-9_:"])(::)?(kube|k8s_openapi)::' 'src/kube\.rs:' 'kube/k8s-openapi'
# A string literal naming a record folder (`"vaultgram/agents…"`, …).
records='"[^"]*(vaultgram/(agents|panels|mtproto|mtproxy|telegram-session)|panels-by-agent)'
# The one exception: the config's default of telegram.session_path (the
# ground floor cannot import records/; records::session takes it from there).
check "$records" 'src/records/|src/config/schema\.rs:[0-9]+:pub const DEFAULT_SESSION_PATH' 'a KV path of the broker'"'"'s records'
hits=$(grep -rnE '(crate|super)::(dispatch|approvals)\b' src/command --include='*.rs' |
  grep -vE '^[^:]+:[0-9]+:[[:space:]]*//' || true)
if [[ -n $hits ]]; then
  echo "check-imports: command/ imports the dispatcher or the approval gate:" >&2
  echo "$hits" >&2
  fail=1
fi
# The Telegram leader writes etcd only through the Guard (a fenced term
# must not undo what its successor recorded): no plain put/delete there.
hits=$(grep -rnE '\betcd\.(put|delete|put_with_lease|txn)\(' src/transport/telegram --include='*.rs' |
  grep -vE '^[^:]+:[0-9]+:[[:space:]]*//' || true)
if [[ -n $hits ]]; then
  echo "check-imports: an unguarded etcd write in the Telegram leader:" >&2
  echo "$hits" >&2
  fail=1
fi
python3 scripts/import-graph.py || fail=1
((fail == 0)) && echo "check-imports: vaultrs, etcd_client, grammers_*, kube each in one module; record paths only in records/; command/ imports neither dispatch nor approvals"
exit "$fail"
