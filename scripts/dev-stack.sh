#!/usr/bin/env bash
# Local dev stack: three etcd members and one Vault-API server on loopback,
# all TLS, bootstrapped with the same scripts as production, then the
# vaultgram console. The server is OpenBao on raft, or with
# VAULTGRAM_DEV_SERVER=vault HashiCorp Vault on storage "etcd" on the three
# members (built by vault_binary in scripts/lib.sh).
#
#   scripts/dev-stack.sh [up]   start (or keep) the stack, open the console
#   scripts/dev-stack.sh start  the same without opening the console
#   scripts/dev-stack.sh down   stop everything it started
#   scripts/dev-stack.sh status what runs, and the environment to use it
#   scripts/dev-stack.sh env    `eval "$(scripts/dev-stack.sh env)"` sets
#                               VAULT_ADDR/VAULT_CACERT/VAULT_TOKEN/ETCDCTL_*
#
# State (certificates, data, logs, the unseal key and root token, mode 0600)
# lives in $VAULTGRAM_DEV_DIR (default: .dev-stack/ in the repository).
# Ports: VAULTGRAM_DEV_ETCD_PORTS (three client ports; peer = client + 1),
# VAULTGRAM_DEV_BAO_PORT (cluster port = + 1). VAULTGRAM_BIN selects a built
# binary instead of `cargo run`; VAULTGRAM_DEV_AUDIT_LOG the audit file.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$ROOT/scripts/lib.sh"

STATE=${VAULTGRAM_DEV_DIR:-$ROOT/.dev-stack}
read -r -a ETCD_PORTS <<<"${VAULTGRAM_DEV_ETCD_PORTS:-12379 22379 32379}"
SERVER=${VAULTGRAM_DEV_SERVER:-openbao}
case $SERVER in
  openbao) SERVER_NAME=OpenBao ;;
  vault) SERVER_NAME="HashiCorp Vault" ;;
  *) echo "dev-stack: VAULTGRAM_DEV_SERVER=$SERVER: expected openbao or vault" >&2; exit 2 ;;
esac
BAO_PORT=${VAULTGRAM_DEV_BAO_PORT:-18200}
BAO_CLUSTER_PORT=$((BAO_PORT + 1))
TLS=$STATE/tls
# The audit device's file: part of the server's stored state, so a restored
# server must find the same path (VAULTGRAM_DEV_AUDIT_LOG; restore drill).
AUDIT_LOG=${VAULTGRAM_DEV_AUDIT_LOG:-$STATE/bao-audit.log}
ADMIN=alice
AGENT=bob

say() { echo "dev-stack: $*" >&2; }
die() { echo "dev-stack: $*" >&2; exit 1; }

endpoints() {
  local p out=()
  for p in "${ETCD_PORTS[@]}"; do out+=("https://127.0.0.1:$p"); done
  (IFS=,; echo "${out[*]}")
}

print_env() {
  cat <<ENV
export VAULT_ADDR=https://127.0.0.1:$BAO_PORT
export VAULT_CACERT=$TLS/ca.pem
export VAULT_TOKEN=\$(cat $STATE/root-token)
export ETCDCTL_API=3
export ETCDCTL_ENDPOINTS=$(endpoints)
export ETCDCTL_CACERT=$TLS/ca.pem
export ETCDCTL_CERT=$TLS/root.pem
export ETCDCTL_KEY=$TLS/root-key.pem
export ETCDCTL_USER=root:\$(cat $STATE/etcd-root-password)
ENV
}

# ---- processes ---------------------------------------------------------
running() { # pidfile
  local pid
  [[ -f $1 ]] || return 1
  pid=$(<"$1")
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null
}

start_bg() { # name logfile cmd...
  local name=$1 log=$2; shift 2
  # setsid: the stack outlives the shell that started it, and `down` can
  # signal each process by its pid file.
  setsid "$@" >>"$log" 2>&1 </dev/null &
  echo $! >"$STATE/$name.pid"
}

stop_one() { # name
  local pidfile=$STATE/$1.pid pid
  running "$pidfile" || { rm -f "$pidfile"; return 0; }
  pid=$(<"$pidfile")
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    say "$1 ignored SIGTERM for 10 s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
  say "$1 stopped"
}

port_listening() { ss -Hltn "sport = :$1" | grep -q .; }

# ---- certificates ------------------------------------------------------
mkcert() { # file-stem CN
  local stem=$1 cn=$2
  [[ -f $TLS/$stem.pem ]] && return 0
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$TLS/$stem-key.pem" -out "$TLS/$stem.csr" -subj "/CN=$cn" 2>/dev/null
  openssl x509 -req -in "$TLS/$stem.csr" -CA "$TLS/ca.pem" -CAkey "$TLS/ca-key.pem" \
    -CAcreateserial -days 90 -out "$TLS/$stem.pem" 2>/dev/null -extfile <(printf '%s\n' \
      "subjectAltName=IP:127.0.0.1,DNS:localhost" \
      "basicConstraints=CA:FALSE" \
      "keyUsage=critical,digitalSignature,keyEncipherment" \
      "extendedKeyUsage=serverAuth,clientAuth")
  rm -f "$TLS/$stem.csr"
  chmod 600 "$TLS/$stem-key.pem"
}

make_pki() {
  mkdir -p "$TLS"
  chmod 700 "$STATE" "$TLS"
  if [[ ! -f $TLS/ca.pem ]]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
      -keyout "$TLS/ca-key.pem" -out "$TLS/ca.pem" -days 365 \
      -subj "/CN=vaultgram dev CA" \
      -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    chmod 600 "$TLS/ca-key.pem"
    say "CA created"
  fi
  local i
  for i in 1 2 3; do mkcert "etcd-$i" "etcd-$i"; done
  # etcd takes the client certificate's CN as the user name.
  mkcert root root
  mkcert vaultgram vaultgram
  mkcert vault vault
  mkcert bao localhost
  mkcert server localhost
}

secret_file() { # path: random secret, created once
  [[ -s $1 ]] && return 0
  (umask 077; openssl rand -hex 24 >"$1")
}

# ---- etcd --------------------------------------------------------------
etcdctl_admin() {
  ETCDCTL_API=3 ETCDCTL_ENDPOINTS=$(endpoints) ETCDCTL_CACERT=$TLS/ca.pem \
    ETCDCTL_CERT=$TLS/root.pem ETCDCTL_KEY=$TLS/root-key.pem \
    etcdctl --command-timeout=5s --dial-timeout=3s "$@"
}

start_etcd() {
  local i name port peer cluster="" state=new
  for i in 1 2 3; do
    cluster+="etcd-$i=https://127.0.0.1:$((ETCD_PORTS[i - 1] + 1)),"
  done
  cluster=${cluster%,}
  [[ -d $STATE/etcd-1 ]] && state=existing
  for i in 1 2 3; do
    name=etcd-$i port=${ETCD_PORTS[i - 1]} peer=$((port + 1))
    if running "$STATE/$name.pid"; then
      say "$name already running (client port $port)"
      continue
    fi
    if port_listening "$port" || port_listening "$peer"; then
      die "port $port or $peer is taken by another process; set VAULTGRAM_DEV_ETCD_PORTS"
    fi
    ETCD_NAME=$name ETCD_DATA_DIR=$STATE/$name ETCD_HOST=127.0.0.1 \
      ETCD_CLIENT_PORT=$port ETCD_PEER_PORT=$peer ETCD_INITIAL_CLUSTER=$cluster \
      ETCD_CLUSTER_STATE=$state ETCD_CLUSTER_TOKEN=vaultgram-dev ETCD_TLS_DIR=$TLS \
      render "$ROOT/etcd/member.yml.tmpl" ETCD_NAME ETCD_DATA_DIR ETCD_HOST \
      ETCD_CLIENT_PORT ETCD_PEER_PORT ETCD_INITIAL_CLUSTER ETCD_CLUSTER_STATE \
      ETCD_CLUSTER_TOKEN ETCD_TLS_DIR >"$STATE/$name.yml"
    start_bg "$name" "$STATE/$name.log" etcd --config-file "$STATE/$name.yml"
    say "$name started (client port $port)"
  done

  for _ in $(seq 1 60); do
    if etcdctl_admin endpoint health --cluster >/dev/null 2>&1 ||
       ETCDCTL_USER="root:$(<"$STATE/etcd-root-password")" etcdctl_admin endpoint health >/dev/null 2>&1; then
      say "etcd cluster healthy"
      return 0
    fi
    sleep 0.5
  done
  die "etcd did not become healthy; see $STATE/etcd-*.log"
}

bootstrap_etcd() {
  ETCDCTL_API=3 ETCDCTL_ENDPOINTS=$(endpoints) ETCDCTL_CACERT=$TLS/ca.pem \
    ETCDCTL_CERT=$TLS/root.pem ETCDCTL_KEY=$TLS/root-key.pem \
    ETCD_ROOT_PASSWORD_FILE=$STATE/etcd-root-password \
    ETCD_VAULTGRAM_PASSWORD_FILE=$STATE/etcd-vaultgram-password \
    ETCD_VAULT_PASSWORD_FILE=$STATE/etcd-vault-password \
    "$ROOT/etcd/bootstrap-rbac.sh"
}

# ---- OpenBao -----------------------------------------------------------
BAO=""
bao_cli() {
  VAULT_ADDR=https://127.0.0.1:$BAO_PORT VAULT_CACERT=$TLS/ca.pem "$BAO" "$@"
}

start_bao() {
  # One stack, one kind of server: its state cannot be read by the other.
  if [[ -s $STATE/server && $(<"$STATE/server") != "$SERVER" ]]; then
    die "$STATE holds a $(<"$STATE/server") stack; run 'scripts/dev-stack.sh down' and remove $STATE to switch to $SERVER"
  fi
  echo "$SERVER" >"$STATE/server"
  if [[ $SERVER == vault ]]; then
    BAO=$(vault_binary) || die "HashiCorp Vault could not be built (vault_binary in scripts/lib.sh)"
  else
    BAO=$(bao_binary) || die "OpenBao binary not found: run ensure_stack_tools (scripts/lib.sh)"
  fi
  mkdir -p "$STATE/bao-data"
  chmod 700 "$STATE/bao-data"
  if running "$STATE/bao.pid"; then
    say "$SERVER_NAME already running (port $BAO_PORT)"
  else
    if port_listening "$BAO_PORT" || port_listening "$BAO_CLUSTER_PORT"; then
      die "port $BAO_PORT or $BAO_CLUSTER_PORT is taken; set VAULTGRAM_DEV_BAO_PORT"
    fi
    if [[ $SERVER == vault ]]; then
      VAULT_PORT=$BAO_PORT VAULT_CLUSTER_PORT=$BAO_CLUSTER_PORT ETCD_ENDPOINTS=$(endpoints) TLS_DIR=$TLS \
        render "$ROOT/scripts/vault-etcd.hcl.tmpl" VAULT_PORT VAULT_CLUSTER_PORT ETCD_ENDPOINTS \
        TLS_DIR >"$STATE/bao.hcl"
      # The etcd user's password reaches Vault in its environment only.
      (
        ETCD_PASSWORD=$(<"$STATE/etcd-vault-password")
        export ETCD_PASSWORD
        start_bg bao "$STATE/bao.log" "$BAO" server -config="$STATE/bao.hcl"
      )
    else
      BAO_DATA_DIR=$STATE/bao-data BAO_TLS_DIR=$TLS BAO_AUDIT_LOG=$AUDIT_LOG \
        BAO_PORT=$BAO_PORT BAO_CLUSTER_PORT=$BAO_CLUSTER_PORT \
        render "$ROOT/scripts/openbao.hcl.tmpl" BAO_DATA_DIR BAO_TLS_DIR BAO_AUDIT_LOG \
        BAO_PORT BAO_CLUSTER_PORT >"$STATE/bao.hcl"
      start_bg bao "$STATE/bao.log" "$BAO" server -config="$STATE/bao.hcl"
    fi
    say "$SERVER_NAME started (port $BAO_PORT)"
  fi
  local code
  for _ in $(seq 1 60); do
    code=0
    bao_cli status >/dev/null 2>&1 || code=$?
    # bao status: 0 unsealed, 2 sealed, 1 error (not up yet)
    [[ $code != 1 ]] && break
    sleep 0.5
  done
  [[ $code != 1 ]] || die "$SERVER_NAME did not start; see $STATE/bao.log"
  # `bao status` exits 2 while sealed: read its JSON, not its exit code.
  local st
  st=$(bao_cli status -format=json 2>/dev/null || true)
  if ! grep -q '"initialized": true' <<<"$st"; then
    (umask 077; bao_cli operator init -key-shares=1 -key-threshold=1 -format=json >"$STATE/bao-init.json")
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); open(sys.argv[2],"w").write(d["unseal_keys_b64"][0]); open(sys.argv[3],"w").write(d["root_token"])' \
      "$STATE/bao-init.json" "$STATE/unseal-key" "$STATE/root-token"
    chmod 600 "$STATE/unseal-key" "$STATE/root-token"
    say "$SERVER_NAME initialised (1 key share; unseal key and root token in $STATE, mode 0600)"
  fi
  st=$(bao_cli status -format=json 2>/dev/null || true)
  if grep -q '"sealed": true' <<<"$st"; then
    # The key on stdin (`key=-`), never as an argument: every local user can
    # read a process's command line. (`operator unseal` reads only a tty.)
    bao_cli write sys/unseal key=- <"$STATE/unseal-key" >/dev/null
    say "$SERVER_NAME unsealed"
  fi
  for _ in $(seq 1 60); do
    if VAULT_TOKEN=$(<"$STATE/root-token") bao_cli token lookup >/dev/null 2>&1; then
      # HashiCorp Vault enables audit devices through the API only.
      if [[ $SERVER == vault ]] &&
        ! VAULT_TOKEN=$(<"$STATE/root-token") bao_cli audit list 2>/dev/null | grep -q '^file/'; then
        VAULT_TOKEN=$(<"$STATE/root-token") bao_cli audit enable file \
          file_path="$AUDIT_LOG" mode=0600 >/dev/null
        say "audit device file/ enabled ($AUDIT_LOG)"
      fi
      return 0
    fi
    sleep 0.5
  done
  die "$SERVER_NAME is unsealed but does not answer; see $STATE/bao.log"
}

configure_bao() {
  VAULT_ADDR=https://127.0.0.1:$BAO_PORT VAULT_CACERT=$TLS/ca.pem \
    VAULT_TOKEN=$(<"$STATE/root-token") VAULT_CLI=$BAO VAULTGRAM_AGENTS=$AGENT \
    "$ROOT/vault-policies/apply.sh"
  # Example app keys, as an operator would put them with the Vault CLI: the
  # api_hash on stdin (`api_hash=-`), not as an argument that `ps` shows.
  if ! VAULT_TOKEN=$(<"$STATE/root-token") bao_cli kv get secret/telegram >/dev/null 2>&1; then
    printf '%s' abcdef1234567890 | VAULT_TOKEN=$(<"$STATE/root-token") bao_cli kv put secret/telegram \
      api_id=123456 api_hash=- >/dev/null
    say "seeded secret/telegram with example api_id/api_hash"
  fi
  # The broker's own token (dev: token auth; production uses AppRole or
  # Kubernetes auth). Re-used while it is valid.
  if [[ ! -s $STATE/broker-token ]] || ! VAULT_TOKEN=$(<"$STATE/broker-token") bao_cli token lookup >/dev/null 2>&1; then
    (umask 077; VAULT_TOKEN=$(<"$STATE/root-token") bao_cli token create \
      -policy=vaultgram-broker -period=24h -display-name=vaultgram-dev -field=token >"$STATE/broker-token")
    say "broker token created (policy vaultgram-broker)"
  fi
}

write_config() {
  local me
  me=$(id -un)
  cat >"$STATE/vaultgram.toml" <<TOML
# Written by scripts/dev-stack.sh for the local dev stack.
[vault]
addr = "https://127.0.0.1:$BAO_PORT"
ca_cert = "$TLS/ca.pem"

[vault.auth]
method = "token"
token_file = "$STATE/broker-token"

[etcd]
endpoints = [$(for p in "${ETCD_PORTS[@]}"; do printf '"https://127.0.0.1:%s", ' "$p"; done | sed 's/, $//')]
ca_cert = "$TLS/ca.pem"
cert = "$TLS/vaultgram.pem"
key = "$TLS/vaultgram-key.pem"
user = "vaultgram"
password_file = "$STATE/etcd-vaultgram-password"
prefix = "/vaultgram/"
lease_ttl_secs = 10

[ipc]
socket = "$STATE/vaultgram.sock"

[http]
listen = "127.0.0.1:$((BAO_PORT + 10))"

[[operators]]
name = "$ADMIN"
telegram_id = 111111
role = "admin"
unix_user = "$me"

[[operators]]
name = "$AGENT"
telegram_id = 222222
role = "agent"
agent = "$AGENT"
TOML
}

vaultgram() {
  if [[ -n ${VAULTGRAM_BIN:-} ]]; then
    "$VAULTGRAM_BIN" "$@"
  else
    cargo run --quiet --manifest-path "$ROOT/Cargo.toml" --bin vaultgram -- "$@"
  fi
}

up() {
  ensure_stack_tools
  mkdir -p "$STATE"
  chmod 700 "$STATE"
  make_pki
  secret_file "$STATE/etcd-root-password"
  secret_file "$STATE/etcd-vaultgram-password"
  secret_file "$STATE/etcd-vault-password"
  start_etcd
  bootstrap_etcd
  start_bao
  configure_bao
  write_config
  vaultgram --config "$STATE/vaultgram.toml" check-config >/dev/null ||
    die "the written config does not validate"
  cat >&2 <<MSG
dev-stack: ready.
  config:  $STATE/vaultgram.toml
  env:     eval "\$(scripts/dev-stack.sh env)"   (VAULT_*, ETCDCTL_* for bao/etcdctl)
  stop:    scripts/dev-stack.sh down
MSG
}

down() {
  local name p left=0
  for name in bao etcd-3 etcd-2 etcd-1; do stop_one "$name"; done
  for p in "${ETCD_PORTS[@]}" $((ETCD_PORTS[0] + 1)) $((ETCD_PORTS[1] + 1)) \
           $((ETCD_PORTS[2] + 1)) "$BAO_PORT" "$BAO_CLUSTER_PORT"; do
    if port_listening "$p"; then say "port $p is still listening"; left=1; fi
  done
  ((left == 0)) || exit 1
  say "stopped; nothing listens on the stack's ports (state kept in $STATE; rm -rf it to start afresh)"
}

status() {
  local name
  for name in etcd-1 etcd-2 etcd-3 bao; do
    if running "$STATE/$name.pid"; then echo "$name: running (pid $(<"$STATE/$name.pid"))"
    else echo "$name: stopped"; fi
  done
}

case ${1:-up} in
  up)
    up
    say "opening: vaultgram console --as $ADMIN (one command per line; Ctrl-D ends)"
    vaultgram --config "$STATE/vaultgram.toml" console --as "$ADMIN"
    ;;
  start) up ;;
  down | stop) down ;;
  status) status ;;
  env) print_env ;;
  *) die "usage: $0 [up|start|down|status|env]" ;;
esac
