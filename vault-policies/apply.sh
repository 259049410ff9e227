#!/usr/bin/env bash
# vault-policies/apply.sh — put into Vault / OpenBao everything vaultgram needs:
# the ACL policies in this folder, one vaultgram-op-agent-<agent> policy per
# agent, the kv-v2 / transit / totp secrets engines, the transit key, the
# AppRole role "vaultgram" and the token role "vaultgram-operator".
#
# Idempotent: run it as often as you like; a second run changes nothing.
# See README.md in this folder for what each policy allows.
#
# Environment (read, never printed):
#   VAULT_ADDR, VAULT_TOKEN       required (BAO_ADDR / BAO_TOKEN accepted as fallbacks)
#   VAULT_CACERT, VAULT_CAPATH, VAULT_CLIENT_CERT, VAULT_CLIENT_KEY,
#   VAULT_TLS_SERVER_NAME         optional TLS settings (BAO_* fallbacks)
#   VAULT_CLI                     the CLI binary (default: `vault` if on PATH, else `bao`)
#   VAULTGRAM_AGENTS              space-separated agent ids: one policy each
#   VAULTGRAM_PRUNE_AGENTS        "1": delete vaultgram-op-agent-* policies of agents
#                                 not in VAULTGRAM_AGENTS (default: keep them)
#   VAULTGRAM_KV_MOUNT            kv-v2 mount (default: secret)
#   VAULTGRAM_KV_MAX_VERSIONS     versions the kv-v2 mount keeps per secret
#                                 (default 100); the broker refuses a write that
#                                 would push a live version out, and versions are
#                                 never deleted by age (delete_version_after=0s)
#   VAULTGRAM_TRANSIT_MOUNT       transit mount (default: transit)
#   VAULTGRAM_TRANSIT_KEY         the broker's session key (default: vaultgram)
#   VAULTGRAM_APPROLE_CIDRS       CIDRs (space- or comma-separated) bound to the
#                                 AppRole secret_id and token (default: none)
#   VAULTGRAM_APPROLE_SECRET_ID_TTL       default 10m
#   VAULTGRAM_APPROLE_SECRET_ID_NUM_USES  default 1
#   VAULTGRAM_APPROLE_TOKEN_PERIOD        default 1h: the broker's token is periodic,
#                                         renewed forever while the broker runs, so the
#                                         single-use secret_id is never needed again;
#                                         0 = use TOKEN_TTL / TOKEN_MAX_TTL instead
#   VAULTGRAM_APPROLE_TOKEN_TTL           default 1h (only with TOKEN_PERIOD=0)
#   VAULTGRAM_APPROLE_TOKEN_MAX_TTL       default 4h (only with TOKEN_PERIOD=0)
#   VAULTGRAM_OPERATOR_TOKEN_MAX_TTL      explicit max TTL of operator child tokens, default 1h
# Kubernetes auth for the broker's pod (only when VAULTGRAM_K8S_HOST is set):
#   VAULTGRAM_K8S_HOST            the API server Vault sends TokenReviews to
#                                 (in the cluster: https://kubernetes.default.svc)
#   VAULTGRAM_K8S_CA_CERT         file: the API server's CA (default: Vault's own
#                                 pod CA, when Vault runs in the cluster)
#   VAULTGRAM_K8S_REVIEWER_JWT_FILE  file: a token allowed to create TokenReviews
#                                 (system:auth-delegator; default: Vault's own pod
#                                 token, re-read by Vault as the kubelet rotates it)
#   VAULTGRAM_K8S_MOUNT           default kubernetes
#   VAULTGRAM_K8S_NAMESPACE, VAULTGRAM_K8S_SERVICE_ACCOUNT  default vaultgram, vaultgram
#   VAULTGRAM_K8S_AUDIENCE        the audience the pod's projected token carries (default vault)
#   VAULTGRAM_K8S_TOKEN_PERIOD / _TOKEN_TTL / _TOKEN_MAX_TTL  as the AppRole ones (same defaults)
set -euo pipefail

PROG=apply.sh
SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)

log() { printf '%s\n' "$*" >&2; }
die() {
  printf '%s: error: %s\n' "$PROG" "$*" >&2
  exit 1
}

# ---------------------------------------------------------------------------
# Phase 1: inputs. Everything is validated before Vault is touched.
# ---------------------------------------------------------------------------

VAULT_ADDR=${VAULT_ADDR:-${BAO_ADDR:-}}
VAULT_TOKEN=${VAULT_TOKEN:-${BAO_TOKEN:-}}
[[ -n $VAULT_ADDR ]] || die "VAULT_ADDR is not set (the Vault/OpenBao address, e.g. https://127.0.0.1:8200)"
[[ -n $VAULT_TOKEN ]] || die "VAULT_TOKEN is not set (a root or vault-operator token)"
[[ $VAULT_ADDR =~ ^https?:// ]] || die "VAULT_ADDR must start with https:// (or http:// for a dev server)"
if [[ $VAULT_ADDR == http://* ]] && ! [[ $VAULT_ADDR =~ ^http://(127\.[0-9.]+|localhost|\[::1\])(:|/|$) ]]; then
  log "warning: VAULT_ADDR is plain http to a non-loopback address; the token travels in clear text"
fi

# The bao CLI prefers BAO_* over VAULT_*; export both so VAULT_* always wins and
# either CLI sees the same settings.
export VAULT_ADDR VAULT_TOKEN BAO_ADDR="$VAULT_ADDR" BAO_TOKEN="$VAULT_TOKEN"
for v in CACERT CAPATH CLIENT_CERT CLIENT_KEY TLS_SERVER_NAME; do
  vv="VAULT_$v" bv="BAO_$v"
  val=${!vv:-${!bv:-}}
  if [[ -n $val ]]; then
    export "$vv=$val" "$bv=$val"
  fi
done
unset v vv bv val

if [[ -n ${VAULT_CLI:-} ]]; then
  command -v -- "$VAULT_CLI" >/dev/null 2>&1 || die "VAULT_CLI=$VAULT_CLI is not an executable"
  CLI=$VAULT_CLI
elif command -v vault >/dev/null 2>&1; then
  CLI=vault
elif command -v bao >/dev/null 2>&1; then
  CLI=bao
else
  die "neither 'vault' nor 'bao' is on PATH; install one or set VAULT_CLI=/path/to/binary"
fi

if command -v jq >/dev/null 2>&1; then
  JSON=jq
elif command -v python3 >/dev/null 2>&1; then
  JSON=python3
else
  die "needs jq or python3 to read the CLI's JSON output"
fi

MOUNT_RE='^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$'
NAME_RE='^[a-z0-9][a-z0-9_-]{0,62}$'
TTL_RE='^[0-9]+[smh]?$'

KV_MOUNT=${VAULTGRAM_KV_MOUNT:-secret}
TRANSIT_MOUNT=${VAULTGRAM_TRANSIT_MOUNT:-transit}
TRANSIT_KEY=${VAULTGRAM_TRANSIT_KEY:-vaultgram}
TOTP_MOUNT=totp
APPROLE_MOUNT=approle
APPROLE_ROLE=vaultgram
TOKEN_ROLE=vaultgram-operator

for m in "$KV_MOUNT" "$TRANSIT_MOUNT"; do
  [[ $m =~ $MOUNT_RE ]] || die "invalid mount name '$m' (letters, digits, _ and -, no slashes)"
  case $m in
    sys | auth | identity | cubbyhole | "$TOTP_MOUNT") die "mount name '$m' is reserved" ;;
  esac
done
[[ $KV_MOUNT != "$TRANSIT_MOUNT" ]] || die "VAULTGRAM_KV_MOUNT and VAULTGRAM_TRANSIT_MOUNT must differ"
[[ $TRANSIT_KEY =~ $NAME_RE ]] || die "invalid VAULTGRAM_TRANSIT_KEY '$TRANSIT_KEY' (must match $NAME_RE)"

SECRET_ID_TTL=${VAULTGRAM_APPROLE_SECRET_ID_TTL:-10m}
SECRET_ID_NUM_USES=${VAULTGRAM_APPROLE_SECRET_ID_NUM_USES:-1}
TOKEN_TTL=${VAULTGRAM_APPROLE_TOKEN_TTL:-1h}
TOKEN_MAX_TTL=${VAULTGRAM_APPROLE_TOKEN_MAX_TTL:-4h}
TOKEN_PERIOD=${VAULTGRAM_APPROLE_TOKEN_PERIOD:-1h}
OPERATOR_MAX_TTL=${VAULTGRAM_OPERATOR_TOKEN_MAX_TTL:-1h}
for pair in "VAULTGRAM_APPROLE_SECRET_ID_TTL=$SECRET_ID_TTL" "VAULTGRAM_APPROLE_TOKEN_TTL=$TOKEN_TTL" \
  "VAULTGRAM_APPROLE_TOKEN_MAX_TTL=$TOKEN_MAX_TTL" "VAULTGRAM_OPERATOR_TOKEN_MAX_TTL=$OPERATOR_MAX_TTL" \
  "VAULTGRAM_APPROLE_TOKEN_PERIOD=$TOKEN_PERIOD"; do
  [[ ${pair#*=} =~ $TTL_RE ]] || die "invalid ${pair%%=*} '${pair#*=}' (a duration such as 90s, 10m, 4h)"
done
[[ $SECRET_ID_NUM_USES =~ ^[0-9]+$ ]] || die "invalid VAULTGRAM_APPROLE_SECRET_ID_NUM_USES '$SECRET_ID_NUM_USES' (a number, 0 = unlimited)"

# CIDRs: space- or comma-separated in, comma-separated out.
CIDRS=""
cidr_input=${VAULTGRAM_APPROLE_CIDRS:-}
read -r -a cidr_list <<<"${cidr_input//,/ }"
for c in ${cidr_list[@]+"${cidr_list[@]}"}; do
  [[ $c =~ ^([0-9]{1,3}(\.[0-9]{1,3}){3}|[0-9A-Fa-f:]*:[0-9A-Fa-f:.]*)(/[0-9]{1,3})?$ ]] ||
    die "invalid CIDR '$c' in VAULTGRAM_APPROLE_CIDRS"
  CIDRS=${CIDRS:+$CIDRS,}$c
done

# Kubernetes auth: validated here, written after the AppRole role.
K8S_HOST=${VAULTGRAM_K8S_HOST:-}
K8S_MOUNT=${VAULTGRAM_K8S_MOUNT:-kubernetes}
K8S_NAMESPACE=${VAULTGRAM_K8S_NAMESPACE:-vaultgram}
K8S_SA=${VAULTGRAM_K8S_SERVICE_ACCOUNT:-vaultgram}
K8S_AUDIENCE=${VAULTGRAM_K8S_AUDIENCE:-vault}
K8S_TOKEN_PERIOD=${VAULTGRAM_K8S_TOKEN_PERIOD:-$TOKEN_PERIOD}
K8S_TOKEN_TTL=${VAULTGRAM_K8S_TOKEN_TTL:-$TOKEN_TTL}
K8S_TOKEN_MAX_TTL=${VAULTGRAM_K8S_TOKEN_MAX_TTL:-$TOKEN_MAX_TTL}
if [[ -n $K8S_HOST ]]; then
  [[ $K8S_HOST =~ ^https://[^/[:space:]]+(/[^[:space:]]*)?$ ]] || die "invalid VAULTGRAM_K8S_HOST '$K8S_HOST' (an https:// URL)"
  [[ $K8S_MOUNT =~ $MOUNT_RE ]] || die "invalid VAULTGRAM_K8S_MOUNT '$K8S_MOUNT'"
  for pair in "VAULTGRAM_K8S_NAMESPACE=$K8S_NAMESPACE" "VAULTGRAM_K8S_SERVICE_ACCOUNT=$K8S_SA"; do
    [[ ${pair#*=} =~ ^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$ ]] || die "invalid ${pair%%=*} '${pair#*=}' (a Kubernetes name)"
  done
  [[ $K8S_AUDIENCE =~ ^[A-Za-z0-9._:/-]+$ ]] || die "invalid VAULTGRAM_K8S_AUDIENCE '$K8S_AUDIENCE'"
  for pair in "VAULTGRAM_K8S_TOKEN_PERIOD=$K8S_TOKEN_PERIOD" "VAULTGRAM_K8S_TOKEN_TTL=$K8S_TOKEN_TTL" \
    "VAULTGRAM_K8S_TOKEN_MAX_TTL=$K8S_TOKEN_MAX_TTL"; do
    [[ ${pair#*=} =~ $TTL_RE ]] || die "invalid ${pair%%=*} '${pair#*=}' (a duration such as 90s, 10m, 4h)"
  done
  for f in "${VAULTGRAM_K8S_CA_CERT:-}" "${VAULTGRAM_K8S_REVIEWER_JWT_FILE:-}"; do
    [[ -z $f || -r $f ]] || die "cannot read $f"
  done
fi

# Agents: all checked first, so a bad name changes nothing.
AGENTS=()
bad=()
read -r -a agent_words <<<"${VAULTGRAM_AGENTS:-}"
for a in ${agent_words[@]+"${agent_words[@]}"}; do
  if ! [[ $a =~ $NAME_RE ]]; then
    bad+=("'$a'")
  elif [[ $a == admin ]]; then
    # secret/vaultgram/mtproto/admin/ holds the admins' MTProto secrets; an agent
    # named "admin" would be granted all of them.
    bad+=("'admin' (reserved: mtproto/admin/ is the admins' owner id)")
  elif [[ " ${AGENTS[*]:-} " != *" $a "* ]]; then
    AGENTS+=("$a")
  fi
done
((${#bad[@]} == 0)) || die "invalid agent id(s) in VAULTGRAM_AGENTS: ${bad[*]}; an agent id must match $NAME_RE. Nothing was changed."

# ---------------------------------------------------------------------------
# Render every policy into a temporary directory (still nothing written).
# ---------------------------------------------------------------------------

TMP=$(mktemp -d "${TMPDIR:-/tmp}/vaultgram-policies.XXXXXX")
trap 'rm -rf -- "$TMP"' EXIT

# Policies are written for the default layout (secret/, transit/, key
# vaultgram). Only the prefixes of `path "..."` lines are rewritten; `t` stops
# after the first rewrite of a line so mount names cannot be rewritten twice.
render() { # render SRC DST [AGENT]
  local src=$1 dst=$2 agent=${3:-}
  if [[ -n $agent ]]; then
    sed "s/{{agent}}/$agent/g" "$src"
  else
    cat "$src"
  fi | sed -E \
    -e "s#^([[:space:]]*path[[:space:]]+\")transit/(encrypt|decrypt|rewrap|datakey/plaintext|datakey/wrapped|keys)/vaultgram\"#\\1$TRANSIT_MOUNT/\\2/$TRANSIT_KEY\"#" \
    -e t \
    -e "s#^([[:space:]]*path[[:space:]]+\")transit/#\\1$TRANSIT_MOUNT/#" \
    -e t \
    -e "s#^([[:space:]]*path[[:space:]]+\")secret/#\\1$KV_MOUNT/#" >"$dst"
  if grep -q '{{agent}}' "$dst"; then
    die "internal: unrendered {{agent}} placeholder in $dst"
  fi
}

POLICIES=()
shopt -s nullglob
for f in "$SCRIPT_DIR"/*.hcl; do
  name=$(basename -- "$f" .hcl)
  [[ $name =~ $NAME_RE ]] || die "policy file name '$name.hcl' is not a valid policy name"
  render "$f" "$TMP/$name.hcl"
  POLICIES+=("$name")
done
shopt -u nullglob
((${#POLICIES[@]} > 0)) || die "no *.hcl policy files found in $SCRIPT_DIR"
for want in vaultgram-broker vaultgram-op-admin vault-operator; do
  [[ " ${POLICIES[*]} " == *" $want "* ]] || die "missing $SCRIPT_DIR/$want.hcl"
done

TEMPLATE=$SCRIPT_DIR/templates/vaultgram-op-agent.hcl.tmpl
[[ -r $TEMPLATE ]] || die "missing $TEMPLATE"
for a in ${AGENTS[@]+"${AGENTS[@]}"}; do
  render "$TEMPLATE" "$TMP/vaultgram-op-agent-$a.hcl" "$a"
  POLICIES+=("vaultgram-op-agent-$a")
done

# ---------------------------------------------------------------------------
# Phase 2: read Vault's current state and refuse conflicts before writing.
# ---------------------------------------------------------------------------

# mount_entry JSON KEY -> "TYPE VERSION" of mount KEY ("secret/"), or "" if absent.
mount_entry() {
  if [[ $JSON == jq ]]; then
    jq -r --arg k "$2" '.[$k] // empty | "\(.type) \(.options.version // "")"' <<<"$1"
  else
    python3 -c '
import json, sys
m = json.load(sys.stdin).get(sys.argv[1])
if m is not None:
    print("%s %s" % (m.get("type", ""), (m.get("options") or {}).get("version", "")))
' "$2" <<<"$1"
  fi
}

# json_field JSON FIELD -> .data.FIELD
json_field() {
  if [[ $JSON == jq ]]; then
    jq -r --arg f "$2" '.data[$f] // empty' <<<"$1"
  else
    python3 -c '
import json, sys
v = (json.load(sys.stdin).get("data") or {}).get(sys.argv[1])
print("" if v is None else v)
' "$2" <<<"$1"
  fi
}

log "using $CLI against $VAULT_ADDR"
secrets_json=$("$CLI" secrets list -format=json) || die "cannot list secrets engines (is VAULT_ADDR reachable and does the token have read on sys/mounts?)"
auth_json=$("$CLI" auth list -format=json) || die "cannot list auth methods (does the token have read on sys/auth?)"

# check_mount JSON PATH WANT-TYPE -> prints "absent" or "present"; dies on a conflict.
check_mount() {
  local entry type version
  entry=$(mount_entry "$1" "$2/")
  if [[ -z $entry ]]; then
    echo absent
    return
  fi
  type=${entry%% *} version=${entry#* }
  case $3 in
    kv-v2)
      if [[ $type == kv-v2 || ($type == kv && $version == 2) ]]; then
        echo present
      elif [[ $type == kv || $type == generic ]]; then
        die "$2/ is a KV version 1 mount; vaultgram needs kv-v2. Upgrade it deliberately ('$CLI kv enable-versioning $2/', irreversible) or set VAULTGRAM_KV_MOUNT, then re-run"
      else
        die "$2/ is already mounted as '$type', not kv-v2; set VAULTGRAM_KV_MOUNT to another path"
      fi
      ;;
    *)
      [[ $type == "$3" ]] || die "$2/ is already mounted as '$type', not '$3'"
      echo present
      ;;
  esac
}

kv_state=$(check_mount "$secrets_json" "$KV_MOUNT" kv-v2)
transit_state=$(check_mount "$secrets_json" "$TRANSIT_MOUNT" transit)
totp_state=$(check_mount "$secrets_json" "$TOTP_MOUNT" totp)
approle_state=$(check_mount "$auth_json" "$APPROLE_MOUNT" approle)
k8s_state=absent
[[ -z $K8S_HOST ]] || k8s_state=$(check_mount "$auth_json" "$K8S_MOUNT" kubernetes)

# ---------------------------------------------------------------------------
# Phase 3: write.
# ---------------------------------------------------------------------------

for p in "${POLICIES[@]}"; do
  current=$("$CLI" policy read "$p" 2>/dev/null) || current=""
  if [[ -n $current && $current == "$(cat -- "$TMP/$p.hcl")" ]]; then
    log "policy $p unchanged"
  else
    "$CLI" policy write "$p" "$TMP/$p.hcl" >/dev/null || die "writing policy $p failed"
    log "policy $p written"
  fi
done

if [[ ${VAULTGRAM_PRUNE_AGENTS:-0} == 1 ]]; then
  existing=$("$CLI" policy list) || die "cannot list policies"
  while IFS= read -r p; do
    [[ $p == vaultgram-op-agent-* ]] || continue
    [[ " ${POLICIES[*]} " == *" $p "* ]] && continue
    "$CLI" policy delete "$p" >/dev/null || die "deleting policy $p failed"
    log "policy $p deleted (agent not in VAULTGRAM_AGENTS)"
  done <<<"$existing"
fi

enable_secrets() { # enable_secrets STATE PATH TYPE DESCRIPTION
  if [[ $1 == present ]]; then
    log "secrets engine $2/ ($3) already enabled"
  else
    "$CLI" secrets enable -path="$2" -description="$4" "$3" >/dev/null || die "enabling $3 at $2/ failed"
    log "secrets engine $2/ ($3) enabled"
  fi
}
enable_secrets "$kv_state" "$KV_MOUNT" kv-v2 "vaultgram secrets"
enable_secrets "$transit_state" "$TRANSIT_MOUNT" transit "vaultgram encryption"
enable_secrets "$totp_state" "$TOTP_MOUNT" totp "vaultgram approval codes"

# History policy, explicit: Vault's default (10 versions) would make every
# eleventh write a silent destroy. Written only when it differs.
KV_MAX_VERSIONS=${VAULTGRAM_KV_MAX_VERSIONS:-100}
[[ $KV_MAX_VERSIONS =~ ^[1-9][0-9]{0,5}$ ]] || die "VAULTGRAM_KV_MAX_VERSIONS must be a number from 1 to 999999"
kv_config=$("$CLI" read -format=json "$KV_MOUNT/config") || die "cannot read $KV_MOUNT/config"
if [[ $(json_field "$kv_config" max_versions) == "$KV_MAX_VERSIONS" && $(json_field "$kv_config" delete_version_after) =~ ^0s?$ ]]; then
  log "$KV_MOUNT/config already keeps $KV_MAX_VERSIONS versions, none deleted by age"
else
  "$CLI" write "$KV_MOUNT/config" max_versions="$KV_MAX_VERSIONS" delete_version_after=0s >/dev/null ||
    die "writing $KV_MOUNT/config failed"
  log "$KV_MOUNT/config: max_versions=$KV_MAX_VERSIONS, delete_version_after=0s"
fi

if [[ $approle_state == present ]]; then
  log "auth method $APPROLE_MOUNT/ (approle) already enabled"
else
  "$CLI" auth enable -path="$APPROLE_MOUNT" -description="vaultgram broker login" approle >/dev/null ||
    die "enabling approle at $APPROLE_MOUNT/ failed"
  log "auth method $APPROLE_MOUNT/ (approle) enabled"
fi

# Transit key: created only if absent, never re-created or re-configured.
key_path="$TRANSIT_MOUNT/keys/$TRANSIT_KEY"
if key_json=$("$CLI" read -format=json "$key_path" 2>"$TMP/key.err"); then
  key_type=$(json_field "$key_json" type)
  if [[ $key_type == aes256-gcm96 ]]; then
    log "transit key $key_path already exists"
  else
    log "transit key $key_path already exists (type $key_type, not aes256-gcm96; left as is)"
  fi
elif grep -q 'No value found' "$TMP/key.err"; then
  "$CLI" write -f "$key_path" type=aes256-gcm96 >/dev/null || die "creating transit key $key_path failed"
  log "transit key $key_path (aes256-gcm96) created"
else
  cat "$TMP/key.err" >&2
  die "cannot read transit key $key_path"
fi

# AppRole role for the broker. Every field is sent, so the role ends up exactly
# as defined here (CIDRs are cleared when VAULTGRAM_APPROLE_CIDRS is empty).
# A periodic token has no max TTL: the broker renews it at 2/3 of the period
# and never needs its (single-use) secret_id again.
if [[ $TOKEN_PERIOD != 0 && $TOKEN_PERIOD != 0s ]]; then
  TOKEN_TTL=0 TOKEN_MAX_TTL=0
fi
"$CLI" write "auth/$APPROLE_MOUNT/role/$APPROLE_ROLE" \
  token_policies=vaultgram-broker \
  token_type=service \
  token_ttl="$TOKEN_TTL" \
  token_max_ttl="$TOKEN_MAX_TTL" \
  token_period="$TOKEN_PERIOD" \
  token_num_uses=0 \
  token_no_default_policy=false \
  token_bound_cidrs="$CIDRS" \
  bind_secret_id=true \
  secret_id_ttl="$SECRET_ID_TTL" \
  secret_id_num_uses="$SECRET_ID_NUM_USES" \
  secret_id_bound_cidrs="$CIDRS" >/dev/null || die "writing auth/$APPROLE_MOUNT/role/$APPROLE_ROLE failed"
log "approle role auth/$APPROLE_MOUNT/role/$APPROLE_ROLE written (policy vaultgram-broker, secret_id ttl $SECRET_ID_TTL x$SECRET_ID_NUM_USES, token period $TOKEN_PERIOD ttl $TOKEN_TTL max $TOKEN_MAX_TTL${CIDRS:+, bound to $CIDRS})"

# Kubernetes auth: the broker's pod logs in with its projected token
# (audience $K8S_AUDIENCE); Vault has the API server review it (TokenReview).
if [[ -n $K8S_HOST ]]; then
  if [[ $k8s_state == present ]]; then
    log "auth method $K8S_MOUNT/ (kubernetes) already enabled"
  else
    "$CLI" auth enable -path="$K8S_MOUNT" -description="vaultgram broker login (pod)" kubernetes >/dev/null ||
      die "enabling kubernetes at $K8S_MOUNT/ failed"
    log "auth method $K8S_MOUNT/ (kubernetes) enabled"
  fi
  k8s_args=(kubernetes_host="$K8S_HOST")
  [[ -z ${VAULTGRAM_K8S_CA_CERT:-} ]] || k8s_args+=(kubernetes_ca_cert="@$VAULTGRAM_K8S_CA_CERT")
  [[ -z ${VAULTGRAM_K8S_REVIEWER_JWT_FILE:-} ]] || k8s_args+=(token_reviewer_jwt="@$VAULTGRAM_K8S_REVIEWER_JWT_FILE")
  # Outside the cluster there is no local CA/token to fall back to.
  if [[ -n ${VAULTGRAM_K8S_CA_CERT:-} && -n ${VAULTGRAM_K8S_REVIEWER_JWT_FILE:-} ]]; then
    k8s_args+=(disable_local_ca_jwt=true)
  fi
  "$CLI" write "auth/$K8S_MOUNT/config" "${k8s_args[@]}" >/dev/null || die "writing auth/$K8S_MOUNT/config failed"
  if [[ $K8S_TOKEN_PERIOD != 0 && $K8S_TOKEN_PERIOD != 0s ]]; then
    K8S_TOKEN_TTL=0 K8S_TOKEN_MAX_TTL=0
  fi
  "$CLI" write "auth/$K8S_MOUNT/role/$APPROLE_ROLE" \
    bound_service_account_names="$K8S_SA" \
    bound_service_account_namespaces="$K8S_NAMESPACE" \
    audience="$K8S_AUDIENCE" \
    token_policies=vaultgram-broker \
    token_type=service \
    token_ttl="$K8S_TOKEN_TTL" \
    token_max_ttl="$K8S_TOKEN_MAX_TTL" \
    token_period="$K8S_TOKEN_PERIOD" \
    token_num_uses=0 \
    token_no_default_policy=false >/dev/null || die "writing auth/$K8S_MOUNT/role/$APPROLE_ROLE failed"
  log "kubernetes role auth/$K8S_MOUNT/role/$APPROLE_ROLE written ($K8S_NAMESPACE/$K8S_SA, audience $K8S_AUDIENCE, policy vaultgram-broker, token period $K8S_TOKEN_PERIOD ttl $K8S_TOKEN_TTL max $K8S_TOKEN_MAX_TTL; API $K8S_HOST)"
fi

# Token role through which the broker mints operators' child tokens. Both
# allowed policies are given as globs and allowed_policies stays EMPTY on
# purpose: with a non-empty allowed_policies, a create request that names no
# policy gets all of them (an admin token by mistake); with globs only it gets
# "default" alone. "vaultgram-op-admin" has no wildcard and matches only
# itself. The broker's own policy, vault-operator and root are refused even if
# a glob ever matched them.
"$CLI" write "auth/token/roles/$TOKEN_ROLE" \
  allowed_policies="" \
  allowed_policies_glob='vaultgram-op-admin,vaultgram-op-agent-*' \
  disallowed_policies=root,vaultgram-broker,vault-operator \
  disallowed_policies_glob="" \
  orphan=false \
  renewable=true \
  token_explicit_max_ttl="$OPERATOR_MAX_TTL" \
  token_period=0 \
  token_num_uses=0 \
  token_type=service \
  token_no_default_policy=false >/dev/null || die "writing auth/token/roles/$TOKEN_ROLE failed"
# A server that does not know allowed_policies_glob ignores it with a warning;
# the role would then refuse every operator policy. Say so instead.
role_json=$("$CLI" read -format=json "auth/token/roles/$TOKEN_ROLE") || die "cannot read back auth/token/roles/$TOKEN_ROLE"
if [[ $JSON == jq ]]; then
  globs=$(jq -r '.data.allowed_policies_glob // [] | join(",")' <<<"$role_json")
else
  globs=$(python3 -c 'import json,sys; print(",".join(json.load(sys.stdin)["data"].get("allowed_policies_glob") or []))' <<<"$role_json")
fi
[[ $globs == 'vaultgram-op-admin,vaultgram-op-agent-*' ]] ||
  die "auth/token/roles/$TOKEN_ROLE: the server did not keep allowed_policies_glob (got '$globs'); it needs a Vault/OpenBao version with token-role policy globs"
log "token role auth/token/roles/$TOKEN_ROLE written (vaultgram-op-admin, vaultgram-op-agent-*; explicit max ttl $OPERATOR_MAX_TTL)"

log "done: ${#POLICIES[@]} policies, agents: ${AGENTS[*]:-(none)}"
