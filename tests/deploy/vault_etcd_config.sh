#!/usr/bin/env bash
# Renders the vault role's reference configs (nothing is started) and checks
# the HashiCorp Vault `storage "etcd"` stanza against the documented keys of
# the etcd storage backend (tests/deploy/check_etcd_storage.py). HashiCorp
# Vault itself runs in the integration suite (scripts/test.sh, with
# scripts/vault-etcd.hcl.tmpl); this checks the Ansible role's rendering.
#   tests/deploy/vault_etcd_config.sh             render + check
#   tests/deploy/vault_etcd_config.sh --self-test also prove the checker fails
#                                                 on an unknown or missing key
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CHECK=$ROOT/tests/deploy/check_etcd_storage.py
SELF_TEST=0
[[ ${1:-} == --self-test ]] && SELF_TEST=1
PASS=0 FAIL=0
ok() { PASS=$((PASS + 1)); echo "ok   - $*"; }
bad() { FAIL=$((FAIL + 1)); echo "FAIL - $*"; }

# shellcheck source-path=SCRIPTDIR/../.. source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"
need_tool ansible-playbook || exit 1
PY=$(python3 -c 'import sys; print(sys.executable)')
WORK=$(mktemp -d "${TMPDIR:-/tmp}/vg-etcdcfg.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
T0=$SECONDS

if ANSIBLE_ROLES_PATH=$ROOT/ansible/roles ANSIBLE_NOCOLOR=1 ANSIBLE_PIPELINING=1 \
   ansible-playbook -i localhost, "$ROOT/tests/deploy/render_reference.yml" \
     -e "vg_local_dir=$WORK" -e "ansible_python_interpreter=$PY" >"$WORK/render.log" 2>&1; then
  ok "role renders its reference configs"
else
  bad "role does not render"; tail -30 "$WORK/render.log"; echo "$PASS passed, $FAIL failed"; exit 1
fi
REF=$WORK/vault/reference
CFG=$REF/vault-etcd.hcl

if out=$("$CHECK" "$CFG"); then ok "vault-etcd.hcl: storage \"etcd\" uses documented keys only, all required ones set"
else bad "vault-etcd.hcl: $out"; fi

# What runs (the harness's and the dev stack's template) and the Kubernetes
# ConfigMap use the same storage keys as the Ansible role (the password
# aside: Ansible and the harness pass ETCD_PASSWORD in the environment,
# Kubernetes renders it into the config at start).
etcd_keys() { # file -> the sorted keys of its storage "etcd" block
  "$PY" - "$1" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
m = re.search(r'storage\s+"etcd"\s*\{(.*?)\n\s*\}', text, re.S)
keys = sorted({k for k in re.findall(r'^\s*([a-z_]+)\s*=', m.group(1), re.M)} - {"password"}) if m else []
print(" ".join(keys))
PY
}
want=$(etcd_keys "$CFG")
for other in "$ROOT/scripts/vault-etcd.hcl.tmpl" "$ROOT/k8s/vault-etcd/vault-config.yaml"; do
  got=$(etcd_keys "$other")
  if [[ -n $want && $got == "$want" ]]; then ok "${other#"$ROOT"/}: the role's storage \"etcd\" keys ($want)"
  else bad "${other#"$ROOT"/}: storage \"etcd\" keys '$got', the role's '$want'"; fi
done

has() { grep -Eq "$2" "$1"; }
hasnt() { ! grep -Eq "$2" "$1"; }
check() { # description command...
  local d=$1; shift
  if "$@"; then ok "$d"; else bad "$d"; fi
}
check "vault-etcd.hcl: TLS listener" has "$CFG" '^listener "tcp"'
check "vault-etcd.hcl: no tls_disable" hasnt "$CFG" 'tls_disable'
check "vault-etcd.hcl: seal \"transit\"" has "$CFG" '^seal "transit"'
check "vault-etcd.hcl: no disable_mlock" hasnt "$CFG" '^[[:space:]]*disable_mlock'

count_is() { [[ $(grep -Ec "$2" "$1" || true) == "$3" ]]; }
for n in 1 2 3; do
  f=$REF/openbao-raft-bao-$n.hcl
  check "openbao-raft-bao-$n.hcl: storage \"raft\", node_id bao-$n" has "$f" "node_id *= \"bao-$n\""
  check "openbao-raft-bao-$n.hcl: retry_join to the two other nodes" count_is "$f" '^[[:space:]]*retry_join \{' 2
  check "openbao-raft-bao-$n.hcl: does not join itself" hasnt "$f" "leader_api_addr *= \"https://bao-$n\\."
  check "openbao-raft-bao-$n.hcl: two file audit devices" count_is "$f" '^audit "file"' 2
done
S=$REF/openbao-static-seal.hcl
check "openbao-static-seal.hcl: seal \"static\"" has "$S" '^seal "static"'
check "openbao-static-seal.hcl: key id and file:// key" has "$S" 'current_key *= "file://'
check "openbao-static-seal.hcl: states its trade-off" has "$S" 'TRADE-OFF'

if (( SELF_TEST )); then
  sed 's/^\(  etcd_api *= "v3"\)$/\1\n  consistency_mode = "strong"/' "$CFG" >"$WORK/unknown.hcl"
  if out=$("$CHECK" "$WORK/unknown.hcl"); then bad "self-test: an unknown key was accepted"
  else check "self-test: unknown key rejected ($out)" grep -q 'undocumented key consistency_mode' <<<"$out"; fi
  sed '/^  etcd_api /d' "$CFG" >"$WORK/missing.hcl"
  if out=$("$CHECK" "$WORK/missing.hcl"); then bad "self-test: a missing etcd_api was accepted"
  else check "self-test: missing etcd_api rejected" grep -q 'missing required key etcd_api' <<<"$out"; fi
  sed 's#^\(  address *= "\)https://#\1http://#' "$CFG" >"$WORK/plain.hcl"
  if "$CHECK" "$WORK/plain.hcl" >/dev/null; then bad "self-test: an http:// endpoint was accepted"
  else ok "self-test: http:// endpoint rejected"; fi
fi

echo "# elapsed: $((SECONDS - T0)) s"
echo "$PASS passed, $FAIL failed"
[[ $FAIL == 0 ]]
