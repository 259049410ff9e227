#!/usr/bin/env bash
# checkov on k8s/ (frameworks kubernetes + kustomize) and on the rendered
# output of the base and the openbao-raft overlay. Requires 0 failed checks;
# every skip is a `checkov.io/skipN` annotation on the resource itself, and
# is listed here with its reason. Ends with `N passed, M failed`.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
checkov="${CHECKOV:-checkov}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/rendered"
kubectl kustomize "$root/k8s" >"$tmp/rendered/base.yaml"
kubectl kustomize "$root/k8s/overlays/openbao-raft" >"$tmp/rendered/openbao-raft.yaml"
passed=0 failed=0
run() { # label, checkov args...
  local label="$1"; shift
  # --skip-download: no platform calls (offline CI); JSON for exact counts.
  "$checkov" --skip-download --compact -o json "$@" >"$tmp/out.json" 2>"$tmp/err" || true
  python3 - "$label" "$tmp/out.json" <<'PY' || failed=$((failed + 1))
import json, sys
label, path = sys.argv[1], sys.argv[2]
try:
    data = json.load(open(path))
except Exception as e:
    print(f"FAIL {label}: no checkov JSON ({e})"); sys.exit(1)
reports = data if isinstance(data, list) else [data]
total_p = total_f = total_s = 0
for r in reports:
    s = r.get("summary", {})
    total_p += s.get("passed", 0); total_f += s.get("failed", 0); total_s += s.get("skipped", 0)
    res = r.get("results", {})
    for c in res.get("failed_checks", []):
        tag = "expected FAILED" if label.startswith("self-test") else "FAILED"
        print(f"  {tag} {c['check_id']} {c['resource']} {c.get('file_path')}")
    for c in res.get("skipped_checks", []):
        why = (c.get("check_result", {}).get("suppress_comment") or "").strip()
        print(f"  skip   {c['check_id']} {c['resource']}: {why or 'NO REASON'}")
        if len(why) < 10:
            total_f += 1  # a skip without a reason counts as a failure
expect_fail = label.startswith("self-test")
ok = (total_f > 0) if expect_fail else (total_f == 0 and total_p > 0)
print(f"{'ok  ' if ok else 'FAIL'} {label}: {total_p} passed, {total_f} failed, {total_s} skipped checks")
sys.exit(0 if ok else 1)
PY
  passed=$((passed + 1))
}
run "k8s/ (kubernetes+kustomize)" -d "$root/k8s" --framework kubernetes kustomize
run "rendered base + openbao-raft (kubernetes)" -d "$tmp/rendered" --framework kubernetes
# Self-test: the same gate must fail when a hardening setting is removed.
python3 - "$tmp/rendered/base.yaml" "$tmp/broken.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
for d in docs:
    if d["kind"] == "Deployment":
        c = d["spec"]["template"]["spec"]["containers"][0]
        del c["livenessProbe"]
        c["securityContext"]["readOnlyRootFilesystem"] = False
yaml.safe_dump_all(docs, open(sys.argv[2], "w"))
PY
mkdir "$tmp/broken" && mv "$tmp/broken.yaml" "$tmp/broken/"
run "self-test (probe + readOnlyRootFilesystem removed must fail)" -d "$tmp/broken" --framework kubernetes
passed=$((passed - failed))
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
