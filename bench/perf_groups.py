#!/usr/bin/env python3
"""Sums a `perf record` profile of `vaultgram run` by component.

  perf_groups.py PERF_DATA [TOP]

perf samples cpu-clock (this VM has no hardware counters) without call
graphs (release builds have no frame pointers), so each sample is charged
to the function it was in; the groups map those functions to what they
serve (docs/PERFORMANCE.md). Prints the groups, then the TOP functions.
"""

import re
import subprocess
import sys

# First match wins; patterns are searched in "dso symbol".
GROUPS = [
    ("kernel: syscalls, network, scheduler", r"\[kernel|\[k\]"),
    ("TLS: ring crypto (AES-GCM, SHA)", r"ring::|ring_core|aes_|gcm_|sha256_block|sha512_block|chacha|x25519|ecp_nistz|bn_mul"),
    ("TLS: rustls records and handshakes", r"rustls::|webpki"),
    ("clap: command parsing", r"clap_builder::|clap::|clap_lex"),
    ("etcd: gRPC (tonic, h2, prost)", r"tonic::|h2::|prost::|etcd_client::"),
    ("HTTP to Vault (hyper, reqwest, rustify)", r"hyper::|hyper_util::|reqwest::|rustify::|http::|httparse"),
    ("JSON (serde_json)", r"serde_json::|serde::"),
    ("logging (tracing)", r"tracing_subscriber::|tracing_core::|tracing::|nu_ansi_term"),
    ("metrics (prometheus-client)", r"prometheus_client::"),
    ("async runtime (tokio)", r"tokio::|mio::|parking_lot|crossbeam"),
    ("memory (malloc, memcpy)", r"malloc|free|realloc|calloc|_int_|memcpy|memmove|memset|alloc::|cfree|tcache"),
    ("vaultgram's own code", r"vaultgram::"),
    ("libc, other", r"libc|ld-linux|\.so"),
]


def main():
    data = sys.argv[1]
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 25
    out = subprocess.run(
        ["perf", "report", "-i", data, "--stdio", "--no-children", "--sort", "dso,sym",
         "--percent-limit", "0"], capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+(.*)$", line)
        if m:
            rows.append((float(m.group(1)), m.group(2), m.group(3).strip()))
    sums = {}
    for pct, dso, sym in rows:
        text = f"{dso} {sym}"
        name = next((g for g, pat in GROUPS if re.search(pat, text)), "other")
        sums[name] = sums.get(name, 0) + pct
    samples = re.search(r"^# Samples: (\S+)", out, re.M)
    print(f"perf profile {data}: {samples.group(1) if samples else '?'} samples")
    for name, pct in sorted(sums.items(), key=lambda x: -x[1]):
        print(f"  {pct:5.1f}%  {name}")
    print(f"top {top} functions:")
    for pct, dso, sym in rows[:top]:
        print(f"  {pct:5.1f}%  {dso} {sym[:110]}")


if __name__ == "__main__":
    main()
