#!/usr/bin/env bash
# Auto-unseal test for ansible/roles/vault, standalone (no etcd, no other
# roles): generates a CA and a server certificate, runs the role through
# tests/deploy/autounseal.yml against a temporary state dir on free loopback
# ports (daemon mode), then:
#   - a second run reports changed=0;
#   - restarting the transit-sealed OpenBao brings it back unsealed, no
#     operator action;
#   - with the unsealer stopped, a restart stays sealed and its log says why;
#   - once the unsealer is back (unsealed with its saved key), the main
#     server unseals again;
#   - every process is gone and every port free at the end;
#   - no root token, unseal or recovery key, or auto-unseal token was on any
#     process's command line meanwhile (argv_watch_*, scripts/lib.sh).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PASS=0 FAIL=0
ok() { PASS=$((PASS + 1)); echo "ok   - $*"; }
bad() { FAIL=$((FAIL + 1)); echo "FAIL - $*"; }
check() { # description command...
  local d=$1; shift
  if "$@"; then ok "$d"; else bad "$d"; fi
}

# shellcheck source-path=SCRIPTDIR/../.. source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"
need_tool ansible-playbook || exit 1
BAO=$(bao_binary) || { echo "OpenBao is not installed: run ensure_tools (scripts/lib.sh)" >&2; exit 1; }

PY=$(python3 -c 'import sys; print(sys.executable)')
WORK=$(mktemp -d "${TMPDIR:-/tmp}/vg-autounseal.XXXXXX")
chmod 700 "$WORK"

port_free() { ! ss -Hltn "sport = :$1" | grep -q .; }
pick_pair() { # a port p with p and p+1 free
  local p
  for _ in $(seq 1 200); do
    p=$((20000 + RANDOM % 40000))
    if port_free "$p" && port_free $((p + 1)); then echo "$p"; return 0; fi
  done
  return 1
}
API=$(pick_pair)
UNS=$(pick_pair)
while (( UNS >= API - 1 && UNS <= API + 1 )); do UNS=$(pick_pair); done

stop_pid() { # pidfile
  [[ -f $1 ]] || return 0
  start-stop-daemon --stop --pidfile "$1" --retry TERM/15/KILL/5 --remove-pidfile --oknodo >/dev/null 2>&1 || true
}
cleanup() {
  [[ -e $WORK/argv/pid ]] && kill -TERM "$(<"$WORK/argv/pid")" 2>/dev/null # the sampler, if still running
  stop_pid "$WORK/run/vaultgram-vault.pid"
  stop_pid "$WORK/run/vaultgram-unsealer.pid"
  rm -rf "$WORK"
}
trap cleanup EXIT

# ---- PKI (what the ansible helper's PKI play provides) ----------------
mkdir -p "$WORK/tls"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout "$WORK/tls/ca-key.pem" -out "$WORK/tls/ca.pem" -days 2 -subj "/CN=vg test CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout "$WORK/tls/bao-key.pem" -out "$WORK/tls/bao.csr" -subj "/CN=localhost" 2>/dev/null
openssl x509 -req -in "$WORK/tls/bao.csr" -CA "$WORK/tls/ca.pem" -CAkey "$WORK/tls/ca-key.pem" \
  -CAcreateserial -days 2 -out "$WORK/tls/bao.pem" 2>/dev/null -extfile <(printf '%s\n' \
    "subjectAltName=IP:127.0.0.1,DNS:localhost" "basicConstraints=CA:FALSE" \
    "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth,clientAuth")
chmod 600 "$WORK/tls/"*-key.pem

run_role() {
  ANSIBLE_ROLES_PATH=$ROOT/ansible/roles ANSIBLE_NOCOLOR=1 ANSIBLE_RETRY_FILES_ENABLED=0 ANSIBLE_PIPELINING=1 \
    ansible-playbook -i localhost, "$ROOT/tests/deploy/autounseal.yml" \
      -e "vg_local_dir=$WORK" -e "vault_api_port=$API" -e "vault_cluster_port=$((API + 1))" \
      -e "vault_unsealer_port=$UNS" -e service_manager=daemon \
      -e "ansible_python_interpreter=$PY"
}

main_status() { VAULT_ADDR=https://127.0.0.1:$API VAULT_CACERT=$WORK/tls/ca.pem "$BAO" status -format=json 2>/dev/null || true; }
uns_cli() { VAULT_ADDR=https://127.0.0.1:$UNS VAULT_CACERT=$WORK/tls/ca.pem "$BAO" "$@"; }
sealed_is() { # true|false: polls up to 30 s
  for _ in $(seq 1 60); do
    [[ $(main_status) == *"\"sealed\": $1"* ]] && return 0
    sleep 0.5
  done
  return 1
}
start_main() {
  start-stop-daemon --start --background --make-pidfile --pidfile "$WORK/run/vaultgram-vault.pid" \
    --output "$WORK/log/vaultgram-vault.log" --exec "$BAO" -- server -config="$WORK/vault/server.hcl"
}
start_unsealer() {
  start-stop-daemon --start --background --make-pidfile --pidfile "$WORK/run/vaultgram-unsealer.pid" \
    --output "$WORK/log/vaultgram-unsealer.log" --exec "$BAO" -- server -config="$WORK/unsealer/unsealer.hcl"
}
running() { [[ -s $1 ]] && kill -0 "$(<"$1")" 2>/dev/null; }
mode_is_600() { [[ $(stat -c %a "$1") == 600 ]]; }

echo "# ports: main $API/$((API + 1)), unsealer $UNS/$((UNS + 1)); state $WORK"
T0=$SECONDS
argv_watch_start "$WORK/argv" || { echo "the argv sampler did not start" >&2; exit 1; }
argv_watch_probe "$WORK/argv"

# ---- 1. the role, twice ----------------------------------------------
if run_role >"$WORK/run1.log" 2>&1; then ok "role: first run succeeds"; else bad "role: first run fails"; tail -40 "$WORK/run1.log"
  echo "$PASS passed, $FAIL failed"; exit 1; fi
echo "# elapsed: $((SECONDS - T0)) s"
# The role's secrets, watched to the end (run 1's command lines included).
for f in unsealer/root-token unsealer/unseal-key unsealer/autounseal-token vault/root-token vault/recovery-key; do
  if [[ -s $WORK/$f ]]; then argv_watch_secret_file "$WORK/argv" "$f" "$WORK/$f"; else bad "$f missing: not watched"; fi
done
if run_role >"$WORK/run2.log" 2>&1 && grep -Eq 'localhost *: ok=[0-9]+ +changed=0 +unreachable=0 +failed=0' "$WORK/run2.log"; then
  ok "role: second run reports changed=0"
else
  bad "role: second run is not idempotent"; grep -E 'changed:|PLAY RECAP' -A1 "$WORK/run2.log" | head -20
fi
check "main server is unsealed after the role" sealed_is false
check "main server is initialised with a recovery key (seal type transit)" \
  bash -c "[[ \$(VAULT_ADDR=https://127.0.0.1:$API VAULT_CACERT=$WORK/tls/ca.pem '$BAO' status -format=json 2>/dev/null | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d[\"type\"], d[\"recovery_seal\"], d[\"initialized\"])') == 'transit True True' ]]"
for f in unsealer/unseal-key unsealer/root-token unsealer/autounseal-token vault/root-token vault/server.hcl; do
  check "$f exists with mode 0600" mode_is_600 "$WORK/$f"
done
check "config sets no disable_mlock" bash -c "! grep -Eq '^[[:space:]]*disable_mlock' '$WORK/vault/server.hcl'"
check "two audit devices write (declarative)" bash -c "
  VAULT_ADDR=https://127.0.0.1:$API VAULT_CACERT=$WORK/tls/ca.pem VAULT_TOKEN=\$(<'$WORK/vault/root-token') '$BAO' token lookup >/dev/null &&
  [[ -s '$WORK/vault/audit.log' && -s '$WORK/vault/audit-secondary.log' ]]"
# The auto-unseal token may encrypt/decrypt with the one key, nothing else.
# It goes to the CLI in its environment, read from its file (a token in an
# argument, or in a `bash -c` script, is on a command line).
tok_cli() { # the unsealer's CLI with the auto-unseal token
  local t
  t=$(<"$WORK/unsealer/autounseal-token")
  VAULT_TOKEN=$t BAO_TOKEN=$t uns_cli "$@"
}
tok_encrypts() { tok_cli write -field=ciphertext transit/encrypt/autounseal plaintext=aGk= >/dev/null; }
tok_confined() {
  ! tok_cli read transit/keys/autounseal >/dev/null 2>&1 && ! tok_cli secrets list >/dev/null 2>&1
}
tok_periodic() { [[ $(tok_cli token lookup -format=json) =~ \"period\":\ [1-9] ]]; }
check "auto-unseal token can encrypt with transit/autounseal" tok_encrypts
check "auto-unseal token cannot read the key or list secrets" tok_confined
check "auto-unseal token is periodic" tok_periodic

echo "# elapsed: $((SECONDS - T0)) s"
# ---- 2. restart: back unsealed with no operator action ----------------
stop_pid "$WORK/run/vaultgram-vault.pid"
start_main
check "restarted main server comes back unsealed by itself" sealed_is false

# ---- 3. unsealer down: the restart stays sealed and says why ----------
stop_pid "$WORK/run/vaultgram-unsealer.pid"
stop_pid "$WORK/run/vaultgram-vault.pid"
: >"$WORK/log/vaultgram-vault.log"
start_main
stays_sealed() { # never reports sealed=false for 10 s
  for _ in $(seq 1 20); do
    [[ $(main_status) == *'"sealed": false'* ]] && return 1
    sleep 0.5
  done
  return 0
}
check "with the unsealer down the restarted main server never unseals" stays_sealed
# OpenBao 2.7 checks the transit seal at start-up and exits when it cannot
# reach it; under systemd Restart=on-failure retries until the unsealer is back.
main_down_or_sealed() {
  ! running "$WORK/run/vaultgram-vault.pid" || [[ $(main_status) == *'"sealed": true'* ]]
}
check "it is down (exited) or reports sealed=true" main_down_or_sealed
if grep -Eiq 'seal "transit".*(connection refused|dial tcp)|error (unsealing|fetching stored keys|decrypting)' "$WORK/log/vaultgram-vault.log"; then
  ok "its log says why: $(grep -Ei 'connection refused|error' "$WORK/log/vaultgram-vault.log" | head -1 | cut -c1-200)"
else
  bad "its log does not name the transit seal failure"; tail -20 "$WORK/log/vaultgram-vault.log"
fi
echo "# elapsed: $((SECONDS - T0)) s"

# ---- 4. unsealer back: the main server unseals again ------------------
start_unsealer
for _ in $(seq 1 60); do
  rc=0; uns_cli status >/dev/null 2>&1 || rc=$?
  [[ $rc == 2 ]] && break
  sleep 0.5
done
uns_cli write sys/unseal key=@"$WORK/unsealer/unseal-key" >/dev/null || true
# What systemd's Restart=on-failure does on a real host:
running "$WORK/run/vaultgram-vault.pid" || start_main
check "unsealer back: the main server unseals with no operator action on it" sealed_is false

# ---- 5. cleanup ---------------------------------------------------------
stop_pid "$WORK/run/vaultgram-vault.pid"
stop_pid "$WORK/run/vaultgram-unsealer.pid"
all_ports_free() { port_free "$API" && port_free $((API + 1)) && port_free "$UNS" && port_free $((UNS + 1)); }
no_bao_left() { ! pgrep -f -- "-config=$WORK/" >/dev/null; }
check "no server process left" no_bao_left
check "all four ports free" all_ports_free

if argv_watch_stop "$WORK/argv" >"$WORK/argv.report" 2>&1; then
  ok "no secret on any command line: $(sed -n '1s/^argv-watch: //p' "$WORK/argv.report")"
else
  bad "a secret was on a command line:"; grep -E 'LEAK|NOT SEEN' "$WORK/argv.report" | cut -c1-400
fi
rm -f "$WORK/argv/pid"

echo "# elapsed: $((SECONDS - T0)) s"
echo "$PASS passed, $FAIL failed"
[[ $FAIL == 0 ]]
