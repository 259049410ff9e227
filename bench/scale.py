#!/usr/bin/env python3
"""Scale figures for bench/run.sh (docs/PERFORMANCE.md, S1-S6).

  scale.py etcd-usage PREFIX
      keys=N bytes=M under PREFIX (key + value bytes), with etcdctl and the
      dev stack's ETCDCTL_* environment.
  scale.py run --bin B --config C --addr A --ca F --root-token F --work DIR
               --telegram-dir DIR --users N --agents N --telegram N
      With a running `vaultgram run` on C's socket (a file-backend Telegram
      leader): imports generated vpnbot files of N/10 and N users and a
      ValhallaBot export of N agents, exports mtproxy and compares, lists
      them over the socket, reads /audit 1000, and feeds Telegram messages
      through the file stand-in to measure tg/handled claims in etcd.

Prints `figure KEY VALUE` lines (bench/run.sh's --json) and `row | … |`
lines (its table). Replaces what the dev stack holds under
secret/vaultgram/mtproto/, vaultgram/mtproxy/ and agents/scale-*.
"""

import argparse
import base64
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
MESSAGE_LIMIT = 4096  # Telegram's, in UTF-16 units (src/transport/telegram/route.rs)


def etcd_usage(prefix):
    out = subprocess.run(
        ["etcdctl", "--command-timeout=30s", "get", "--prefix", prefix, "-w", "json"],
        check=True, capture_output=True, text=True).stdout
    kvs = json.loads(out).get("kvs", [])
    size = sum(len(base64.b64decode(kv["key"])) + len(base64.b64decode(kv.get("value", "")))
               for kv in kvs)
    return len(kvs), size


def messages(text):
    """How many Telegram messages route::split makes of TEXT (by lines)."""
    n, cur = 0, -1
    for line in text.split("\n"):
        length = len(line.encode("utf-16-le")) // 2
        if cur >= 0 and cur + 1 + length <= MESSAGE_LIMIT:
            cur += 1 + length
            continue
        if cur >= 0:
            n += 1
        if length > MESSAGE_LIMIT:
            n += length // MESSAGE_LIMIT
            length %= MESSAGE_LIMIT
        cur = length
    return n + (1 if cur >= 0 else 0)


class Vault:
    def __init__(self, addr, ca, token_file):
        import hvac
        self.c = hvac.Client(url=addr, token=open(token_file).read().strip(), verify=ca)

    def keys(self, path):
        """Every key below secret/PATH/ (recursively)."""
        try:
            r = self.c.secrets.kv.v2.list_secrets(path=path, mount_point="secret")
        except Exception:  # hvac raises InvalidPath for an empty directory
            return []
        out = []
        for k in r["data"]["keys"]:
            if k.endswith("/"):
                out += self.keys(f"{path}/{k[:-1]}")
            else:
                out.append(f"{path}/{k}")
        return out

    def wipe(self, paths):
        def one(p):
            self.c.secrets.kv.v2.delete_metadata_and_all_versions(path=p, mount_point="secret")
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(one, paths))


def baseline_ms(v, n=300):
    """What the import does per row, done by hvac directly: a read that
    finds nothing, then a create (cas=0), of N scratch records next to the
    imported ones; ms per record. Run at both tree sizes, it tells the
    server's own growth from the importer's."""
    import hvac.exceptions
    tag = secrets.token_hex(3)
    paths = [f"vaultgram/bench-baseline-{tag}/{i}" for i in range(n)]
    t0 = time.monotonic()
    for p in paths:
        try:
            v.c.secrets.kv.v2.read_secret_version(
                path=p, mount_point="secret", raise_on_deleted_version=True)
        except hvac.exceptions.InvalidPath:
            pass
        v.c.secrets.kv.v2.create_or_update_secret(
            path=p, secret={"secret": secrets.token_hex(16)}, cas=0, mount_point="secret")
    ms = (time.monotonic() - t0) / n * 1e3
    v.wipe(paths)
    return ms


def timed(cmd):
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.monotonic() - t0
    if r.returncode != 0:
        raise SystemExit(f"scale: {' '.join(cmd[:5])}… exited {r.returncode}: {r.stderr[-2000:]}")
    return dt, r


def vpnbot_file(path, n, offset):
    spec = {"generation": 7, "placeholder": secrets.token_hex(16),
            "entries": [{"secret": secrets.token_hex(16), "owner_user_id": offset + i,
                         "access_id": offset + i} for i in range(n)]}
    subprocess.run([sys.executable, os.path.join(FIXTURES, "vpnbot_managed_secrets.py"), path],
                   input=json.dumps(spec), text=True, check=True)


def valhalla_export(out_dir, n):
    rows = [{"agent": f"scale-{i:05d}", "token": secrets.token_urlsafe(32), "key": "current"}
            for i in range(n)]
    subprocess.run([sys.executable, os.path.join(FIXTURES, "valhalla_export.py"), out_dir],
                   input=json.dumps({"rows": rows}), text=True, check=True)


def ask(sock, line):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(120)
    s.connect(sock)
    t0 = time.monotonic()
    s.sendall(line.encode() + b"\n")
    reply = s.makefile().readline()
    dt = time.monotonic() - t0
    s.close()
    r = json.loads(reply)
    if not r.get("ok"):
        raise SystemExit(f"scale: {line}: {r}")
    return dt, r


def telegram(tg_dir, n, chat, sender):
    """N messages into the file stand-in's inbox, 50 at a time (its
    delivery is bounded like grammers'); waits for each batch's replies."""
    inbox, outbox = os.path.join(tg_dir, "inbox.jsonl"), os.path.join(tg_dir, "outbox.jsonl")

    def sends():
        try:
            with open(outbox) as f:
                return sum(1 for line in f if '"op":"send"' in line)
        except FileNotFoundError:
            return 0

    ids = []
    try:
        with open(inbox) as f:
            ids = [json.loads(line).get("id", 0) for line in f if line.strip()]
    except FileNotFoundError:
        pass
    next_id = max(ids, default=0) + 1
    base = sends()
    t0 = time.monotonic()
    done = 0
    while done < n:
        k = min(50, n - done)
        with open(inbox, "a") as f:
            for i in range(k):
                f.write(json.dumps({"id": next_id + done + i, "chat": chat, "sender": sender,
                                    "text": "/whoami"}) + "\n")
        done += k
        deadline = time.monotonic() + 60
        while sends() < base + done:
            if time.monotonic() > deadline:
                raise SystemExit(f"scale: Telegram stand-in answered {sends() - base} of {done}")
            time.sleep(0.02)
    return time.monotonic() - t0


def run(a):
    cfg = tomllib.load(open(a.config, "rb"))
    sock = cfg["ipc"]["socket"]
    admin = next(o for o in cfg["operators"] if o["role"] == "admin")
    prefix = cfg["etcd"]["prefix"]
    os.makedirs(a.work, exist_ok=True)
    v = Vault(a.addr, a.ca, a.root_token)
    figs, rows = {}, []

    def fig(k, val):
        figs[k] = val
        print(f"figure {k} {val}", flush=True)

    def clean():
        v.wipe(v.keys("vaultgram/mtproto") + v.keys("vaultgram/mtproxy")
               + [p for p in v.keys("vaultgram/agents") if p.rsplit("/", 1)[1].startswith("scale-")])

    base = [a.bin, "--config", a.config]
    # S1: import vpnbot, N/10 then N users into an empty tree each.
    small = max(1, a.users // 10)
    times, raw = {}, {}
    for n in (small, a.users):
        clean()
        f = os.path.join(a.work, f"vpnbot-{n}.json")
        vpnbot_file(f, n, 100000)
        times[n], _ = timed(base + ["import", "vpnbot", f, "--as", admin["name"]])
        raw[n] = baseline_ms(v)
        print(f"scale: import vpnbot {n}: {times[n]:.2f} s; hvac read+create "
              f"at that size: {raw[n]:.2f} ms per record", file=sys.stderr)
    per_small, per_big = times[small] / small * 1e3, times[a.users] / a.users * 1e3
    fig("s1_import_small_s", round(times[small], 2))
    fig("s1_import_s", round(times[a.users], 2))
    fig("s1_import_growth_per_user", round(per_big / per_small, 2))
    fig("s1_hvac_ms_small", round(raw[small], 2))
    fig("s1_hvac_ms", round(raw[a.users], 2))
    fig("s1_hvac_growth", round(raw[a.users] / raw[small], 2))
    rows.append(f"| S1 | `import vpnbot`: {small:,} users, {a.users:,} users (ms per user; hvac read + create "
                f"per record at the same sizes: {raw[small]:.2f}, {raw[a.users]:.2f} ms, ×{raw[a.users] / raw[small]:.2f}) | "
                f"{times[small]:.1f} s ({per_small:.2f}), {times[a.users]:.1f} s ({per_big:.2f}) | | "
                f"×{per_big / per_small:.2f} per user | linear (≤ ×1.25) | "
                f"{'yes' if per_big / per_small <= 1.25 else 'NO'} |")
    # S2: export, byte-identical.
    out = os.path.join(a.work, "export.json")
    t, _ = timed(base + ["export", "mtproxy", "--as", admin["name"], "-o", out])
    same = open(out, "rb").read() == open(os.path.join(a.work, f"vpnbot-{a.users}.json"), "rb").read()
    fig("s2_export_s", round(t, 2))
    fig("s2_export_identical", int(same))
    rows.append(f"| S2 | `export mtproxy` of {a.users:,} users, byte-identical to the import | "
                f"{t:.1f} s | | {'identical' if same else 'DIFFERENT'} | identical | {'yes' if same else 'NO'} |")
    # S3: import valhalla, N agents.
    vdir = os.path.join(a.work, "valhalla")
    os.makedirs(vdir, exist_ok=True)
    valhalla_export(vdir, a.agents)
    t, _ = timed(base + ["import", "valhalla", os.path.join(vdir, "export.json"),
                         "--key-file", os.path.join(vdir, "current.key"), "--as", admin["name"]])
    fig("s3_import_agents_s", round(t, 2))
    rows.append(f"| S3 | `import valhalla`: {a.agents:,} agents | {t:.1f} s | | "
                f"{t / a.agents * 1e3:.2f} ms per agent | | |")
    # S4: listings over the socket (as an admin): page 1, the last page, a prefix.
    for key, cmd in (("mtproto", "/mtproto list"), ("agent", "/agent list")):
        t1, r1 = ask(sock, cmd)
        pages = r1["data"].get("pages", 1)
        tl, rl = ask(sock, f"{cmd} -page={pages}")
        tp, rp = ask(sock, f"{cmd} {'1000' if key == 'mtproto' else 'scale-001'}")
        longest = max(len(r["text"]) for r in (r1, rl, rp))
        msgs = max(messages(r["text"]) for r in (r1, rl, rp))
        fig(f"s4_{key}_list_ms", round(t1 * 1e3, 1))
        fig(f"s4_{key}_list_last_ms", round(tl * 1e3, 1))
        fig(f"s4_{key}_list_prefix_ms", round(tp * 1e3, 1))
        fig(f"s4_{key}_list_pages", pages)
        fig(f"s4_{key}_list_chars", longest)
        rows.append(f"| S4 | `{cmd}` of {r1['data'].get('total')}: page 1, last page, prefix (ms) | "
                    f"{t1 * 1e3:.0f}, {tl * 1e3:.0f}, {tp * 1e3:.0f} | | {pages} pages, ≤ {longest} chars, "
                    f"{msgs} message(s) each | 1 message | {'yes' if msgs == 1 else 'NO'} |")
    # S5: /audit 1000.
    t, r = ask(sock, "/audit 1000")
    n = len(r["data"]["records"])
    fig("s5_audit_1000_ms", round(t * 1e3, 1))
    fig("s5_audit_1000_records", n)
    rows.append(f"| S5 | `/audit 1000`: {n} records read, page 1 shown | {t * 1e3:.0f} ms | | "
                f"{r['data']['pages']} pages, {len(r['text'])} chars, {messages(r['text'])} message(s) | "
                f"1 message | {'yes' if messages(r['text']) == 1 else 'NO'} |")
    # S6b: tg/handled claims per Telegram command.
    k0, b0 = etcd_usage(f"{prefix}tg/handled/")
    t = telegram(a.telegram_dir, a.telegram, admin["telegram_id"], admin["telegram_id"])
    k1, b1 = etcd_usage(f"{prefix}tg/handled/")
    ttl = cfg.get("telegram", {}).get("dedup_ttl_secs", 7 * 24 * 3600)  # config.rs default
    per = 10000 / a.telegram
    fig("s6_handled_keys_per_10k", round((k1 - k0) * per))
    fig("s6_handled_bytes_per_10k", round((b1 - b0) * per))
    fig("s6_telegram_ms_per_message", round(t / a.telegram * 1e3, 1))
    rows.append(f"| S6b | etcd: `tg/handled` claims per 10k Telegram commands (from {a.telegram:,}; "
                f"lease dedup_ttl_secs = {ttl}) | {round((k1 - k0) * per)} keys, "
                f"{round((b1 - b0) * per)} B | | {t / a.telegram * 1e3:.1f} ms per message | "
                f"bounded by the lease | |")
    for r in rows:
        print("row " + r)
    return 0


def main():
    if len(sys.argv) >= 3 and sys.argv[1] == "etcd-usage":
        k, b = etcd_usage(sys.argv[2])
        print(f"keys={k} bytes={b}")
        return 0
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["run"])
    for f in ("bin", "config", "addr", "ca", "root-token", "work", "telegram-dir"):
        p.add_argument(f"--{f}", required=True)
    for f in ("users", "agents", "telegram"):
        p.add_argument(f"--{f}", type=int, required=True)
    return run(p.parse_args())


if __name__ == "__main__":
    sys.exit(main())
