#!/usr/bin/env bash
# The node test (issue 31): the broker's pod on a real node (kubelet,
# containerd, runc, CNI bridge) inside a network namespace of its own, and
# its NetworkPolicies enforced by kube-router; see tests/node/node_test.py.
# Needs root. The tools come from ensure_tools (scripts/lib.sh); netprobe
# (tests/node/netprobe) is built here, cached by the Go build cache; the
# broker's binary is the one `cargo test` built ($CARGO_TARGET_DIR/debug).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source-path=SCRIPTDIR/../.. source=scripts/lib.sh
. "$here/../../scripts/lib.sh"
if [[ $(id -u) != 0 ]]; then
  echo "tests/node/run.sh: needs root (network namespaces, containerd, kubelet)" >&2
  exit 2
fi
KUBE_BIN_DIR=$(kube_binaries)
[[ -x $KUBE_BIN_DIR/kubelet ]] || KUBE_BIN_DIR=$(kubelet_binary)
KUBE_ROUTER=$(kube_router_binary)
export KUBE_BIN_DIR KUBE_ROUTER
cache="${XDG_CACHE_HOME:-$HOME/.cache}/vaultgram-tools/netprobe"
mkdir -p "$cache"
(cd "$here/netprobe" && GOTOOLCHAIN=local GOWORK=off CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o "$cache/netprobe" .)
target="${CARGO_TARGET_DIR:-$here/../../target}"
broker="$target/debug/vaultgram"
[[ -x $broker ]] || (cd "$here/../.." && cargo build --locked --bin vaultgram)
test=(python3 "$here/node_test.py" --netprobe "$cache/netprobe" --broker "$broker")
"${test[@]}" "$@"
# The test must be able to fail: with the Vault egress rule removed, and
# with egress widened to 0.0.0.0/0, it reports a mismatch (exit 3).
for m in drop-vault-egress widen-egress; do
  echo "== self-test: --mutate=$m must fail with a mismatch"
  rc=0
  "${test[@]}" --mutate="$m" >"${TMPDIR:-/tmp}/node-test-$m.log" 2>&1 || rc=$?
  if [[ $rc != 3 ]]; then
    echo "tests/node/run.sh: --mutate=$m exited $rc, not 3 (a mismatch):" >&2
    tail -n 30 "${TMPDIR:-/tmp}/node-test-$m.log" >&2
    exit 1
  fi
  grep -E "MISMATCH|<--" "${TMPDIR:-/tmp}/node-test-$m.log"
done
echo "tests/node/run.sh: passed (and failed as it must on both mutations)"
