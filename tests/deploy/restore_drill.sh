#!/usr/bin/env bash
# The restore drill: docs/DISASTER-RECOVERY.md, done for real and by that
# document only.
#   1. a stack (scripts/dev-stack.sh: etcd x3 + OpenBao on raft, or with
#      `vault` HashiCorp Vault on storage "etcd") gets data of every kind:
#      KV versions (one deleted, two destroyed), agents, panels and their
#      per-agent copies, MTProto secrets, a transit key with three versions,
#      a TOTP key, a stored Telegram session, a pending approval and audit
#      records in etcd;
#   2. scripts/backup.sh takes the backups (etcd snapshot; raft snapshot
#      with the vaultgram-backup token on OpenBao);
#   3. one more write after the backup (it must be lost: RPO = interval);
#   4. the recovery kit is copied by the document's list (its
#      `drill: recovery-kit` block), every process is killed (SIGKILL),
#      every data directory deleted, the audit log moved away;
#   5. restore into a new directory on new ports by the document's steps:
#      its `drill: …` command blocks are read from the document and run as
#      they stand (no dev-stack.sh, no bootstrap, no new token or config);
#   6. every secret reads back byte-identical through the Vault API and
#      through the broker, old ciphertexts decrypt, the TOTP key validates a
#      code computed here, the session decrypts, etcd's broker state is as
#      it was, the late write is gone, and no value or secret of the run is
#      in a backup file.
# For the whole run a sampler (argv_watch_*, scripts/lib.sh) records every
# process's command line; any password, key or token of the run in one
# fails the drill.
# Prints the figures (backup size and time, kill -> first command, unseal
# -> active, records compared). Usage: tests/deploy/restore_drill.sh [openbao|vault]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source-path=SCRIPTDIR/../.. source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"
SERVER=${1:-openbao}
case $SERVER in openbao | vault) ;; *) echo "usage: $0 [openbao|vault]" >&2; exit 2 ;; esac
need_tool etcd etcdctl openssl python3 setsid timeout
DOC=$ROOT/docs/DISASTER-RECOVERY.md
# Nothing of the caller's Vault/etcd settings may reach a command here.
unset VAULT_TOKEN VAULT_ADDR VAULT_CACERT "${!BAO_@}" "${!ETCDCTL_@}"

say() { echo "drill[$SERVER]: $*" >&2; }
fail() { echo "drill[$SERVER]: FAIL: $*" >&2; exit 1; }
secs_since() { python3 -c "import sys, time; print(f'{time.time() - float(sys.argv[1]):.1f}')" "$1"; }

if [[ -z ${VAULTGRAM_BIN:-} ]]; then
  cargo build --quiet --manifest-path "$ROOT/Cargo.toml" --bin vaultgram
  VAULTGRAM_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/debug/vaultgram
fi
export VAULTGRAM_BIN VAULTGRAM_DEV_SERVER=$SERVER
if [[ $SERVER == vault ]]; then CLI=$(vault_binary); else CLI=$(bao_binary); fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/vaultgram-drill-$SERVER.XXXXXX")
A=$WORK/a B=$WORK/b BK=$WORK/backups KIT=$WORK/recovery-kit RUN=$WORK/run
mkdir -p "$WORK/audit" "$RUN" "$WORK/restore" "$WORK/bin"
# The document's commands call `vault`/`bao`, `etcd`, `etcdctl`: the CLI of
# this server under both names.
ln -s "$CLI" "$WORK/bin/vault"
ln -s "$CLI" "$WORK/bin/bao"
DOC_PATH=$WORK/bin:$PATH
# Every process's command line, from now to the end (scripts/lib.sh).
ARGV=$WORK/argv
argv_watch_start "$ARGV" || fail "the argv sampler did not start"
argv_watch_probe "$ARGV"
# Free loopback ports: three etcd client ports (peer = +1) and the server's
# (cluster = +1, broker HTTP = +10), for each of the two stacks; below the
# kernel's ephemeral range, so that no outgoing connection takes one while
# its stack is down (the harness's free_port does the same).
read -r -a P < <(python3 - <<'PY'
import random, socket
low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
got = []
def free(q):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", q)); return True
    except OSError:
        return False
    finally:
        s.close()
while len(got) < 8:
    p = random.randrange(max(1025, low - 12000), low - 12)
    if any(abs(p - q) < 12 for q in got):
        continue
    if all(free(q) for q in (p, p + 1, p + 10)):
        got.append(p)
print(" ".join(map(str, got)))
PY
)
stack() { # args... (stack A only: the restore never uses dev-stack.sh)
  # The audit device's path is stored state: the restored server must find
  # the same one (docs/DISASTER-RECOVERY.md).
  VAULTGRAM_DEV_DIR=$A VAULTGRAM_DEV_ETCD_PORTS="${P[0]} ${P[1]} ${P[2]}" VAULTGRAM_DEV_BAO_PORT=${P[3]} \
    VAULTGRAM_DEV_AUDIT_LOG=$WORK/audit/bao-audit.log \
    "$ROOT/scripts/dev-stack.sh" "$@"
}
# Stops what the restore started (each in a session of its own).
stop_restored() {
  local f pid
  for f in "$RUN"/*.pid; do
    [[ -e $f ]] || continue
    pid=$(<"$f")
    kill -TERM -- "-$pid" 2>/dev/null || true
  done
  for f in "$RUN"/*.pid; do
    [[ -e $f ]] || continue
    pid=$(<"$f")
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    rm -f "$f"
  done
}
ok=0
cleanup() {
  if [[ -d $A ]]; then stack down >/dev/null 2>&1 || true; fi
  stop_restored
  kill -TERM "$(<"$ARGV/pid")" 2>/dev/null || true # the sampler, if still running
  if ((ok)); then rm -rf "$WORK"; else say "evidence kept in $WORK"; fi
}
trap cleanup EXIT

# A fenced block of docs/DISASTER-RECOVERY.md, by the name in the
# `<!-- drill: NAME -->` line before it, without its indentation.
doc_block() { # name
  python3 - "$DOC" "$1" <<'PY'
import re, sys
lines = open(sys.argv[1]).read().split("\n")
marker = f"<!-- drill: {sys.argv[2]} -->"
at = [i for i, l in enumerate(lines) if l.strip() == marker]
if len(at) != 1:
    sys.exit(f"{sys.argv[1]}: {len(at)} blocks named '{sys.argv[2]}', expected 1")
i = at[0] + 1
while not lines[i].strip():
    i += 1
m = re.match(r"^(\s*)```", lines[i])
if not m:
    sys.exit(f"{sys.argv[1]}:{i + 1}: no fenced block after {marker}")
indent, out = m.group(1), []
for l in lines[i + 1:]:
    if l.strip() == "```":
        break
    out.append(l[len(indent):] if l.startswith(indent) else l.strip())
else:
    sys.exit(f"{sys.argv[1]}: the block '{sys.argv[2]}' is not closed")
print("\n".join(out))
PY
}
# Runs a block of the document as it stands (bash -euo pipefail, bounded), in
# the restore's working directory, with the named variables set; run_doc
# fails the drill when it fails.
doc_exec() { # name [VAR=value...]
  local name=$1 block
  block=$(doc_block "$name") || fail "docs/DISASTER-RECOVERY.md: no block '$name'"
  shift
  (
    for kv in "$@"; do export "${kv?}"; done
    cd "$WORK/restore"
    PATH=$DOC_PATH timeout 180 bash -euo pipefail -c "$block"
  ) >>"$WORK/restore.log" 2>&1
}
run_doc() { # name [VAR=value...]
  doc_exec "$@" || fail "the document's '$1' commands failed: $(tail -n 5 "$WORK/restore.log")"
}
# The same for a block that runs a server: in the background, in a session
# of its own (stop_restored ends it).
start_doc() { # name [VAR=value...]
  local name=$1 block
  block=$(doc_block "$name") || fail "docs/DISASTER-RECOVERY.md: no block '$name'"
  shift
  local tag=$name
  for kv in "$@"; do [[ $kv == i=* ]] && tag+=-${kv#i=}; done
  (
    for kv in "$@"; do export "${kv?}"; done
    cd "$WORK/restore"
    PATH=$DOC_PATH exec setsid bash -euo pipefail -c "$block"
  ) >>"$WORK/$tag.log" 2>&1 </dev/null &
  echo $! >"$RUN/$tag.pid"
}

addr_of() { # dir
  if [[ $1 == "$B" ]]; then echo "https://127.0.0.1:${P[7]}"; else echo "https://127.0.0.1:${P[3]}"; fi
}
cli() { # dir args... (the root token in the environment, never in argv)
  local dir=$1 addr
  addr=$(addr_of "$1")
  shift
  VAULT_ADDR=$addr VAULT_CACERT=$dir/tls/ca.pem VAULT_TOKEN=$(<"$dir/root-token") "$CLI" "$@"
}
console() { # dir: lines on stdin -> one JSON reply per line
  "$VAULTGRAM_BIN" --config "$1/vaultgram.toml" console --as alice --json
}
etcd_root() { # dir endpoints args... (the password in the environment)
  local dir=$1 eps=$2
  shift 2
  ETCDCTL_API=3 ETCDCTL_USER=root ETCDCTL_PASSWORD=$(<"$dir/etcd-root-password") \
    etcdctl --endpoints="$eps" --cacert="$dir/tls/ca.pem" --cert="$dir/tls/root.pem" \
    --key="$dir/tls/root-key.pem" --dial-timeout=3s --command-timeout=10s "$@"
}
eps() { # first-port second third
  echo "https://127.0.0.1:$1,https://127.0.0.1:$2,https://127.0.0.1:$3"
}
b64() { printf '%s' "$1" | base64 -w0; }

# ---- 1. the stack and its data -------------------------------------------
say "stack A: etcd ${P[0]} ${P[1]} ${P[2]}, server ${P[3]}"
stack start 2>"$WORK/stack-a.log" || { cat "$WORK/stack-a.log" >&2; fail "stack A did not start"; }
for f in etcd-root-password etcd-vaultgram-password etcd-vault-password unseal-key root-token broker-token; do
  argv_watch_secret_file "$ARGV" "$f" "$A/$f"
done
C1=drill-canary-$(openssl rand -hex 8) C2=drill-canary-$(openssl rand -hex 8) C3=drill-canary-$(openssl rand -hex 8)
C4=drill-canary-$(openssl rand -hex 8) SESSION=drill-session-$(openssl rand -hex 12)
TOTP_SECRET=$(python3 -c 'import base64,os; print(base64.b32encode(os.urandom(20)).decode())')
for v in C1 C2 C3 C4 SESSION TOTP_SECRET; do
  argv_watch_secret "$ARGV" "$v" "${!v}"
  argv_watch_secret "$ARGV" "$v (base64)" "$(b64 "${!v}")"
done
export C1 C4 # for the Python checks below: in their environment, not their argv
console "$A" >"$WORK/plant.out" <<CMDS || true
/kv put secret/drill/app password=$C1 user=u1
/kv put secret/drill/app password=$C2 user=u2
/kv put secret/drill/app password=$C3 user=u3
/kv put secret/drill/app password=$C4 user=u4
/kv delete -versions=2 secret/drill/app
/kv put secret/drill/other note=plain
/agent add de1
/agent add fi2
/panel add de1-panel marzban https://de1.example.com admin $C1-panel
/panel assign de1-panel de1
/mtproto issue drilluser1
/mtproto issue drilluser2
/kv destroy -versions=1 secret/drill/other
CMDS
python3 - "$WORK/plant.out" <<'PY' || fail "planting through the broker"
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
assert len(lines) == 13, len(lines)
bad = [l for l in lines[:12] if not l.get("ok")]
assert not bad, bad
# The last one waits for a second admin: a pending approval in etcd.
assert lines[12].get("ok") is False and "approval" in json.dumps(lines[12]), lines[12]
PY
# The broker cannot destroy without a second admin: versions 1 and 3 with
# the CLI (root token).
cli "$A" kv destroy -versions=1,3 secret/drill/app >/dev/null
# Secret values go to the CLI on stdin (`-`: a JSON body), never as arguments.
cli "$A" write -f transit/keys/drill >/dev/null
ct1=$(printf '{"plaintext":"%s"}' "$(b64 "$C1")" | cli "$A" write -field=ciphertext transit/encrypt/drill -)
cli "$A" write -f transit/keys/drill/rotate >/dev/null
ct2=$(printf '{"plaintext":"%s"}' "$(b64 "$C2")" | cli "$A" write -field=ciphertext transit/encrypt/drill -)
cli "$A" write -f transit/keys/drill/rotate >/dev/null
printf '{"key":"%s","issuer":"drill","account_name":"drill"}' "$TOTP_SECRET" | cli "$A" write totp/keys/drill - >/dev/null
# The userbot's session as the broker stores it (session.rs: transit with the
# broker's key, KV at telegram.session_path).
sct=$(printf '{"plaintext":"%s"}' "$(b64 "$SESSION")" | cli "$A" write -field=ciphertext transit/encrypt/vaultgram -)
cli "$A" kv put secret/vaultgram/telegram-session session="$sct" format=file-v1 saved_by=drill \
  saved_at=2026-12-01T00:00:00Z >/dev/null

# Everything Vault holds under secret/ (every version's data and metadata)
# and everything the broker keeps in etcd, canonically.
dump_kv() { # dir out
  DUMP_TOKEN=$(<"$1/root-token") python3 - "$(addr_of "$1")" "$1/tls/ca.pem" "$2" <<'PY'
import json, os, ssl, sys, urllib.request, urllib.error
addr, ca, out = sys.argv[1:]
token = os.environ["DUMP_TOKEN"]
ctx = ssl.create_default_context(cafile=ca)
def call(path, method="GET"):
    req = urllib.request.Request(f"{addr}/v1/{path}", method=method, headers={"X-Vault-Token": token})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise
def walk(prefix):
    r = call(f"secret/metadata/{prefix}", "LIST")
    for k in (r or {}).get("data", {}).get("keys", []):
        if k.endswith("/"):
            yield from walk(prefix + k)
        else:
            yield prefix + k
records = {}
for path in sorted(walk("")):
    meta = call(f"secret/metadata/{path}")["data"]
    records[path + "#metadata"] = meta
    for v in sorted(meta["versions"], key=int):
        d = call(f"secret/data/{path}?version={v}")
        records[f"{path}#v{v}"] = d["data"] if d else None
json.dump(records, open(out, "w"), sort_keys=True, indent=1)
print(len(records))
PY
}
dump_etcd() { # dir endpoints out
  etcd_root "$1" "$2" get --prefix /vaultgram/ -w json |
    python3 -c '
import base64, json, sys
d = json.load(sys.stdin)
kvs = {base64.b64decode(kv["key"]).decode(): kv["value"] for kv in d.get("kvs", [])}
json.dump(kvs, open(sys.argv[1], "w"), sort_keys=True, indent=1)
print(len(kvs))' "$3"
}
n_kv=$(dump_kv "$A" "$WORK/kv-before.json")
n_etcd=$(dump_etcd "$A" "$(eps "${P[0]}" "${P[1]}" "${P[2]}")" "$WORK/etcd-before.json")
python3 - "$WORK" <<'PY' || fail "what was planted"
import json, os, sys
w = sys.argv[1]
kv = json.load(open(f"{w}/kv-before.json"))
vs = kv["drill/app#metadata"]["versions"]
destroyed = sorted(v for v, m in vs.items() if m["destroyed"])
deleted = sorted(v for v, m in vs.items() if m["deletion_time"] and not m["destroyed"])
assert destroyed == ["1", "3"], f"destroyed versions {destroyed}, expected 1 and 3"
assert deleted == ["2"], f"deleted versions {deleted}, expected 2"
assert [kv[f"drill/app#v{v}"] for v in "123"] == [None] * 3
assert kv["drill/app#v4"]["data"]["password"] == os.environ["C4"]
et = json.load(open(f"{w}/etcd-before.json"))
assert any("approvals/pending/" in k for k in et), "no pending approval in etcd"
assert any("/audit/" in k for k in et), "no audit record in etcd"
PY
say "planted: $n_kv KV records (versions and metadata; v1 and v3 destroyed, v2 deleted), $n_etcd etcd keys"

# ---- 2. backups ----------------------------------------------------------
backup_env=(BACKUP_DIR="$BK" ETCD_ENDPOINTS="$(eps "${P[0]}" "${P[1]}" "${P[2]}")"
  ETCD_CACERT="$A/tls/ca.pem" ETCD_CERT="$A/tls/root.pem" ETCD_KEY="$A/tls/root-key.pem"
  ETCD_USER=root ETCD_PASSWORD_FILE="$A/etcd-root-password")
if [[ $SERVER == openbao ]]; then
  (umask 077; cli "$A" token create -policy=vaultgram-backup -period=24h -orphan -field=token >"$WORK/backup-token")
  argv_watch_secret_file "$ARGV" "backup token" "$WORK/backup-token"
  # The backup token can do nothing else.
  if VAULT_TOKEN=$(<"$WORK/backup-token") VAULT_ADDR=$(addr_of "$A") VAULT_CACERT=$A/tls/ca.pem \
    "$CLI" kv get secret/drill/app >/dev/null 2>&1; then
    fail "the backup token reads secrets"
  fi
  backup_env+=(BACKUP_RAFT=1 VAULT_ADDR="$(addr_of "$A")" VAULT_CACERT="$A/tls/ca.pem"
    VAULT_TOKEN_FILE="$WORK/backup-token" VAULT_CLI="$CLI")
fi
t0=$(date +%s.%N)
env "${backup_env[@]}" "$ROOT/scripts/backup.sh" >"$WORK/backup.out" || fail "backup.sh failed"
backup_secs=$(secs_since "$t0")
cat "$WORK/backup.out" >&2
for f in "$BK"/*.db "$BK"/*.snap; do
  [[ -e $f ]] || continue
  [[ $(stat -c %a "$f") == 600 ]] || fail "$f is not mode 0600"
  (cd "$BK" && sha256sum --quiet -c "$(basename "$f").sha256") || fail "$f does not match its .sha256"
done
# doctor sees the newest finished snapshot and its age.
{ cat "$A/vaultgram.toml"; printf '\n[backup]\ndir = "%s"\nmax_age_secs = 3600\n' "$BK"; } >"$WORK/doctor.toml"
"$VAULTGRAM_BIN" --config "$WORK/doctor.toml" doctor --json >"$WORK/doctor.json" 2>/dev/null || true
python3 - "$WORK/doctor.json" <<'PY' || fail "doctor's backup check"
import json, sys
c = [c for c in json.load(open(sys.argv[1]))["checks"] if c["name"] == "backup"][0]
assert c["status"] == "ok" and c["data"]["newest"]["etcd"]["age_secs"] < 120, c
PY
# No planted value and no secret of the run in any backup file, raw or (raft)
# inside the archive; the values come from the sampler's list, not argv.
python3 - "$ARGV/secrets" "$BK" <<'PY' || fail "a value or secret of the run is readable in a backup"
import os, sys, tarfile
secrets = [l.rstrip(b"\n").partition(b"\t") for l in open(sys.argv[1], "rb")]
secrets = [(n.decode(), v) for n, _, v in secrets if len(v) >= 8 and not n.startswith(b"probe:")]
bad, n = [], 0
for f in sorted(os.listdir(sys.argv[2])):
    path = os.path.join(sys.argv[2], f)
    blobs = [(f, open(path, "rb").read())]
    if f.endswith(".snap"):
        with tarfile.open(path) as t:
            blobs += [(f"{f}:{m.name}", t.extractfile(m).read()) for m in t if m.isfile()]
    for where, blob in blobs:
        n += 1
        bad += [(name, where) for name, v in secrets if v in blob]
assert not bad, bad
print(f"drill: {len(secrets)} values and secrets searched in {n} backup files and archive members: none found", file=sys.stderr)
PY

# ---- 3. a write after the backup: lost on restore ------------------------
[[ $(echo "/kv put secret/drill/late v=after-backup" | console "$A") == *'"ok":true'* ]] || fail "late write"

# ---- 4. the recovery kit, then lose everything ---------------------------
# The kit is exactly what docs/DISASTER-RECOVERY.md lists for this server.
doc_block recovery-kit >"$WORK/kit.list" || fail "docs/DISASTER-RECOVERY.md has no recovery-kit block"
mkdir -p "$KIT"
n_kit=0
while read -r file for _; do
  [[ -z $file || $file == \#* ]] && continue
  case $for in all | "$SERVER") ;; openbao | vault) continue ;; *) fail "recovery-kit: '$file' is for '$for' (all, openbao or vault)" ;; esac
  [[ -f $A/$file ]] || fail "docs/DISASTER-RECOVERY.md's recovery kit lists $file, which the stack does not have"
  (cd "$A" && cp -a --parents "$file" "$KIT/")
  n_kit=$((n_kit + 1))
done <"$WORK/kit.list"
((n_kit > 0)) || fail "the recovery kit is empty"
t_kill=$(date +%s.%N)
for f in "$A"/*.pid; do kill -KILL "$(<"$f")" 2>/dev/null || true; done
for f in "$A"/*.pid; do
  for _ in $(seq 1 100); do kill -0 "$(<"$f")" 2>/dev/null || break; sleep 0.05; done
  ! kill -0 "$(<"$f")" 2>/dev/null || fail "$(basename "$f" .pid) survived SIGKILL"
done
rm -rf "$A"
# The audit log is not in the backup: it goes with the machine.
mv "$WORK/audit/bao-audit.log" "$WORK/audit-lost.log"
say "lost: every process (SIGKILL), $A and the audit log ($(wc -l <"$WORK/audit-lost.log") lines); kept: the kit ($n_kit files) and $BK"

# ---- 5. restore, by docs/DISASTER-RECOVERY.md ----------------------------
# Step 1: the kit on the "new machine", its configs moved to new ports and
# a new directory (what the document tells an operator to edit).
mkdir -p "$B"
chmod 700 "$B"
cp -a "$KIT/." "$B/"
python3 - "$A" "$B" "${P[@]}" <<'PY' || fail "moving the kit's configs to the new ports and paths"
import glob, re, sys
a, b, *p = sys.argv[1:]
p = [int(x) for x in p]
old, new = p[:4], p[4:]
ports = {}
for o, n in zip(old[:3], new[:3]):
    ports[o], ports[o + 1] = n, n + 1          # client, peer
ports[old[3]], ports[old[3] + 1], ports[old[3] + 10] = new[3], new[3] + 1, new[3] + 10
files = sorted(glob.glob(f"{b}/etcd-[123].yml")) + [f"{b}/bao.hcl", f"{b}/vaultgram.toml"]
for f in files:
    t = open(f).read().replace(a + "/", b + "/")
    t = re.sub(r"(?<=127\.0\.0\.1:)(\d+)\b", lambda m: str(ports.get(int(m.group(1)), m.group(1))), t)
    left = [str(o) for o in ports if re.search(rf"127\.0\.0\.1:{o}\b", t)]
    assert a + "/" not in t and not left, (f, left)
    open(f, "w").write(t)
PY
snap=$(find "$BK" -name 'etcd-*.db' | sort | tail -n 1)
# Step 2: etcd.
for i in 1 2 3; do run_doc etcd-restore KIT="$B" SNAP="$snap" i=$i; done
for i in 1 2 3; do start_doc etcd-start KIT="$B" i=$i; done
t_etcd=$(date +%s.%N)
healthy=0
for _ in $(seq 1 60); do
  if doc_exec etcd-health KIT="$B"; then healthy=1; break; fi
  sleep 0.5
done
((healthy)) || fail "etcd did not come back; see $WORK/etcd-start-*.log and $WORK/restore.log"
say "etcd: 3 members restored from $(basename "$snap") and healthy in $(secs_since "$t_etcd") s"
srv=(VAULT_ADDR="$(addr_of "$B")" VAULT_CACERT="$B/tls/ca.pem" KIT="$B")
unseal_to_active=()
wait_active() { # label
  local t
  t=$(date +%s.%N)
  run_doc wait-active "${srv[@]}"
  unseal_to_active+=("$1 $(secs_since "$t") s")
}
if [[ $SERVER == vault ]]; then
  # Step 3: HashiCorp Vault on the restored etcd.
  start_doc vault-start KIT="$B"
  run_doc unseal "${srv[@]}"
  wait_active unseal
else
  # Step 4: OpenBao: a fresh server, throw-away init, the snapshot forced on it.
  run_doc openbao-empty-raft KIT="$B"
  start_doc openbao-start KIT="$B"
  for _ in $(seq 1 60); do
    VAULT_ADDR=$(addr_of "$B") VAULT_CACERT=$B/tls/ca.pem "$CLI" read sys/seal-status >/dev/null 2>&1 && break
    sleep 0.5
  done
  run_doc openbao-throwaway-init "${srv[@]}"
  # The throw-away keys are secrets of this run too, until they are void.
  argv_watch_secret "$ARGV" "throw-away unseal key" "$(python3 -c 'import json,sys; print(json.load(sys.stdin)["unseal_keys_b64"][0])' <"$WORK/restore/throwaway-init.json")"
  argv_watch_secret "$ARGV" "throw-away root token" "$(python3 -c 'import json,sys; print(json.load(sys.stdin)["root_token"])' <"$WORK/restore/throwaway-init.json")"
  wait_active "throw-away unseal"
  raft=$(find "$BK" -name 'raft-*.snap' | sort | tail -n 1)
  run_doc openbao-raft-restore "${srv[@]}" RAFT_SNAP="$raft"
  [[ ! -e $WORK/restore/throwaway-init.json ]] || fail "throwaway-init.json is still there"
  run_doc unseal "${srv[@]}"
  wait_active unseal
fi
# etcd's broker state, before the broker writes anything on B.
dump_etcd "$B" "$(eps "${P[4]}" "${P[5]}" "${P[6]}")" "$WORK/etcd-after.json" >/dev/null
# Step 5: the broker, from its config and credential in the kit.
first=$(echo "/kv get -field=password secret/drill/app" | console "$B") || true
t_first=$(date +%s.%N)
[[ $first == *"$C4"* ]] || fail "first command after restore: $first"
restore_secs=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$t_kill" "$t_first")

# ---- 6. everything as it was ---------------------------------------------
dump_kv "$B" "$WORK/kv-after.json" >/dev/null
# No KV difference at all: the late write absent, the session and every
# version identical.
python3 - "$WORK" <<'PY' || fail "restored state differs"
import json, sys
w = sys.argv[1]
a, b = (json.load(open(f"{w}/kv-{x}.json")) for x in ("before", "after"))
assert not any(k.startswith("drill/late") for k in b), "the write after the backup survived"
assert a == b, sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
ea, eb = (json.load(open(f"{w}/etcd-{x}.json")) for x in ("before", "after"))
import base64
late = [k for k in eb if b"drill/late" in base64.b64decode(eb[k])]
# Keys added on B since: the restore itself adds none; audit of the late
# write happened after the backup, so it must be absent.
assert not late, late
missing = set(ea) - set(eb)
changed = [k for k in set(ea) & set(eb) if ea[k] != eb[k]]
assert not missing and not changed, (sorted(missing)[:5], changed[:5])
extra = set(eb) - set(ea)
assert not extra, sorted(extra)[:5]
PY
[[ $(cli "$B" write -field=plaintext transit/decrypt/drill ciphertext="$ct1" | base64 -d) == "$C1" ]] || fail "ct1 does not decrypt"
[[ $(cli "$B" write -field=plaintext transit/decrypt/drill ciphertext="$ct2" | base64 -d) == "$C2" ]] || fail "ct2 does not decrypt"
[[ $(cli "$B" read -field=latest_version transit/keys/drill) == 3 ]] || fail "transit key versions"
[[ $(cli "$B" write -field=plaintext transit/decrypt/vaultgram ciphertext="$sct" | base64 -d) == "$SESSION" ]] ||
  fail "the stored session does not decrypt"
code=$(TOTP_SECRET=$TOTP_SECRET python3 -c '
import base64, hmac, os, struct, time
k = base64.b32decode(os.environ["TOTP_SECRET"]); c = struct.pack(">Q", int(time.time()) // 30)
h = hmac.new(k, c, "sha1").digest(); o = h[-1] & 15
print("%06d" % ((struct.unpack(">I", h[o:o + 4])[0] & 0x7fffffff) % 1000000))')
[[ $(printf '{"code":"%s"}' "$code" | cli "$B" write -field=valid totp/code/drill -) == true ]] ||
  fail "TOTP code computed from the planted key is not valid"
# Through the broker: secrets, agents, panels (and the agent's copy), MTProto, approvals, audit.
console "$B" >"$WORK/verify.out" <<CMDS || true
/kv get -version=4 -field=password secret/drill/app
/kv get -version=1 secret/drill/app
/kv get -version=2 secret/drill/app
/kv get -version=3 secret/drill/app
/agent list
/panel show de1-panel
/mtproto list
/pending
/audit 60
CMDS
python3 - "$WORK/verify.out" <<'PY' || fail "the broker's view after restore"
import json, os, sys
r = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
assert len(r) == 9, len(r)
s = [json.dumps(x) for x in r]
assert r[0]["ok"] and os.environ["C4"] in s[0], r[0]
# Refused, and refused for the right reason: a version that still had its
# data would be "ok" here.
assert not r[1]["ok"] and "version 1 is destroyed" in s[1], r[1]
assert not r[2]["ok"] and "version 2 is deleted" in s[2], r[2]
assert not r[3]["ok"] and "version 3 is destroyed" in s[3], r[3]
assert r[4]["ok"] and "de1" in s[4] and "fi2" in s[4], r[4]
# (--reveal needs a second admin; the password is in the byte-for-byte KV comparison.)
assert r[5]["ok"] and "de1" in s[5] and "marzban" in s[5], r[5]
assert r[6]["ok"] and "drilluser1" in s[6] and "drilluser2" in s[6], r[6]
assert r[7]["ok"] and "kv destroy" in s[7] and "drill/other" in s[7], r[7]
assert r[8]["ok"] and "mtproto issue" in s[8] and "drill/late" not in s[8], r[8]
PY
# The restored server writes a new audit log at the same path.
[[ -s $WORK/audit/bao-audit.log ]] || fail "the restored server writes no audit log at $WORK/audit/bao-audit.log"

# ---- 7. no secret on any command line, the whole run ---------------------
argv_watch_stop "$ARGV" >"$WORK/argv.report" || { cat "$WORK/argv.report" >&2; fail "a secret was on a command line (above)"; }
sed "s/^argv-watch/drill[$SERVER]: argv-watch/" "$WORK/argv.report" >&2
sizes=$(awk '{printf "%s %s B; ", $1, $3}' "$WORK/backup.out")
active=$(IFS=,; echo "${unseal_to_active[*]}")
say "PASS: backup ${sizes}in ${backup_secs} s; kill -> first command ${restore_secs} s (unseal -> active: ${active// s,/ s, }); restored by the document's steps from its $n_kit-file kit; compared $n_kv KV records and $n_etcd etcd keys byte for byte, 2 ciphertexts, 1 TOTP key, 1 session, 9 broker commands (v1 and v3 destroyed, v2 deleted); the late write is gone; no value or secret of the run in any backup file or command line"
ok=1
