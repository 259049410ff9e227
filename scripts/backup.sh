#!/usr/bin/env bash
# The backup job (Ansible runs it from a systemd timer; the restore drill
# tests/deploy/restore_drill.sh runs it as is). Takes
#   - an etcd snapshot from one healthy member: the broker's state (audit
#     trail, approvals, sessions' leases) and, for HashiCorp Vault on
#     storage "etcd", Vault's whole (barrier-encrypted) storage;
#   - with BACKUP_RAFT=1, an OpenBao/Vault raft snapshot, with a token whose
#     policy (vaultgram-backup) allows only that;
# verifies each (etcdctl snapshot status; the raft archive's own SHA256SUMS),
# writes it 0600 with a .sha256 beside it, copies it to BACKUP_OFFHOST_DIR if
# set, and keeps the newest BACKUP_KEEP of each kind.
#
# Environment:
#   BACKUP_DIR                 where snapshots go (created 0700)
#   BACKUP_KEEP                snapshots of each kind kept (default 14)
#   BACKUP_OFFHOST_DIR         optional second copy (a mounted remote path)
#   ETCD_ENDPOINTS             comma-separated https:// client URLs
#   ETCD_CACERT, ETCD_CERT, ETCD_KEY   client TLS (CN = an etcd user with the root role)
#   ETCD_USER                  that user's name; ETCD_PASSWORD_FILE its password
#                              (handed to etcdctl as ETCDCTL_PASSWORD in its
#                              environment: no secret is ever on a command line)
#   BACKUP_RAFT=1              also a raft snapshot:
#   VAULT_ADDR, VAULT_CACERT   the server; VAULT_TOKEN_FILE the backup token
#                              (periodic, policy vaultgram-backup; renewed each run)
#   BACKUP_UNSEALER_ADDR, BACKUP_UNSEALER_TOKEN_FILE  the transit unsealer's
#                              raft snapshot too (same CA)
#   VAULT_CLI                  bao or vault (default: bao, else vault)
# Prints one line per snapshot: kind, file, bytes, seconds. Exit non-zero
# (and no new file) when anything fails.
set -euo pipefail
umask 077

die() { echo "backup: $*" >&2; exit 1; }
: "${BACKUP_DIR:?set BACKUP_DIR}"
: "${ETCD_ENDPOINTS:?set ETCD_ENDPOINTS}"
KEEP=${BACKUP_KEEP:-14}
[[ $KEEP =~ ^[1-9][0-9]*$ ]] || die "BACKUP_KEEP must be a positive number, not '$KEEP'"
mkdir -p "$BACKUP_DIR"
chmod 700 "$BACKUP_DIR"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
tmp=$(mktemp -d "$BACKUP_DIR/.partial.XXXXXX")
trap 'rm -rf -- "$tmp"' EXIT

etcdctl_one() { # endpoint args...
  local ep=$1
  shift
  (
    # The credential travels in etcdctl's environment (readable by its owner
    # only), never on its command line (readable by every local user). No
    # other ETCDCTL_* variable: etcdctl aborts when a variable and its flag meet.
    unset "${!ETCDCTL_@}"
    ETCDCTL_API=3 ETCDCTL_USER=$ETCD_USER ETCDCTL_PASSWORD=$(<"$ETCD_PASSWORD_FILE")
    export ETCDCTL_API ETCDCTL_USER ETCDCTL_PASSWORD
    exec etcdctl --endpoints="$ep" --cacert="$ETCD_CACERT" --cert="$ETCD_CERT" --key="$ETCD_KEY" \
      --dial-timeout=3s --command-timeout="${ETCD_COMMAND_TIMEOUT:-60s}" "$@"
  )
}

# Keeps the newest $KEEP files matching $1 (with their .sha256).
rotate() {
  local f n=0
  while IFS= read -r f; do
    n=$((n + 1))
    ((n > KEEP)) || continue
    rm -f -- "$f" "$f.sha256"
  done < <(find "$BACKUP_DIR" -maxdepth 1 -name "$1" -printf '%f\n' | sort -r | sed "s#^#$BACKUP_DIR/#")
}

finish() { # kind tmpfile final-name started-at
  local final="$BACKUP_DIR/$3"
  (cd "$tmp" && sha256sum "$(basename "$2")" | sed "s# .*#  $3#") >"$final.sha256.tmp"
  chmod 600 "$2" "$final.sha256.tmp"
  mv -f "$2" "$final"
  mv -f "$final.sha256.tmp" "$final.sha256"
  if [[ -n ${BACKUP_OFFHOST_DIR:-} ]]; then
    mkdir -p "$BACKUP_OFFHOST_DIR"
    cp -p "$final" "$final.sha256" "$BACKUP_OFFHOST_DIR/" || die "copy to $BACKUP_OFFHOST_DIR failed"
  fi
  printf '%s %s %s bytes %s s\n' "$1" "$final" "$(stat -c %s "$final")" "$(($(date +%s) - $4))"
}

# ---- etcd: the first member that answers healthy -----------------------
t0=$(date +%s)
IFS=, read -r -a eps <<<"$ETCD_ENDPOINTS"
chosen=""
for ep in "${eps[@]}"; do
  if etcdctl_one "$ep" endpoint health >/dev/null 2>&1; then chosen=$ep; break; fi
done
[[ -n $chosen ]] || die "no etcd member answers healthy (${ETCD_ENDPOINTS})"
etcdctl_one "$chosen" snapshot save "$tmp/etcd.db" >/dev/null 2>"$tmp/etcd.err" ||
  die "etcd snapshot from $chosen failed: $(tail -n 3 "$tmp/etcd.err")"
# Checks the file's own hash and reads its revision and key count.
status=$(ETCDCTL_API=3 etcdctl snapshot status "$tmp/etcd.db" -w json 2>&1) ||
  die "etcd snapshot does not verify: $status"
[[ $status == *'"totalKey":'* ]] || die "etcd snapshot status unreadable: $status"
finish etcd "$tmp/etcd.db" "etcd-$stamp.db" "$t0"
rotate 'etcd-*.db'

# ---- raft (OpenBao / Vault integrated storage) ---------------------------
raft_snapshot() { # kind addr token-file
  local kind=$1 addr=$2 token t0
  t0=$(date +%s)
  token=$(<"$3")
  local cli=${VAULT_CLI:-$(command -v bao || command -v vault || true)}
  [[ -n $cli ]] || die "no bao/vault CLI (set VAULT_CLI)"
  local ca=${VAULT_CACERT:-}
  run() { VAULT_ADDR=$addr BAO_ADDR=$addr VAULT_TOKEN=$token BAO_TOKEN=$token \
    VAULT_CACERT=$ca BAO_CACERT=$ca "$cli" "$@"; }
  # The backup token is periodic: each run keeps it alive.
  run token renew >/dev/null 2>"$tmp/$kind.err" || die "$kind: renewing the backup token failed: $(tail -n 2 "$tmp/$kind.err")"
  run operator raft snapshot save "$tmp/$kind.snap" >/dev/null 2>"$tmp/$kind.err" ||
    die "$kind snapshot failed: $(tail -n 3 "$tmp/$kind.err")"
  # The archive carries SHA256SUMS of its own members: check them.
  mkdir "$tmp/x"
  tar -xzf "$tmp/$kind.snap" -C "$tmp/x" 2>/dev/null || die "$kind snapshot is not a gzip tar archive"
  [[ -s $tmp/x/state.bin && -s $tmp/x/SHA256SUMS ]] || die "$kind snapshot lacks state.bin or SHA256SUMS"
  (cd "$tmp/x" && sha256sum --quiet -c SHA256SUMS) >/dev/null 2>&1 || die "$kind snapshot: SHA256SUMS do not match"
  rm -rf "$tmp/x"
  finish "$kind" "$tmp/$kind.snap" "$kind-$stamp.snap" "$t0"
  rotate "$kind-*.snap"
}
if [[ ${BACKUP_RAFT:-0} == 1 ]]; then
  : "${VAULT_ADDR:?set VAULT_ADDR}" "${VAULT_TOKEN_FILE:?set VAULT_TOKEN_FILE}"
  raft_snapshot raft "$VAULT_ADDR" "$VAULT_TOKEN_FILE"
fi
# The transit unsealer's own storage: without it the main server's
# snapshot cannot be unsealed.
if [[ -n ${BACKUP_UNSEALER_ADDR:-} ]]; then
  : "${BACKUP_UNSEALER_TOKEN_FILE:?set BACKUP_UNSEALER_TOKEN_FILE}"
  raft_snapshot unsealer "$BACKUP_UNSEALER_ADDR" "$BACKUP_UNSEALER_TOKEN_FILE"
fi
