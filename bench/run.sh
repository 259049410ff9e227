#!/usr/bin/env bash
# Benchmarks against the dev stack, one run, one table (see
# docs/PERFORMANCE.md). Release build; every ratio comes from this run.
#
#   P1  `/kv get` over the Unix socket / bare vaultrs read     (p50, goal <= 1.10)
#       + the mean wall time of each stage of those commands
#   P2  broker CPU per `/kv get` / Python hvac CPU per read    (goal <= 0.25)
#       (and / bare vaultrs CPU per read: the floor)
#   P3  RSS of `vaultgram run`: idle (<= 15 MiB), after 10k commands
#       (<= 25 MiB), growth 10k -> 20k (none)
#   P4  cold start of `vaultgram run` to ready, median of 5     (goal <= 300 ms)
#   P5  leader kill -9 -> new leader's Telegram client started (goal <= TTL + 2 s)
#   S*  scale (bench/scale.py): 10,000 vpnbot users and 1,000 agents
#       imported, exported, listed; /audit 1000; etcd keyspace per 10k
#
#   scripts/dev-stack.sh up   # once (Ctrl-D closes its console)
#   bench/run.sh [--json FILE] [ROUNDS] [PER_ROUND]
#
# ROUNDS/PER_ROUND are P1's sample sizes (default 20 x 50). --json FILE also
# writes every figure as one JSON object. Environment: BENCH_COUNT (commands
# per P2/P3 batch, default 10000), BENCH_CLIENTS (default 8), BENCH_STARTS
# (P3/P4 starts, default 5), BENCH_PERF=FILE (profile P2's second batch
# with perf; bench/perf_groups.py), BENCH_USERS / BENCH_AGENTS (scale, default
# 10000 / 1000), BENCH_TG (Telegram messages for the claim keyspace,
# default 2000), BENCH_SKIP_BUILD=1 (use the existing release build),
# BENCH_SKIP_SCALE=1. Uses loopback only; stops every process it starts;
# the dev stack itself keeps running, but the scale section replaces what
# it holds under secret/vaultgram/mtproto/ and agents/scale-*.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source-path=SCRIPTDIR/.. source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"
STATE=${VAULTGRAM_DEV_DIR:-$ROOT/.dev-stack}
BAO_PORT=${VAULTGRAM_DEV_BAO_PORT:-18200}
ADDR=https://127.0.0.1:$BAO_PORT
CA=$STATE/tls/ca.pem
JSON_OUT=""
if [[ ${1:-} == --json ]]; then
  [[ -n ${2:-} ]] || { echo "bench: --json needs a FILE" >&2; exit 2; }
  JSON_OUT=$(realpath -m "$2")
  shift 2
fi
ROUNDS=${1:-20}
PER_ROUND=${2:-50}
COUNT=${BENCH_COUNT:-10000}
CLIENTS=${BENCH_CLIENTS:-8}
STARTS=${BENCH_STARTS:-5}
IDLE_SECS=3
TTL=5
SECRET_PATH=bench/kv-get
SECRET_VALUE=benchmark-value
# HTTP ports of the bench brokers (the dev stack's own broker uses +10).
HTTP_A=$((BAO_PORT + 11)) HTTP_B=$((BAO_PORT + 12)) HTTP_C=$((BAO_PORT + 13))

say() { echo "bench: $*" >&2; }
die() { echo "bench: $*" >&2; exit 1; }

# ---- build, stack, Python packages --------------------------------------
if [[ ${BENCH_SKIP_BUILD:-} == 1 ]]; then
  say "BENCH_SKIP_BUILD=1: using the existing release build"
else
  say "building (release)"
  cargo build --release --locked --quiet --features telegram-standin --bin vaultgram --example kv_get --example kv_throughput
fi
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}/release
BIN=$TARGET/vaultgram
VAULTGRAM_BIN=$BIN scripts/dev-stack.sh start
[[ -f $STATE/vaultgram.toml && -s $STATE/root-token ]] || die "no dev stack in $STATE"
# etcdctl as the dev stack's root (the scale section's keyspace figures);
# only ETCDCTL_*: the brokers must not see VAULT_TOKEN.
eval "$(VAULTGRAM_BIN=$BIN scripts/dev-stack.sh env | grep '^export ETCDCTL_')"

# The Python baselines (hvac, pyrogram, tgcrypto), pinned in scripts/lib.sh.
ensure_bench_tools || die "could not install the Python baselines (ensure_bench_tools)"

for p in "$HTTP_A" "$HTTP_B" "$HTTP_C"; do
  if ss -Hltn "sport = :$p" | grep -q .; then die "port $p is taken; set VAULTGRAM_DEV_BAO_PORT"; fi
done

# ---- processes and cleanup ----------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/vaultgram-bench.XXXXXX")
PIDS=()
# SIGTERM, then SIGKILL after 15 s (counted in HUNG: a broker should stop).
HUNG=0
stop_pid() {
  local _
  kill -TERM "$1" 2>/dev/null || return 0
  for _ in $(seq 1 150); do
    kill -0 "$1" 2>/dev/null || { wait "$1" 2>/dev/null || true; return 0; }
    sleep 0.1
  done
  say "pid $1 ignored SIGTERM for 15 s; killing it"
  HUNG=$((HUNG + 1))
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Bench config NAME HTTP_PORT: the dev stack's config with its own socket
# and HTTP port, the etcd lease TTL of P5, and the file-backed Telegram
# stand-in (loopback only; election, lease keeper and client run for real).
mkcfg() {
  local name=$1 port=$2 base=$STATE/vaultgram.toml
  grep -q '^\[telegram\]' "$base" && die "$base has a [telegram] table; bench/run.sh must be adapted"
  sed -e "s|^socket = .*|socket = \"$WORK/$name.sock\"|" \
      -e "s|^listen = .*|listen = \"127.0.0.1:$port\"|" \
      -e "s|^lease_ttl_secs = .*|lease_ttl_secs = $TTL|" "$base" >"$WORK/$name.toml"
  cat >>"$WORK/$name.toml" <<TOML

[telegram]
enabled = true
backend = "file"
file_dir = "$WORK/telegram"

# Thousands of reads: the budget is still counted (in etcd) per read,
# but never reached.
[security]
reveal_budget = 1000000
TOML
  if ! grep -q "^socket = \"$WORK/$name.sock\"" "$WORK/$name.toml" ||
     ! grep -q "^listen = \"127.0.0.1:$port\"" "$WORK/$name.toml"; then
    die "could not derive $WORK/$name.toml from $base"
  fi
}
mkdir -p "$WORK/telegram"
mkcfg a "$HTTP_A"
mkcfg b "$HTTP_B"
mkcfg c "$HTTP_C"
# The file backend's session (login asks nothing for it), at the shared
# session path in Vault.
"$BIN" --config "$WORK/a.toml" login >"$WORK/login.log" 2>&1 || { cat "$WORK/login.log" >&2; die "login failed"; }

# ---- Python side (baselines and the start/idle probe) -------------------
cat >"$WORK/bench.py" <<'PY'
import os
import sys
import time


def rss_kb(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise SystemExit(f"no {field} for pid {pid}")


def idle(addr, ca, secs):
    """P3 baseline: this process, with pyrogram and hvac clients built."""
    import hvac
    import pyrogram

    tg = pyrogram.Client("x", api_id=1, api_hash="0" * 32, in_memory=True)
    vault = hvac.Client(url=addr, verify=ca)
    time.sleep(secs)
    print(f"rss_kb={rss_kb(os.getpid())}")
    del tg, vault
    return 0


def starts(binary, cfg, http_addr, sock, log, n, idle_secs):
    """P3/P4: N cold starts of `vaultgram run`; readiness = first 200 from
    /readyz, or (if /readyz never answers 200) the first reply to /whoami
    over the Unix socket. After IDLE_SECS idle, VmRSS; then SIGTERM."""
    import http.client
    import signal
    import socket
    import statistics
    import subprocess
    import threading

    host, port = http_addr.rsplit(":", 1)

    def probe_readyz(seen, stop):
        status = None
        while not stop.is_set():
            try:
                c = http.client.HTTPConnection(host, int(port), timeout=1)
                c.request("GET", "/readyz")
                status = c.getresponse().status
                c.close()
                if status == 200:
                    seen["readyz"] = time.monotonic()
                    return
                seen["readyz_status"] = status
            except OSError:
                pass
            time.sleep(0.005)

    def probe_socket(seen, stop):
        while not stop.is_set():
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.settimeout(5)
                s.connect(sock)
                s.sendall(b"/whoami\n")
                reply = s.makefile().readline()
                s.close()
                if '"ok":true' in reply:
                    seen["socket"] = time.monotonic()
                    return
            except OSError:
                pass
            time.sleep(0.005)

    ready_ms, rss, signals, notes, hung = [], [], [], set(), 0
    with open(log, "ab") as out:
        for _ in range(n):
            seen, stop = {}, threading.Event()
            t0 = time.monotonic()
            p = subprocess.Popen([binary, "--config", cfg, "run"], stdout=out,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            try:
                probes = [threading.Thread(target=f, args=(seen, stop))
                          for f in (probe_readyz, probe_socket)]
                for t in probes:
                    t.start()
                deadline = t0 + 30
                while "readyz" not in seen and time.monotonic() < deadline:
                    # /readyz wins; the socket signal only if /readyz has
                    # not said 200 within 3 s of the socket answering.
                    if "socket" in seen and time.monotonic() > seen["socket"] + 3:
                        break
                    if p.poll() is not None:
                        raise SystemExit(f"vaultgram run exited ({p.returncode}); see {log}")
                    time.sleep(0.005)
                stop.set()
                for t in probes:
                    t.join()
                if "readyz" in seen:
                    signals.append("/readyz 200")
                    ready_ms.append((seen["readyz"] - t0) * 1e3)
                elif "socket" in seen:
                    signals.append("socket /whoami reply")
                    ready_ms.append((seen["socket"] - t0) * 1e3)
                    if "readyz_status" in seen:
                        notes.add(f"/readyz said {seen['readyz_status']}")
                else:
                    raise SystemExit(f"vaultgram run not ready after 30 s; see {log}")
                time.sleep(idle_secs)
                # VmRSS = RssAnon (heap, stacks) + RssFile (the binary's
                # pages it touched) + RssShmem.
                rss.append((rss_kb(p.pid), rss_kb(p.pid, "RssAnon"), rss_kb(p.pid, "RssFile")))
            finally:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
                    try:
                        p.wait(timeout=15)
                    except subprocess.TimeoutExpired:
                        hung += 1
                        p.kill()
                        p.wait()
    sig = signals[0] if len(set(signals)) == 1 else "mixed: " + ",".join(signals)
    if notes:
        sig += " (" + "; ".join(sorted(notes)) + ")"
    mid = sorted(rss)[len(rss) // 2]
    print(f"ready_ms={statistics.median(ready_ms):.0f} rss_kb={mid[0]} anon_kb={mid[1]} file_kb={mid[2]}")
    print("all_ms=" + ",".join(f"{x:.0f}" for x in ready_ms))
    print("all_rss_kb=" + ",".join(str(x[0]) for x in rss))
    print(f"signal={sig}")
    print(f"sigterm_hung={hung}")
    return 0


def make_token(addr, ca, root_file, path, value, out):
    """Writes the secret and a service token carrying vaultgram-op-admin
    (the kind of token the broker's child tokens are) to OUT, mode 0600."""
    import hvac

    root = hvac.Client(url=addr, token=open(root_file).read().strip(), verify=ca)
    root.secrets.kv.v2.create_or_update_secret(
        path=path, secret={"value": value}, mount_point="secret")
    token = root.auth.token.create(
        policies=["vaultgram-op-admin"], ttl="2h")["auth"]["client_token"]
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    return 0


def hvac_cpu(addr, ca, token_file, path, value, count, threads):
    """P2 baseline: COUNT reads by THREADS threads, one hvac.Client each
    (keep-alive HTTPS, verifying the CA); this process's user + system CPU
    per read (os.times covers every thread)."""
    import threading
    import hvac

    token = open(token_file).read().strip()
    clients = [hvac.Client(url=addr, token=token, verify=ca) for _ in range(threads)]
    for c in clients:  # warm-up: connections and TLS sessions
        for _ in range(5):
            c.secrets.kv.v2.read_secret_version(
                path=path, mount_point="secret", raise_on_deleted_version=True)
    left = [count]
    lock = threading.Lock()
    errors = [0]

    def worker(c):
        while True:
            with lock:
                if left[0] == 0:
                    return
                left[0] -= 1
            r = c.secrets.kv.v2.read_secret_version(
                path=path, mount_point="secret", raise_on_deleted_version=True)
            if r["data"]["data"]["value"] != value:
                with lock:
                    errors[0] += 1

    t0, c0 = time.monotonic(), os.times()
    ts = [threading.Thread(target=worker, args=(c,)) for c in clients]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    c1, elapsed = os.times(), time.monotonic() - t0
    cpu_us = ((c1.user - c0.user) + (c1.system - c0.system)) * 1e6 / count
    print(f"hvac_cpu_us={cpu_us:.1f} hvac_ops_per_s={count / elapsed:.1f} "
          f"reads={count} threads={threads} errors={errors[0]}")
    return 1 if errors[0] else 0


def scrape(url, out):
    import urllib.request
    with urllib.request.urlopen(url, timeout=10) as r, open(out, "wb") as f:
        f.write(r.read())
    return 0


def stages(before, after):
    """Mean wall time per command stage between two /metrics scrapes
    (vaultgram_command_stage_seconds and the Vault request histogram)."""
    import re

    def read(path):
        sums, counts = {}, {}
        pat = re.compile(r'^vaultgram_(command_stage_seconds|vault_request_duration_seconds)_(sum|count)\{(?:stage|operation)="([^"]+)"\} (\S+)')
        for line in open(path):
            m = pat.match(line)
            if m:
                key = ("vault:" if m.group(1).startswith("vault") else "") + m.group(3)
                (sums if m.group(2) == "sum" else counts)[key] = float(m.group(4))
        return sums, counts

    s0, n0 = read(before)
    s1, n1 = read(after)
    for key in sorted(s1, key=lambda k: -(s1[k] - s0.get(k, 0))):
        n = n1.get(key, 0) - n0.get(key, 0)
        if n > 0:
            print(f"stage {key} n={int(n)} mean_us={(s1[key] - s0.get(key, 0)) / n * 1e6:.1f}")
    return 0


if __name__ == "__main__":
    mode, a = sys.argv[1], sys.argv[2:]
    if mode == "idle":
        sys.exit(idle(a[0], a[1], float(a[2])))
    if mode == "token":
        sys.exit(make_token(*a[:6]))
    if mode == "hvac_cpu":
        sys.exit(hvac_cpu(a[0], a[1], a[2], a[3], a[4], int(a[5]), int(a[6])))
    if mode == "scrape":
        sys.exit(scrape(a[0], a[1]))
    if mode == "stages":
        sys.exit(stages(a[0], a[1]))
    if mode == "starts":
        sys.exit(starts(a[0], a[1], a[2], a[3], a[4], int(a[5]), float(a[6])))
    raise SystemExit(f"unknown mode {mode}")
PY

# field NAME TEXT: the value of NAME=... in TEXT.
field() { sed -n "s/.*\\b$1=\\([^ ]*\\).*/\\1/p" <<<"$2" | head -n 1; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
meets() { # value op bound
  awk -v v="$1" -v b="$3" -v op="$2" \
    'BEGIN { ok = (op == "<=") ? v <= b : v >= b; print ok ? "yes" : "NO" }'
}
# Waits up to 30 s for a JSON reply to /whoami on socket $1.
wait_socket() {
  local _
  for _ in $(seq 1 300); do
    if [[ -S $1 ]] && "$BIN" --config "$2" ctl /whoami >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  return 1
}

# ---- P1 + P2: one broker ----------------------------------------------
say "P1/P2: starting vaultgram run"
"$BIN" --config "$WORK/a.toml" run >"$WORK/a.log" 2>&1 &
PIDS+=("$!")
A_PID=$!
wait_socket "$WORK/a.sock" "$WORK/a.toml" || { cat "$WORK/a.log" >&2; die "broker not ready"; }

METRICS_A=http://127.0.0.1:$HTTP_A/metrics
python3 "$WORK/bench.py" token "$ADDR" "$CA" "$STATE/root-token" "$SECRET_PATH" "$SECRET_VALUE" "$WORK/admin-token"
python3 "$WORK/bench.py" scrape "$METRICS_A" "$WORK/metrics.0"
say "P1: /kv get via socket vs bare vaultrs ($ROUNDS x $PER_ROUND)"
P1_OUT=$("$TARGET/examples/kv_get" "$ADDR" "$CA" "$STATE/root-token" "$WORK/a.sock" "$ROUNDS" "$PER_ROUND")
echo "$P1_OUT" >&2
python3 "$WORK/bench.py" scrape "$METRICS_A" "$WORK/metrics.1"
# kv_get's table: | name | n | p50 ms | p99 ms |
p1_col() { awk -F'|' -v pat="$1" -v col="$2" 'index($2, pat) { gsub(/ /, "", $col); print $col }' <<<"$P1_OUT"; }
P1_BROKER=$(p1_col "/kv get via socket" 4) P1_BROKER99=$(p1_col "/kv get via socket" 5)
P1_BARE=$(p1_col "bare vaultrs" 4) P1_BARE99=$(p1_col "bare vaultrs" 5)
P1_RATIO=$(p1_col "ratio" 4) P1_RATIO99=$(p1_col "ratio" 5)
STAGES=$(python3 "$WORK/bench.py" stages "$WORK/metrics.0" "$WORK/metrics.1")
echo "$STAGES" >&2
stage_us() { sed -n "s/^stage $1 n=[0-9]* mean_us=//p" <<<"$STAGES"; }

# etcd keys and bytes under the broker's prefix (scale section S6).
usage() { python3 "$ROOT/bench/scale.py" etcd-usage "$1"; }
say "P2/P3: $COUNT commands, $CLIENTS socket clients (RSS after 10k)"
U0=$(usage /vaultgram/audit/)
P2A_OUT=$("$TARGET/examples/kv_throughput" "$WORK/a.sock" "$SECRET_PATH" "$SECRET_VALUE" "$COUNT" "$CLIENTS" "$A_PID")
echo "$P2A_OUT" >&2
U1=$(usage /vaultgram/audit/)
say "P2/P3: $COUNT more (CPU per command, RSS after 20k), then bare vaultrs"
# BENCH_PERF=FILE: a CPU profile of the broker during this batch (perf's
# cpu-clock sampling; bench/perf_groups.py sums it by component).
PERF_PID=""
if [[ -n ${BENCH_PERF:-} ]]; then
  perf record -F 1999 -p "$A_PID" -o "$BENCH_PERF" >/dev/null 2>&1 &
  PERF_PID=$!
  sleep 0.5
fi
P2B_OUT=$("$TARGET/examples/kv_throughput" "$WORK/a.sock" "$SECRET_PATH" "$SECRET_VALUE" "$COUNT" "$CLIENTS" "$A_PID" "$ADDR" "$CA" "$WORK/admin-token")
echo "$P2B_OUT" >&2
if [[ -n $PERF_PID ]]; then
  kill -INT "$PERF_PID"
  wait "$PERF_PID" || true
  # perf finishes its file after the signal; let it settle.
  sleep 2
  python3 "$ROOT/bench/perf_groups.py" "$BENCH_PERF" >&2 || say "perf_groups.py failed on $BENCH_PERF"
fi
say "P2: Python hvac, $COUNT reads, $CLIENTS threads"
P2_PY=$(python3 "$WORK/bench.py" hvac_cpu "$ADDR" "$CA" "$WORK/admin-token" "$SECRET_PATH" "$SECRET_VALUE" "$COUNT" "$CLIENTS")
echo "$P2_PY" >&2
P2_OPS=$(field ops_per_s "$P2A_OUT")
P2_BROKER=$(field broker_cpu_us "$P2B_OUT") P2_VAULTRS=$(field vaultrs_cpu_us "$P2B_OUT")
P2_HVAC=$(field hvac_cpu_us "$P2_PY")
P2_RATIO=$(ratio "$P2_BROKER" "$P2_HVAC") P2_FLOOR=$(ratio "$P2_BROKER" "$P2_VAULTRS")
P3_RSS10=$(field broker_rss_kb "$P2A_OUT") P3_RSS20=$(field broker_rss_kb "$P2B_OUT")
P3_GROWTH=$((P3_RSS20 - P3_RSS10))
AUDIT_KEYS=$(( $(field keys "$U1") - $(field keys "$U0") ))
AUDIT_BYTES=$(( $(field bytes "$U1") - $(field bytes "$U0") ))

SCALE_OUT=""
if [[ ${BENCH_SKIP_SCALE:-} != 1 ]]; then
  say "scale: ${BENCH_USERS:-10000} users, ${BENCH_AGENTS:-1000} agents, ${BENCH_TG:-2000} Telegram messages"
  SCALE_OUT=$(python3 "$ROOT/bench/scale.py" run --bin "$BIN" --config "$WORK/a.toml" \
    --addr "$ADDR" --ca "$CA" --root-token "$STATE/root-token" --work "$WORK/scale" \
    --telegram-dir "$WORK/telegram" --users "${BENCH_USERS:-10000}" --agents "${BENCH_AGENTS:-1000}" \
    --telegram "${BENCH_TG:-2000}")
  echo "$SCALE_OUT" >&2
fi

stop_pid "$A_PID"

# ---- P3 + P4: cold starts, then idle --------------------------------------
say "P3/P4: $STARTS cold starts, ${IDLE_SECS} s idle each"
P34_OUT=$(python3 "$WORK/bench.py" starts "$BIN" "$WORK/a.toml" "127.0.0.1:$HTTP_A" "$WORK/a.sock" "$WORK/starts.log" "$STARTS" "$IDLE_SECS")
echo "$P34_OUT" >&2
P4_MS=$(field ready_ms "$P34_OUT") P3_RSS=$(field rss_kb "$P34_OUT")
P3_ANON=$(field anon_kb "$P34_OUT") P3_FILE=$(field file_kb "$P34_OUT")
P4_SIGNAL=$(sed -n 's/^signal=//p' <<<"$P34_OUT")
HUNG=$((HUNG + $(field sigterm_hung "$P34_OUT")))
say "P3: Python with pyrogram + hvac clients, ${IDLE_SECS} s idle"
P3_PY=$(python3 "$WORK/bench.py" idle "$ADDR" "$CA" "$IDLE_SECS")
P3_BASE=$(field rss_kb "$P3_PY")
P3_RATIO=$(ratio "$P3_RSS" "$P3_BASE")

# ---- P5: failover ---------------------------------------------------------
say "P5: two brokers (lease_ttl_secs = $TTL), kill -9 the leader"
"$BIN" --log-format json --config "$WORK/b.toml" run >"$WORK/b.log" 2>&1 &
PIDS+=("$!")
B_PID=$!
"$BIN" --log-format json --config "$WORK/c.toml" run >"$WORK/c.log" 2>&1 &
PIDS+=("$!")
C_PID=$!
LEADER="" FOLLOWER=""
for _ in $(seq 1 300); do
  if grep -q 'telegram client started' "$WORK/b.log"; then LEADER=b FOLLOWER=c; break; fi
  if grep -q 'telegram client started' "$WORK/c.log"; then LEADER=c FOLLOWER=b; break; fi
  sleep 0.1
done
[[ -n $LEADER ]] || { tail -n 20 "$WORK/b.log" "$WORK/c.log" >&2; die "no leader within 30 s"; }
for _ in $(seq 1 100); do
  grep -q 'following' "$WORK/$FOLLOWER.log" && break
  sleep 0.1
done
grep -q 'following' "$WORK/$FOLLOWER.log" || { tail -n 20 "$WORK/$FOLLOWER.log" >&2; die "the second broker does not follow"; }
if [[ $LEADER == b ]]; then KILL_PID=$B_PID; else KILL_PID=$C_PID; fi
sleep 2 # steady state: the leader renews its lease
T0=$EPOCHREALTIME
kill -KILL "$KILL_PID"
P5_S=""
while :; do
  if grep -q 'telegram client started' "$WORK/$FOLLOWER.log"; then
    P5_S=$(awk -v a="$T0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }')
    break
  fi
  if awk -v a="$T0" -v b="$EPOCHREALTIME" 'BEGIN { exit !(b - a > 60) }'; then break; fi
  sleep 0.02
done
wait "$KILL_PID" 2>/dev/null || true
if [[ $LEADER == b ]]; then stop_pid "$C_PID"; else stop_pid "$B_PID"; fi
[[ -n $P5_S ]] || { tail -n 20 "$WORK/$FOLLOWER.log" >&2; die "no new leader within 60 s"; }
P5_GOAL=$((TTL + 2))

# ---- table ----------------------------------------------------------------
declare -A FIG=(
  [p1_broker_p50_ms]=$P1_BROKER [p1_broker_p99_ms]=$P1_BROKER99
  [p1_vaultrs_p50_ms]=$P1_BARE [p1_vaultrs_p99_ms]=$P1_BARE99
  [p1_ratio_p50]=$P1_RATIO [p1_ratio_p99]=$P1_RATIO99
  [p2_broker_cpu_us_per_cmd]=$P2_BROKER [p2_hvac_cpu_us_per_read]=$P2_HVAC
  [p2_vaultrs_cpu_us_per_read]=$P2_VAULTRS [p2_ratio_hvac]=$P2_RATIO [p2_ratio_vaultrs]=$P2_FLOOR
  [p2_broker_ops_per_s]=$P2_OPS [p2_hvac_ops_per_s]=$(field hvac_ops_per_s "$P2_PY")
  [p2_vaultrs_ops_per_s]=$(field vaultrs_ops_per_s "$P2B_OUT")
  [p3_idle_rss_kb]=$P3_RSS [p3_idle_anon_kb]=$P3_ANON [p3_idle_file_kb]=$P3_FILE [p3_python_idle_rss_kb]=$P3_BASE [p3_ratio_python]=$P3_RATIO
  [p3_rss_10k_kb]=$P3_RSS10 [p3_rss_20k_kb]=$P3_RSS20 [p3_growth_10k_20k_kb]=$P3_GROWTH
  [p4_ready_ms]=$P4_MS [p5_failover_s]=$P5_S
  [s6_audit_keys_per_10k]=$((AUDIT_KEYS * 10000 / COUNT)) [s6_audit_bytes_per_10k]=$((AUDIT_BYTES * 10000 / COUNT))
)
while read -r st; do
  [[ -n $st ]] && FIG[p1_stage_${st//:/_}_us]=$(stage_us "$st")
done < <(sed -n 's/^stage \([^ ]*\) .*/\1/p' <<<"$STAGES")
while read -r k v; do [[ -n $k ]] && FIG[$k]=$v; done < <(sed -n 's/^figure \([^ ]*\) \(.*\)/\1 \2/p' <<<"$SCALE_OUT")
sf() { echo "${FIG[$1]:-n/a}"; }
kib() { awk -v k="$1" 'BEGIN { printf "%.1f MiB", k / 1024 }'; }

echo "machine: $(nproc) cores ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)), $(free -g | awk '/Mem:/{print $2}') GiB RAM, kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg) at the end; $(date -u +%Y-%m-%dT%H:%MZ)"
echo
echo "| # | measure | vaultgram | baseline | ratio/value | goal | met |"
echo "|---|---|---|---|---|---|---|"
echo "| P1 | \`/kv get\` latency, socket + dispatcher ÷ bare vaultrs read (p50; p99 in brackets) | $P1_BROKER ms ($P1_BROKER99) | $P1_BARE ms ($P1_BARE99) | $P1_RATIO ($P1_RATIO99) | ≤ 1.10 | $(meets "$P1_RATIO" '<=' 1.10) |"
echo "| P2 | CPU per \`/kv get\` of \`vaultgram run\` ÷ Python hvac's CPU per read ($COUNT each, $CLIENTS clients) | $P2_BROKER µs | $P2_HVAC µs | $P2_RATIO | ≤ 0.25 | $(meets "$P2_RATIO" '<=' 0.25) |"
echo "| P2b | the same ÷ bare vaultrs CPU per read (the floor) | $P2_BROKER µs | $P2_VAULTRS µs | $P2_FLOOR | | |"
echo "| P2c | \`/kv get\` throughput, $CLIENTS socket clients (hvac: $(sf p2_hvac_ops_per_s), vaultrs: $(sf p2_vaultrs_ops_per_s)) | $P2_OPS ops/s | | | | |"
echo "| P3 | idle RSS of \`vaultgram run\` after ${IDLE_SECS} s, median of $STARTS: heap and stacks $P3_ANON kB + the binary's pages $P3_FILE kB (Python pyrogram + hvac: $(kib "$P3_BASE"), ratio $P3_RATIO) | $(kib "$P3_RSS") | | $P3_RSS kB | ≤ 15 MiB | $(meets "$P3_RSS" '<=' 15360) |"
echo "| P3b | RSS after $COUNT commands | $(kib "$P3_RSS10") | | $P3_RSS10 kB | ≤ 25 MiB | $(meets "$P3_RSS10" '<=' 25600) |"
echo "| P3c | RSS growth from $COUNT to $((2 * COUNT)) commands | $P3_GROWTH kB | | $P3_GROWTH kB | ≤ 1024 kB | $(meets "$P3_GROWTH" '<=' 1024) |"
echo "| P4 | cold start to ready, median of $STARTS (signal: $P4_SIGNAL) | $P4_MS ms | | $P4_MS ms | ≤ 300 ms | $(meets "$P4_MS" '<=' 300) |"
echo "| P5 | leader kill -9 → new leader's Telegram client started (lease_ttl_secs = $TTL) | $P5_S s | | $P5_S s | ≤ $P5_GOAL s (TTL + 2) | $(meets "$P5_S" '<=' "$P5_GOAL") |"
echo "| S6a | etcd: audit records per 10k commands (7-day retention lease) | $(sf s6_audit_keys_per_10k) keys, $(sf s6_audit_bytes_per_10k) B | | | bounded by retention | |"
sed -n 's/^row //p' <<<"$SCALE_OUT"
echo
echo "Stage means of P1's broker commands (µs, wall time; vault:* = Vault requests inside execute):"
sed -n 's/^stage /  /p' <<<"$STAGES"
if ((HUNG > 0)); then
  echo
  echo "note: $HUNG \`vaultgram run\` process(es) ignored SIGTERM for 15 s and were killed (a shutdown bug, not a benchmark figure)."
fi
if [[ -n $JSON_OUT ]]; then
  for k in "${!FIG[@]}"; do printf '%s\t%s\n' "$k" "${FIG[$k]}"; done | python3 -c '
import json, sys
out = {}
for line in sys.stdin:
    k, _, v = line.rstrip("\n").partition("\t")
    try:
        out[k] = int(v)
    except ValueError:
        try:
            out[k] = float(v)
        except ValueError:
            out[k] = v
json.dump(dict(sorted(out.items())), open(sys.argv[1], "w"), indent=1)
' "$JSON_OUT"
  say "figures written to $JSON_OUT"
fi
