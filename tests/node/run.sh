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
export PATH="$PATH:/usr/local/go/bin" # where a fresh machine may have Go
cache="${XDG_CACHE_HOME:-$HOME/.cache}/vaultgram-tools/netprobe"
mkdir -p "$cache"
if [[ ! -x $cache/netprobe ]] || [[ -n $(find "$here/netprobe" -newer "$cache/netprobe" -type f) ]]; then
  (cd "$here/netprobe" && GOTOOLCHAIN=local GOWORK=off CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o "$cache/netprobe" .)
fi
target="${CARGO_TARGET_DIR:-$here/../../target}"
broker="$target/debug/vaultgram"
[[ -x $broker ]] || (cd "$here/../.." && cargo build --locked --bin vaultgram)
# The overlay's patches `test` what they replace: a manifest whose API-server
# placeholder changed must fail the render, not be patched blindly.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/tests/node"
cp -r "$here/../../k8s" "$tmp/k8s" && cp -r "$here/overlay" "$tmp/tests/node/overlay"
sed -i 's#cidr: 192.0.2.1/32#cidr: 192.0.2.7/32#' "$tmp/k8s/base/vaultgram-networkpolicy.yaml"
if "$KUBE_BIN_DIR/kubectl" kustomize "$tmp/tests/node/overlay" >/dev/null 2>"$tmp/err"; then
  echo "tests/node/run.sh: the overlay rendered over a changed API-server placeholder" >&2
  exit 1
fi
grep -q "testing value" "$tmp/err" || { cat "$tmp/err" >&2; exit 1; }
echo "== overlay: a changed placeholder fails the render ($(head -c 120 "$tmp/err"))"
bao=$(bao_binary) || { echo "tests/node/run.sh: no OpenBao binary: run ensure_tools (scripts/lib.sh)" >&2; exit 2; }
vault=$(vault_binary)
test=(python3 "$here/node_test.py" --netprobe "$cache/netprobe" --broker "$broker" --bao "$bao" --vault "$vault")
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
