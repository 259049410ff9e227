#!/usr/bin/env bash
# Benchmarks P1-P5 against the dev stack, one run, one table (see
# docs/PERFORMANCE.md). Release build; every ratio comes from this run.
#
#   P1  `/kv get` over the Unix socket / bare vaultrs read   (p50, goal <= 1.10)
#   P2  broker ops/s, 8 socket clients / Python hvac, 8 threads (goal >= 3)
#   P3  idle RSS of `vaultgram run` / Python pyrogram+hvac     (goal <= 0.25)
#   P4  cold start of `vaultgram run` to ready, median of 5     (goal <= 300 ms)
#   P5  leader kill -9 -> new leader's Telegram client started (goal <= TTL + 2 s)
#
#   scripts/dev-stack.sh up   # once (Ctrl-D closes its console)
#   bench/run.sh [ROUNDS] [PER_ROUND]
#
# ROUNDS/PER_ROUND are P1's sample sizes (default 20 x 50). Environment:
# BENCH_SECS (P2 duration per side, default 10), BENCH_CLIENTS (default 8),
# BENCH_STARTS (P3/P4 starts, default 5), BENCH_SKIP_BUILD=1 (use the existing
# release build). Uses loopback only; stops every
# process it starts; the dev stack itself keeps running.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source-path=SCRIPTDIR/.. source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"
STATE=${VAULTGRAM_DEV_DIR:-$ROOT/.dev-stack}
BAO_PORT=${VAULTGRAM_DEV_BAO_PORT:-18200}
ADDR=https://127.0.0.1:$BAO_PORT
CA=$STATE/tls/ca.pem
ROUNDS=${1:-20}
PER_ROUND=${2:-50}
SECS=${BENCH_SECS:-10}
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
  cargo build --release --locked --quiet --bin vaultgram --example kv_get --example kv_throughput
fi
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}/release
BIN=$TARGET/vaultgram
VAULTGRAM_BIN=$BIN scripts/dev-stack.sh start
[[ -f $STATE/vaultgram.toml && -s $STATE/root-token ]] || die "no dev stack in $STATE"

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


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise SystemExit(f"no VmRSS for pid {pid}")


def hvac_loop(addr, ca, root_file, path, value, secs, threads):
    """P2 baseline: THREADS threads, one hvac.Client each, reading PATH."""
    import threading
    import hvac

    root = hvac.Client(url=addr, token=open(root_file).read().strip(), verify=ca)
    root.secrets.kv.v2.create_or_update_secret(
        path=path, secret={"value": value}, mount_point="secret")
    # The same kind of token the broker reads with: a service token with
    # vaultgram-op-admin (root would skip Vault's ACL evaluation).
    token = root.auth.token.create(
        policies=["vaultgram-op-admin"], ttl="1h")["auth"]["client_token"]
    state = {"counting": False, "stop": False}
    ops = [0] * threads
    errors = [0] * threads

    def worker(i):
        c = hvac.Client(url=addr, token=token, verify=ca)
        while not state["stop"]:
            try:
                r = c.secrets.kv.v2.read_secret_version(
                    path=path, mount_point="secret", raise_on_deleted_version=True)
                good = r["data"]["data"]["value"] == value
            except Exception as e:  # counted, reported once
                good = False
                if not errors[i]:
                    print(f"hvac: {e}", file=sys.stderr)
            if state["counting"]:
                if good:
                    ops[i] += 1
                else:
                    errors[i] += 1

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    time.sleep(1.0)  # warm-up, as on the broker side
    state["counting"] = True
    t0 = time.monotonic()
    time.sleep(secs)
    state["counting"] = False
    elapsed = time.monotonic() - t0
    state["stop"] = True
    for t in ts:
        t.join()
    print(f"ops_per_s={sum(ops) / elapsed:.1f} ops={sum(ops)} secs={elapsed:.2f} "
          f"threads={threads} errors={sum(errors)}")
    return 1 if sum(errors) else 0


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
                rss.append(rss_kb(p.pid))
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
    print(f"ready_ms={statistics.median(ready_ms):.0f} rss_kb={int(statistics.median(rss))}")
    print("all_ms=" + ",".join(f"{x:.0f}" for x in ready_ms))
    print("all_rss_kb=" + ",".join(str(x) for x in rss))
    print(f"signal={sig}")
    print(f"sigterm_hung={hung}")
    return 0


if __name__ == "__main__":
    mode, a = sys.argv[1], sys.argv[2:]
    if mode == "hvac":
        sys.exit(hvac_loop(a[0], a[1], a[2], a[3], a[4], float(a[5]), int(a[6])))
    if mode == "idle":
        sys.exit(idle(a[0], a[1], float(a[2])))
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

say "P1: /kv get via socket vs bare vaultrs ($ROUNDS x $PER_ROUND)"
P1_OUT=$("$TARGET/examples/kv_get" "$ADDR" "$CA" "$STATE/root-token" "$WORK/a.sock" "$ROUNDS" "$PER_ROUND")
echo "$P1_OUT" >&2
# kv_get's table: | name | n | p50 ms | p99 ms |
p1_col() { awk -F'|' -v pat="$1" -v col="$2" 'index($2, pat) { gsub(/ /, "", $col); print $col }' <<<"$P1_OUT"; }
P1_BROKER=$(p1_col "/kv get via socket" 4) P1_BROKER99=$(p1_col "/kv get via socket" 5)
P1_BARE=$(p1_col "bare vaultrs" 4) P1_BARE99=$(p1_col "bare vaultrs" 5)
P1_RATIO=$(p1_col "ratio" 4) P1_RATIO99=$(p1_col "ratio" 5)

say "P2: $CLIENTS socket clients for $SECS s"
P2_OUT=$("$TARGET/examples/kv_throughput" "$WORK/a.sock" "$SECRET_PATH" "$SECRET_VALUE" "$SECS" "$CLIENTS")
echo "$P2_OUT" >&2
say "P2: Python hvac, $CLIENTS threads for $SECS s"
P2_PY=$(python3 "$WORK/bench.py" hvac "$ADDR" "$CA" "$STATE/root-token" "$SECRET_PATH" "$SECRET_VALUE" "$SECS" "$CLIENTS")
echo "$P2_PY" >&2
P2_BROKER=$(field ops_per_s "$P2_OUT") P2_BASE=$(field ops_per_s "$P2_PY")
P2_RATIO=$(ratio "$P2_BROKER" "$P2_BASE")

stop_pid "$A_PID"

# ---- P3 + P4: cold starts, then idle --------------------------------------
say "P3/P4: $STARTS cold starts, ${IDLE_SECS} s idle each"
P34_OUT=$(python3 "$WORK/bench.py" starts "$BIN" "$WORK/a.toml" "127.0.0.1:$HTTP_A" "$WORK/a.sock" "$WORK/starts.log" "$STARTS" "$IDLE_SECS")
echo "$P34_OUT" >&2
P4_MS=$(field ready_ms "$P34_OUT") P3_RSS=$(field rss_kb "$P34_OUT")
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
echo "machine: $(nproc) cores ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)), $(free -g | awk '/Mem:/{print $2}') GiB RAM, kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg) at the end; $(date -u +%Y-%m-%dT%H:%MZ)"
echo
echo "| # | measure | vaultgram | baseline | ratio/value | goal | met |"
echo "|---|---|---|---|---|---|---|"
echo "| P1 | \`/kv get\` latency, socket + dispatcher ÷ bare vaultrs read (p50; p99 in brackets) | $P1_BROKER ms ($P1_BROKER99) | $P1_BARE ms ($P1_BARE99) | $P1_RATIO ($P1_RATIO99) | ≤ 1.10 | $(meets "$P1_RATIO" '<=' 1.10) |"
echo "| P2 | \`/kv get\` throughput, $CLIENTS socket clients ÷ Python hvac, $CLIENTS threads | $P2_BROKER ops/s | $P2_BASE ops/s | $P2_RATIO | ≥ 3 | $(meets "$P2_RATIO" '>=' 3) |"
echo "| P3 | idle RSS after ${IDLE_SECS} s, \`vaultgram run\` ÷ Python pyrogram + hvac | $((P3_RSS / 1024)) MiB ($P3_RSS kB) | $((P3_BASE / 1024)) MiB ($P3_BASE kB) | $P3_RATIO | ≤ 0.25 | $(meets "$P3_RATIO" '<=' 0.25) |"
echo "| P4 | cold start to ready, median of $STARTS (signal: $P4_SIGNAL) | $P4_MS ms | | $P4_MS ms | ≤ 300 ms | $(meets "$P4_MS" '<=' 300) |"
echo "| P5 | leader kill -9 → new leader's Telegram client started (lease_ttl_secs = $TTL) | $P5_S s | | $P5_S s | ≤ $P5_GOAL s (TTL + 2) | $(meets "$P5_S" '<=' "$P5_GOAL") |"
if ((HUNG > 0)); then
  echo
  echo "note: $HUNG \`vaultgram run\` process(es) ignored SIGTERM for 15 s and were killed (a shutdown bug, not a benchmark figure)."
fi
