#!/usr/bin/env bash
# Kubernetes manifest checks for k8s/ (issue 6):
#   1. kubernetes-validate --strict on every rendered manifest (base + overlay)
#   2. checkov: 0 failed checks on k8s/ and on the rendered output
#   3. NetworkPolicy allow-list test (+ --self-test mutations)
#   and yamllint --strict over k8s/ with ansible/.yamllint
# The tools (kubernetes-validate, checkov, pyyaml, yamllint) live in the venv
# that ensure_tools (scripts/lib.sh) fills, so checkov's pinned dependencies
# never touch the system Python; kubectl (for `kubectl kustomize`) too.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source-path=SCRIPTDIR/../.. source=scripts/lib.sh
. "$here/../../scripts/lib.sh"
venv=$(k8s_venv)
need_tool kubectl || exit 2
for t in python kubernetes-validate checkov yamllint; do
  [ -x "$venv/bin/$t" ] || { echo "$venv/bin/$t is missing: run ensure_tools (scripts/lib.sh)" >&2; exit 2; }
done
t0=$SECONDS
export PATH="$venv/bin:$PATH"
export KUBERNETES_VALIDATE="$venv/bin/kubernetes-validate" CHECKOV="$venv/bin/checkov"
status=0 npass=0 nfail=0
run_test() { # name, command...
  local name="$1" ts=$SECONDS; shift
  echo "== $name"
  if "$@"; then npass=$((npass + 1)); else nfail=$((nfail + 1)) status=1; fi
  echo "== $name: $((SECONDS - ts)) s"
}
# The same yamllint rules as ansible/ (line length 160: HCL in ConfigMaps).
run_test yamllint "$venv/bin/yamllint" --strict -c "$here/../../ansible/.yamllint" "$here/../../k8s"
run_test test_validate.sh "$here/test_validate.sh"
run_test test_checkov.sh "$here/test_checkov.sh"
run_test "test_networkpolicy.py --self-test" "$venv/bin/python" "$here/test_networkpolicy.py" --self-test
echo "== total $((SECONDS - t0)) s"
echo "$npass passed, $nfail failed"
exit "$status"
