#!/usr/bin/env bash
# ansible/test-local.sh — runs the Ansible deployment for real on this machine:
#   lint (yamllint, ansible-lint --profile production), then for each Vault
#   flavour — OpenBao on raft, HashiCorp Vault on the deployed etcd —
#   local.yml twice (the second run must report changed=0), a smoke test
#   through the broker, teardown-local.yml, and a check that nothing is left
#   running.
# Needs: a built vaultgram binary ($VAULTGRAM_BINARY, or target/debug/vaultgram
# under $CARGO_TARGET_DIR or the repository), etcd, start-stop-daemon, python3.
# State: $VG_LOCAL_DIR (default: a fresh temporary directory).
# Last line: "ansible: N passed, M failed".
set -uo pipefail
exec </dev/null

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
export ANSIBLE_CONFIG=$HERE/ansible.cfg
export ANSIBLE_NOCOLOR=1 ANSIBLE_FORCE_COLOR=0 PY_COLORS=0
OWN_STATE=0
if [[ -z ${VG_LOCAL_DIR:-} ]]; then
  VG_LOCAL_DIR=$(mktemp -d /tmp/vaultgram-ansible.XXXXXX)
  OWN_STATE=1
fi
BASE=$VG_LOCAL_DIR
LOGS=$BASE.logs
mkdir -p "$LOGS"

PASS=0 FAIL=0
ok() { PASS=$((PASS + 1)); echo "ok   - $*"; }
bad() { FAIL=$((FAIL + 1)); echo "FAIL - $*"; }
finish() {
  argv_check
  echo "logs: $LOGS"
  echo "ansible: $PASS passed, $FAIL failed"
  ((FAIL == 0))
  exit
}

# ---- tools -----------------------------------------------------------------
# Installed by ensure_tools (scripts/lib.sh); this script installs nothing.
# shellcheck source-path=SCRIPTDIR/.. source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"
need_tool ansible-playbook ansible-lint yamllint etcd etcdctl start-stop-daemon ss || { bad "tools missing"; finish; }

# No secret of the run on any process's command line, from the first task to
# the teardown (argv_watch_*, scripts/lib.sh): the root tokens of the server
# and of the unsealer, the auto-unseal token, the unseal and recovery keys,
# the etcd passwords, the broker's role_id and wrapped secret_id, the backup
# tokens, and the smoke test's own API hash and TOTP key. Every local user can
# read every command line; the roles hand secrets to processes on stdin or in
# files, never as arguments and never through `environment:` (which Ansible
# turns into words of the `/bin/sh -c` command line it runs a module with).
ARGV_DIR=$BASE/argv-watch
argv_check() {
  [[ -e $ARGV_DIR/pid ]] || return 0
  if argv_watch_stop "$ARGV_DIR" >"$LOGS/argv-watch.log" 2>&1; then
    ok "no secret on any command line: $(sed -n 's/^argv-watch: //p' "$LOGS/argv-watch.log" | head -n 1)"
  else
    bad "a secret was on a command line (see $LOGS/argv-watch.log)"; grep -E 'LEAK|NOT SEEN' "$LOGS/argv-watch.log" | cut -c1-400
  fi
  rm -f "$ARGV_DIR/pid" "$ARGV_DIR/secrets"
}
argv_watch_start "$ARGV_DIR" || { bad "the argv sampler did not start"; finish; }
argv_watch_probe "$ARGV_DIR"
BAO=$(bao_binary) || { bad "OpenBao is not installed: run ensure_tools (scripts/lib.sh)"; finish; }
BIN=${VAULTGRAM_BINARY:-${CARGO_TARGET_DIR:-$ROOT/target}/debug/vaultgram}
if [[ ! -x $BIN ]]; then
  echo "building $BIN"
  (cd "$ROOT" && cargo build --quiet --bin vaultgram) || { bad "cargo build"; finish; }
fi
export VAULTGRAM_BINARY=$BIN

# ---- lint ------------------------------------------------------------------
cd "$HERE" || exit 1
if yamllint --strict . >"$LOGS/yamllint.log" 2>&1; then ok "yamllint"; else bad "yamllint (see $LOGS/yamllint.log)"; cat "$LOGS/yamllint.log"; fi
if ansible-lint --profile production --nocolor >"$LOGS/ansible-lint.log" 2>&1; then
  ok "ansible-lint --profile production"
else
  bad "ansible-lint --profile production (see $LOGS/ansible-lint.log)"
  grep -E '^[a-z-]+(\[[a-z-]+\])?: |^[^ ]+\.yml:[0-9]+' "$LOGS/ansible-lint.log" | head -40
fi
if ansible-playbook -i inventory/example.yml site.yml --syntax-check >"$LOGS/site-syntax.log" 2>&1; then
  ok "site.yml --syntax-check"
else
  bad "site.yml --syntax-check"; tail -20 "$LOGS/site-syntax.log"
fi

# ---- deploy ------------------------------------------------------------------
playbook() { # log-name playbook [args...]
  local log=$LOGS/$1.log; shift
  ansible-playbook -i localhost, -c local "$@" >"$log" 2>&1
}
recap() { # log-name -> "ok=.. changed=.. failed=.." of localhost
  grep -E '^localhost +:' "$LOGS/$1.log" | tail -1
}
# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
  playbook teardown-trap teardown-local.yml >/dev/null 2>&1 || true
}
# One deployment, run twice (changed=0), smoke-tested and torn down, in a
# state directory of its own under $BASE.
deploy_flavor() { # flavor [ansible-playbook args...]
  local flavor=$1; shift
  local extra=("$@")
  # The previous flavour's smoke test exported these; the next deployment
  # must not inherit them.
  unset VAULT_ADDR VAULT_CACERT VAULT_TOKEN BAO_ADDR BAO_CACERT BAO_TOKEN
  export VG_LOCAL_DIR=$BASE/$flavor
  mkdir -p "$VG_LOCAL_DIR"
  trap cleanup EXIT
  T0=$(date +%s)
  if playbook "$flavor-run1" local.yml "${extra[@]}"; then
    ok "$flavor: local.yml first run ($(($(date +%s) - T0)) s): $(recap "$flavor-run1" | sed 's/  */ /g')"
  else
    bad "$flavor: local.yml first run failed"; grep -E 'FAILED|fatal|ERROR' -A5 "$LOGS/$flavor-run1.log" | head -40
    finish
  fi

  # The secrets the deployment made, watched from now to the end of the run
  # (the sampler keeps every command line it saw, run 1's included). A file
  # that is not there is a failure: the sampler could not watch its secret.
  local f unwatched=""
  local secrets=(vault/root-token vault/recovery-key unsealer/root-token unsealer/unseal-key
    unsealer/autounseal-token vaultgram/role_id vaultgram/secret_id backup/unsealer-token
    etcd-root-password etcd-vaultgram-password etcd-vault-password)
  [[ $flavor == openbao ]] && secrets+=(backup/vault-token)
  for f in "${secrets[@]}"; do
    if [[ -s $VG_LOCAL_DIR/$f ]]; then
      argv_watch_secret_file "$ARGV_DIR" "$flavor: $f" "$VG_LOCAL_DIR/$f"
    else
      unwatched+=" $f"
    fi
  done
  if [[ -z $unwatched ]]; then
    ok "$flavor: the argv sampler watches ${#secrets[@]} secrets of the deployment"
  else
    bad "$flavor: secret files missing, not watched:$unwatched"
  fi

  T0=$(date +%s)
  if playbook "$flavor-run2" local.yml "${extra[@]}"; then
    local r
    r=$(recap "$flavor-run2")
    if [[ $r =~ changed=0[[:space:]] && $r =~ failed=0[[:space:]] ]]; then
      ok "$flavor: local.yml second run reports changed=0 ($(($(date +%s) - T0)) s)"
    else
      bad "$flavor: local.yml second run is not idempotent: $r"
      grep -E '^changed:|^TASK' "$LOGS/$flavor-run2.log" | grep -B1 '^changed:' | head -30
    fi
  else
    bad "$flavor: local.yml second run failed"; grep -E 'FAILED|fatal|ERROR' -A5 "$LOGS/$flavor-run2.log" | head -40
  fi

  # ---- smoke ----
  local D=$VG_LOCAL_DIR
  export VAULT_ADDR=https://127.0.0.1:48200 VAULT_CACERT=$D/tls/ca.pem
  export BAO_ADDR=$VAULT_ADDR BAO_CACERT=$VAULT_CACERT
  VAULT_TOKEN=$(cat "$D/vault/root-token" 2>/dev/null)
  export VAULT_TOKEN BAO_TOKEN=$VAULT_TOKEN
  # The smoke test's own secrets go to bao on stdin (`key=-`) too, and are
  # watched: an API hash of this run, alice's TOTP key.
  local api_hash
  api_hash=$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
  argv_watch_secret "$ARGV_DIR" "$flavor: smoke api_hash" "$api_hash"
  if printf '%s' "$api_hash" | "$BAO" kv put secret/telegram api_id=123456 api_hash=- >"$LOGS/$flavor-kv-put.log" 2>&1; then
    ok "$flavor: bao kv put secret/telegram"
  else
    bad "$flavor: bao kv put secret/telegram"; cat "$LOGS/$flavor-kv-put.log"
  fi
  local want got left="" pid p seed b32 code
  local ctl=(env -u VAULT_TOKEN -u BAO_TOKEN "$D/bin/vaultgram" --config "$D/vaultgram/vaultgram.toml" ctl)
  # The deployed config has step-up on ([security] step_up = "secrets"):
  # a secret needs alice's own TOTP code first. Her key, as a Vault
  # operator would create it; the code computed independently (RFC 6238).
  seed=$(od -An -N20 -tx1 /dev/urandom | tr -d ' \n')
  b32=$(python3 -c 'import base64,sys; print(base64.b32encode(bytes.fromhex(sys.stdin.read().strip())).decode().rstrip("="))' <<<"$seed")
  argv_watch_secret "$ARGV_DIR" "$flavor: smoke TOTP key (hex)" "$seed"
  argv_watch_secret "$ARGV_DIR" "$flavor: smoke TOTP key (base32)" "$b32"
  "$BAO" delete totp/keys/alice >/dev/null 2>&1 || true
  printf '%s' "$b32" | "$BAO" write totp/keys/alice generate=false issuer=vaultgram account_name=alice key=- \
    >"$LOGS/$flavor-totp.log" 2>&1 || { bad "$flavor: totp key for alice"; cat "$LOGS/$flavor-totp.log"; }
  got=$("${ctl[@]}" /get_keys 2>&1)
  if [[ $got == *"/unlock CODE"* ]]; then
    ok "$flavor: step-up is on: /get_keys before /unlock is refused"
  else
    bad "$flavor: /get_keys before /unlock: got '$got'"
  fi
  code=$(TOTP_SEED=$seed python3 - <<'PY'
import hashlib, hmac, os, struct, time
k = bytes.fromhex(os.environ["TOTP_SEED"])
h = hmac.new(k, struct.pack(">Q", int(time.time()) // 30), hashlib.sha1).digest()
o = h[19] & 15
print("%06d" % ((struct.unpack(">I", h[o:o + 4])[0] & 0x7FFFFFFF) % 1000000))
PY
)
  # The code on stdin: ctl refuses a secret on its command line.
  got=$(printf '/unlock %s\n' "$code" | "${ctl[@]}" - 2>&1)
  if [[ $got == *"unlocked until"* ]]; then
    ok "$flavor: /unlock with alice's TOTP code"
  else
    bad "$flavor: /unlock: got '$got'"
  fi
  want=$'API_ID: 123456\nAPI_HASH: '$api_hash
  got=$("${ctl[@]}" /get_keys 2>"$LOGS/$flavor-ctl.err")
  if [[ $got == *"$want"* ]]; then
    ok "$flavor: vaultgram ctl /get_keys returns the keys put with bao"
  else
    bad "$flavor: vaultgram ctl /get_keys: got '$got'"; cat "$LOGS/$flavor-ctl.err"
  fi
  if "$BAO" status >"$LOGS/$flavor-status.log" 2>&1 && grep -qE 'Sealed +false' "$LOGS/$flavor-status.log"; then
    ok "$flavor: the main server is unsealed (transit auto-unseal)"
  else
    bad "$flavor: main server status"; cat "$LOGS/$flavor-status.log"
  fi

  # ---- backups: the timer's job, run once ----
  # The unsealer seals the main server in both flavours: its snapshot too.
  local bk=$D/backups envs=() line kinds="etcd unsealer"
  [[ $flavor == openbao ]] && kinds="etcd raft unsealer"
  while IFS= read -r line; do
    [[ $line == \#* || -z $line ]] || envs+=("$line")
  done <"$D/backup/backup.env"
  if env "${envs[@]}" "$D/backup/backup.sh" >"$LOGS/$flavor-backup.log" 2>&1; then
    ok "$flavor: the backup job ran: $(awk '{printf "%s %s B; ", $1, $3}' "$LOGS/$flavor-backup.log")"
  else
    bad "$flavor: the backup job failed"; cat "$LOGS/$flavor-backup.log"
  fi
  local kind snap
  # awk, not grep -q: grep -q exits at the first match, tar then dies of
  # SIGPIPE while listing the rest, and pipefail turns that into a failure.
  for kind in $kinds; do
    snap=$(find "$bk" -maxdepth 1 -name "$kind-*" ! -name '*.sha256' | sort | tail -n 1)
    if [[ -n $snap && $(stat -c %a "$snap") == 600 ]] && (cd "$bk" && sha256sum --quiet -c "$(basename "$snap").sha256") &&
      { [[ $kind != etcd ]] || ETCDCTL_API=3 etcdctl snapshot status "$snap" >/dev/null 2>&1; } &&
      { [[ $kind == etcd ]] || tar -tzf "$snap" 2>/dev/null | awk '$0 == "state.bin" { f = 1 } END { exit !f }'; }; then
      ok "$flavor: $kind snapshot $(basename "$snap") (0600) verifies"
    else
      bad "$flavor: no verified $kind snapshot in $bk"; ls -la "$bk"
    fi
  done

  # ---- teardown ----
  trap - EXIT
  if playbook "$flavor-teardown" teardown-local.yml; then ok "$flavor: teardown-local.yml"; else bad "$flavor: teardown-local.yml"; tail -30 "$LOGS/$flavor-teardown.log"; fi
  for p in 42379 42380 43379 43380 44379 44380 48200 48201 48300 48301 49090; do
    if ss -Hltn "sport = :$p" | grep -q .; then left+=" port:$p"; fi
  done
  for f in "$D"/run/*.pid; do
    [[ -e $f ]] || continue
    pid=$(<"$f"); [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null && left+=" pid:$pid($f)"
  done
  # Any process still using the state directory (binary or config path in its command line).
  for pid in $(pgrep -f -- "$D/" 2>/dev/null); do left+=" proc:$pid"; done
  if [[ -z $left ]]; then ok "$flavor: nothing left running after teardown"; else bad "$flavor: left running:$left"; fi
}

# OpenBao on raft (the role's default), then HashiCorp Vault on the etcd
# members local.yml deploys, with the binary vault_binary built.
deploy_flavor openbao
VAULT_BIN=$(vault_binary) || { bad "HashiCorp Vault is not built: run ensure_tools (scripts/lib.sh)"; finish; }
deploy_flavor hashicorp -e vault_flavor=hashicorp -e "vault_binary_src=$VAULT_BIN"

argv_check

# A state directory this script created goes once everything passed.
if ((FAIL == 0 && OWN_STATE == 1)); then rm -rf -- "$BASE"; fi

finish
