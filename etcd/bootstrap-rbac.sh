#!/usr/bin/env bash
# Bootstraps etcd RBAC for vaultgram (SPEC.md "Bootstrap scripts").
#
# Reads the standard etcdctl variables ETCDCTL_ENDPOINTS, ETCDCTL_CACERT,
# ETCDCTL_CERT, ETCDCTL_KEY and three password files:
#   ETCD_ROOT_PASSWORD_FILE       the `root` user
#   ETCD_VAULTGRAM_PASSWORD_FILE  the `vaultgram` user: read-write on /vaultgram/ only
#   ETCD_VAULT_PASSWORD_FILE      the `vault` user: read-write on /vault/ only
# then enables authentication. Safe to run again: existing users and roles are
# kept (passwords are re-set from the files), grants are re-applied.
#
# Passwords go to etcdctl on stdin (`--interactive=false`) or through
# ETCDCTL_USER in the environment, never on a command line that `ps` shows.
set -euo pipefail

die() { echo "bootstrap-rbac: $*" >&2; exit 1; }
say() { echo "bootstrap-rbac: $*" >&2; }

for v in ETCDCTL_ENDPOINTS ETCDCTL_CACERT ETCDCTL_CERT ETCDCTL_KEY \
         ETCD_ROOT_PASSWORD_FILE ETCD_VAULTGRAM_PASSWORD_FILE ETCD_VAULT_PASSWORD_FILE; do
  [[ -n "${!v:-}" ]] || die "$v is not set"
done
for v in ETCDCTL_CACERT ETCDCTL_CERT ETCDCTL_KEY \
         ETCD_ROOT_PASSWORD_FILE ETCD_VAULTGRAM_PASSWORD_FILE ETCD_VAULT_PASSWORD_FILE; do
  [[ -r "${!v}" ]] || die "$v: cannot read ${!v}"
done
# etcdctl aborts when a variable and its flag are both set; we only use
# variables, and we set ETCDCTL_USER ourselves per call.
unset ETCDCTL_USER ETCDCTL_PASSWORD
export ETCDCTL_API=3

read_pw() {
  local pw
  pw=$(<"$1")
  pw=${pw%$'\n'}
  [[ -n "$pw" ]] || die "password file $1 is empty"
  [[ "$pw" != *:* ]] || die "password in $1 must not contain ':' (etcdctl user:password syntax)"
  printf '%s' "$pw"
}
ROOT_PW=$(read_pw "$ETCD_ROOT_PASSWORD_FILE")
VAULTGRAM_PW=$(read_pw "$ETCD_VAULTGRAM_PASSWORD_FILE")
VAULT_PW=$(read_pw "$ETCD_VAULT_PASSWORD_FILE")

# Every call is bounded: an etcdctl without --command-timeout can hang for
# minutes when the cluster has no quorum.
AS_ROOT=0
ctl() {
  if [[ $AS_ROOT == 1 ]]; then
    ETCDCTL_USER="root:$ROOT_PW" etcdctl --command-timeout=10s --dial-timeout=5s "$@"
  else
    etcdctl --command-timeout=10s --dial-timeout=5s "$@"
  fi
}

# Auth already enabled (an earlier run)? Then every call must carry root's
# password. Otherwise the certificate alone is enough.
if AS_ROOT=1 ctl user get root >/dev/null 2>&1; then
  AS_ROOT=1
  say "auth is already enabled; continuing as root"
elif ! ctl endpoint health >/dev/null 2>&1 && ! ctl member list >/dev/null 2>&1; then
  die "cannot reach etcd at $ETCDCTL_ENDPOINTS with the given certificate"
fi

ensure_user() { # name password
  if ctl user get "$1" >/dev/null 2>&1; then
    printf '%s\n' "$2" | ctl user passwd "$1" --interactive=false >/dev/null
    say "user $1 exists (password re-set from its file)"
  else
    printf '%s\n' "$2" | ctl user add "$1" --interactive=false >/dev/null
    say "user $1 created"
  fi
}
ensure_role() { # name
  if ctl role get "$1" >/dev/null 2>&1; then
    say "role $1 exists"
  else
    ctl role add "$1" >/dev/null
    say "role $1 created"
  fi
}

ensure_user root "$ROOT_PW"
ctl user grant-role root root >/dev/null 2>&1 || true # the root role is built in

for pair in "vaultgram:/vaultgram/:$VAULTGRAM_PW" "vault:/vault/:$VAULT_PW"; do
  name=${pair%%:*}; rest=${pair#*:}; prefix=${rest%%:*}; pw=${rest#*:}
  ensure_role "$name"
  # --prefix grants [prefix, prefix+1): exactly the keys under the prefix.
  ctl role grant-permission "$name" --prefix=true readwrite "$prefix" >/dev/null
  say "role $name: readwrite on $prefix (prefix)"
  ensure_user "$name" "$pw"
  ctl user grant-role "$name" "$name" >/dev/null 2>&1 || true # already granted
done

if [[ $AS_ROOT == 0 ]]; then
  ctl auth enable >/dev/null
  say "auth enabled"
else
  say "auth was already enabled"
fi
