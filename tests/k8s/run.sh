#!/usr/bin/env bash
# Kubernetes manifest checks for k8s/ (issue 6):
#   1. kubernetes-validate --strict on every rendered manifest (base + overlay)
#   2. checkov: 0 failed checks on k8s/ and on the rendered output
#   3. NetworkPolicy allow-list test (+ --self-test mutations)
#   and yamllint --strict over k8s/ with ansible/.yamllint
# Installs what is missing (pip: kubernetes-validate, checkov, pyyaml) into a
# virtualenv ($K8S_TEST_VENV, default ~/.cache/vaultgram/k8s-test-venv), so
# checkov's pinned dependencies never touch the system Python. Needs kubectl
# (for `kubectl kustomize`) and python3 >= 3.9.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${K8S_TEST_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/vaultgram/k8s-test-venv}"
command -v kubectl >/dev/null || { echo "kubectl not found (needed for kubectl kustomize)" >&2; exit 2; }
t0=$SECONDS
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
missing=()
"$venv/bin/python" -c 'import yaml' 2>/dev/null || missing+=(pyyaml)
[ -x "$venv/bin/kubernetes-validate" ] || missing+=(kubernetes-validate)
[ -x "$venv/bin/checkov" ] || missing+=(checkov)
[ -x "$venv/bin/yamllint" ] || missing+=(yamllint)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "== pip install ${missing[*]}"
  ti=$SECONDS
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${missing[@]}"
  echo "== install took $((SECONDS - ti)) s"
fi
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
