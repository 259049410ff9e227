#!/usr/bin/env python3
"""Check the `storage "etcd"` stanza of a HashiCorp Vault config against the
documented parameters of Vault's etcd storage backend:
https://developer.hashicorp.com/vault/docs/configuration/storage/etcd
(address, discovery_srv, discovery_srv_name, etcd_api, ha_enabled, path,
sync, username, password, tls_ca_file, tls_cert_file, tls_key_file,
tls_server_name, max_receive_size, request_timeout, lock_timeout).

usage: check_etcd_storage.py FILE   exit 0 when valid, 1 with reasons."""
import re
import sys

DOCUMENTED = {
    "address", "discovery_srv", "discovery_srv_name", "etcd_api", "ha_enabled",
    "path", "sync", "username", "password", "tls_ca_file", "tls_cert_file",
    "tls_key_file", "tls_server_name", "max_receive_size", "request_timeout",
    "lock_timeout",
}
REQUIRED = {"address", "etcd_api", "ha_enabled", "path", "tls_ca_file",
            "tls_cert_file", "tls_key_file", "request_timeout", "lock_timeout"}


def stanza(text):
    text = "\n".join(l for l in text.splitlines() if not l.lstrip().startswith(("#", "//")))
    m = re.search(r'^\s*storage\s+"etcd"\s*\{', text, re.M)
    if not m:
        return None
    depth, i = 1, m.end()
    while depth and i < len(text):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        i += 1
    return text[m.end():i - 1]


def check(text):
    body = stanza(text)
    if body is None:
        return ['no storage "etcd" stanza']
    errors, keys = [], {}
    for line in body.splitlines():
        line = line.strip()
        if not line:
            continue
        m = re.fullmatch(r'([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"([^"]*)"', line)
        if not m:
            errors.append(f"not a simple string assignment (nested block or bad syntax): {line!r}")
            continue
        k, v = m.groups()
        if k in keys:
            errors.append(f"duplicate key {k}")
        keys[k] = v
        if k not in DOCUMENTED:
            errors.append(f"undocumented key {k}")
    for k in sorted(REQUIRED - keys.keys()):
        errors.append(f"missing required key {k}")
    if keys.get("etcd_api", "v3") != "v3":
        errors.append("etcd_api must be v3")
    if keys.get("ha_enabled", "true") != "true":
        errors.append('ha_enabled must be "true"')
    if keys.get("path", "/vault/") != "/vault/":
        errors.append('path must be "/vault/"')
    if "address" in keys:
        eps = [e for e in keys["address"].split(",") if e]
        if len(eps) != 3:
            errors.append(f"address must list the three etcd endpoints, got {len(eps)}")
        errors += [f"endpoint without TLS: {e}" for e in eps if not e.startswith("https://")]
    if "password" in keys:
        errors.append("password must come from ETCD_PASSWORD, not the config file")
    return errors


def main():
    errors = check(open(sys.argv[1], encoding="utf-8").read())
    for e in errors:
        print(f"{sys.argv[1]}: {e}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
