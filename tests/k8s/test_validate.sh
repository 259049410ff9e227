#!/usr/bin/env bash
# kubernetes-validate --strict on every rendered manifest of the base
# (kubectl kustomize k8s/) and of the openbao-raft overlay.
# K8S_VERSION (default 1.33.0) picks the schema; ends with `N passed, M failed`.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
version="${K8S_VERSION:-1.33.0}"
kv="${KUBERNETES_VALIDATE:-kubernetes-validate}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
passed=0 failed=0
for variant in k8s k8s/overlays/openbao-raft; do
  out="$tmp/$(echo "$variant" | tr / _).yaml"
  kubectl kustomize "$root/$variant" >"$out"
  docs="$(grep -c '^kind:' "$out")"
  if "$kv" --strict -k "$version" "$out" >"$tmp/log" 2>&1; then rc=0; else rc=$?; fi
  ok="$(grep -c ' passed for resource ' "$tmp/log" || true)"
  bad=$((docs - ok))
  if [ "$rc" -ne 0 ] || [ "$bad" -ne 0 ]; then
    grep -v ' passed for resource ' "$tmp/log" >&2 || true
    echo "FAIL $variant: $ok/$docs resources valid (strict, Kubernetes $version)"
    [ "$bad" -gt 0 ] || bad=1
  else
    echo "ok   $variant: $ok/$docs resources valid (strict, Kubernetes $version)"
  fi
  passed=$((passed + ok)) failed=$((failed + bad))
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
