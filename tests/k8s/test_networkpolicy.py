#!/usr/bin/env python3
"""NetworkPolicy allow-list test for k8s/ (issue 6).

Renders `kubectl kustomize k8s/` (and the openbao-raft overlay) and asserts:
  * default-deny policies for Ingress and for Egress select every pod;
  * vaultgram's egress allow-list equals EXACTLY: DNS 53/udp+tcp to kube-dns
    in kube-system, Vault 8200, etcd 2379, the API server placeholder
    192.0.2.1/32 on 443+6443/tcp (confinement check), Telegram's ranges on
    443/tcp;
  * ingress to vaultgram is only 9090/tcp from namespace `monitoring`;
  * no policy anywhere allows 0.0.0.0/0 or ::/0 (or any prefix shorter
    than /8 v4, /32 v6), and no rule has an empty/missing `to:`/`from:`
    or an empty peer ({}), which would allow every address;
  * etcd: 2379 only from vault + vaultgram, 2380 only from etcd.

`--self-test` mutates the rendered YAML (adds 0.0.0.0/0, an empty `to:`,
a stray port, ...) and expects each mutation to be caught.
Ends with `N passed, 0 failed`; exit status non-zero on any failure.
"""
import copy
import ipaddress
import os
import subprocess
import sys

import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

TELEGRAM = {
    "91.108.56.0/22", "91.108.4.0/22", "91.108.8.0/22", "91.108.16.0/22",
    "91.108.12.0/22", "149.154.160.0/20", "91.105.192.0/23", "91.108.20.0/22",
    "185.76.151.0/24",
    "2001:b28:f23d::/48", "2001:b28:f23f::/48", "2001:67c:4e8::/48",
    "2001:b28:f23c::/48", "2a0a:f280::/32",
}
DNS_PEER = ("ns", (("kubernetes.io/metadata.name", "kube-system"),),
            "pod", (("k8s-app", "kube-dns"),))


def pod_peer(name):
    return ("pod", (("app.kubernetes.io/name", name),))


EXPECTED_VAULTGRAM_EGRESS = (
    {(DNS_PEER, "UDP", 53), (DNS_PEER, "TCP", 53),
     (pod_peer("vault"), "TCP", 8200), (pod_peer("etcd"), "TCP", 2379),
     (("cidr", "192.0.2.1/32"), "TCP", 443), (("cidr", "192.0.2.1/32"), "TCP", 6443)}
    | {(("cidr", c), "TCP", 443) for c in TELEGRAM}
)
EXPECTED_VAULTGRAM_INGRESS = {
    (("ns", (("kubernetes.io/metadata.name", "monitoring"),)), "TCP", 9090)}


def render(path):
    out = subprocess.run(["kubectl", "kustomize", path], check=True,
                         capture_output=True, text=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def peer_key(peer):
    """A hashable description of one `to:`/`from:` element."""
    if not peer:
        raise AssertionError("empty peer {} allows everything")
    if "ipBlock" in peer:
        ib = peer["ipBlock"]
        if set(peer) != {"ipBlock"} or ib.get("except"):
            raise AssertionError(f"unexpected ipBlock form {peer}")
        return ("cidr", str(ipaddress.ip_network(ib["cidr"], strict=True)))
    key = []
    for sel_name, tag in (("namespaceSelector", "ns"), ("podSelector", "pod")):
        if sel_name in peer:
            sel = peer[sel_name] or {}
            if sel.get("matchExpressions") or not sel.get("matchLabels"):
                raise AssertionError(f"{sel_name} without matchLabels selects too much: {peer}")
            key += [tag, tuple(sorted(sel["matchLabels"].items()))]
    extra = set(peer) - {"namespaceSelector", "podSelector"}
    if extra or not key:
        raise AssertionError(f"unknown peer fields {peer}")
    return tuple(key)


def rule_tuples(rule, direction):
    field = "to" if direction == "egress" else "from"
    peers = rule.get(field)
    if not peers:  # missing or [] => all peers
        raise AssertionError(f"{direction} rule with no/empty `{field}:` allows all: {rule}")
    ports = rule.get("ports")
    if not ports:
        raise AssertionError(f"{direction} rule without ports allows every port: {rule}")
    out = set()
    for p in ports:
        if "endPort" in p or not isinstance(p.get("port"), int):
            raise AssertionError(f"port must be one numeric port: {p}")
        for peer in peers:
            out.add((peer_key(peer), p.get("protocol", "TCP"), p["port"]))
    return out


def policies(docs):
    return [d for d in docs if d.get("kind") == "NetworkPolicy"]


def selects(pol, name):
    sel = pol["spec"].get("podSelector") or {}
    ml = sel.get("matchLabels") or {}
    if not ml and not sel.get("matchExpressions"):
        return True  # {} selects all pods
    return ml.get("app.kubernetes.io/name") == name


def allowed(docs, name, direction):
    """Union of what every policy selecting pods `name` allows."""
    out = set()
    for pol in policies(docs):
        if not selects(pol, name):
            continue
        for rule in pol["spec"].get(direction) or []:
            out |= rule_tuples(rule, direction)
    return out


def check_no_wide(docs):
    for pol in policies(docs):
        spec = pol["spec"]
        types = spec.get("policyTypes")
        if not types:
            raise AssertionError(f"{pol['metadata']['name']}: policyTypes must be explicit")
        for direction in ("ingress", "egress"):
            rules = spec.get(direction)
            if rules is None:
                continue
            if any(r in (None, {}) for r in rules):
                raise AssertionError(f"{pol['metadata']['name']}: empty {direction} rule allows all")
            for rule in rules:
                for (peer, _proto, _port) in rule_tuples(rule, direction):
                    if peer[0] == "cidr":
                        net = ipaddress.ip_network(peer[1])
                        limit = 8 if net.version == 4 else 32
                        if net.prefixlen < limit:
                            raise AssertionError(f"{pol['metadata']['name']}: too wide {net}")
        text = yaml.safe_dump(pol)
        for bad in ("0.0.0.0/0", "::/0"):
            if bad in text:
                raise AssertionError(f"{pol['metadata']['name']}: contains {bad}")


def check_default_deny(docs):
    seen = set()
    for pol in policies(docs):
        spec = pol["spec"]
        if spec.get("podSelector") not in ({}, None):
            continue
        for t in spec.get("policyTypes") or []:
            if not spec.get(t.lower()):
                seen.add(t)
    missing = {"Ingress", "Egress"} - seen
    if missing:
        raise AssertionError(f"no default-deny for {sorted(missing)}")
    for d in docs:
        if d.get("kind") == "Namespace":
            continue
        ns = d["metadata"].get("namespace")
        if d.get("kind") not in ("ClusterRoleBinding", "ClusterRole") and ns != "vaultgram":
            raise AssertionError(f"{d['kind']}/{d['metadata']['name']} outside namespace vaultgram")


def check_vaultgram(docs):
    eg = allowed(docs, "vaultgram", "egress")
    if eg != EXPECTED_VAULTGRAM_EGRESS:
        raise AssertionError("vaultgram egress differs: extra=%s missing=%s" % (
            sorted(map(str, eg - EXPECTED_VAULTGRAM_EGRESS)),
            sorted(map(str, EXPECTED_VAULTGRAM_EGRESS - eg))))
    ing = allowed(docs, "vaultgram", "ingress")
    if ing != EXPECTED_VAULTGRAM_INGRESS:
        raise AssertionError(f"vaultgram ingress differs: {sorted(map(str, ing))}")


def check_etcd(docs, vault_uses_etcd):
    ing = allowed(docs, "etcd", "ingress")
    want = {(pod_peer("vaultgram"), "TCP", 2379), (pod_peer("etcd"), "TCP", 2380)}
    if vault_uses_etcd:
        want.add((pod_peer("vault"), "TCP", 2379))
    if ing != want:
        raise AssertionError(f"etcd ingress differs: {sorted(map(str, ing))}")


def check_vault(docs, raft):
    ing = allowed(docs, "vault", "ingress")
    want = {(pod_peer("vaultgram"), "TCP", 8200), (pod_peer("vault"), "TCP", 8201)}
    if raft:
        want.add((pod_peer("vault"), "TCP", 8200))
    if ing != want:
        raise AssertionError(f"vault ingress differs: {sorted(map(str, ing))}")
    eg = allowed(docs, "vault", "egress")
    to_etcd = {t for t in eg if t[0] == pod_peer("etcd")}
    if raft and to_etcd:
        raise AssertionError("openbao-raft: vault must not reach etcd")
    if not raft and to_etcd != {(pod_peer("etcd"), "TCP", 2379)}:
        raise AssertionError(f"vault -> etcd differs: {to_etcd}")


def all_checks(docs, raft):
    check_default_deny(docs)
    check_no_wide(docs)
    check_vaultgram(docs)
    check_etcd(docs, vault_uses_etcd=not raft)
    check_vault(docs, raft)


def find(docs, name):
    return next(p for p in policies(docs) if p["metadata"]["name"] == name)


def mutations():
    """(description, function mutating a deep copy of the rendered docs)."""
    def add_cidr(cidr):
        def m(d):
            find(d, "vaultgram-egress")["spec"]["egress"][-1]["to"].append({"ipBlock": {"cidr": cidr}})
        return m

    def m_new_policy(d):
        d.append({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                  "metadata": {"name": "sneaky", "namespace": "vaultgram"},
                  "spec": {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "vault"}},
                           "policyTypes": ["Egress"],
                           "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}],
                                       "ports": [{"protocol": "TCP", "port": 443}]}]}})

    def m_empty_to(d):
        find(d, "vaultgram-egress")["spec"]["egress"].append({"ports": [{"protocol": "TCP", "port": 443}]})

    def m_empty_rule(d):
        find(d, "etcd-ingress")["spec"]["ingress"].append({})

    def m_empty_peer(d):
        find(d, "vault-ingress")["spec"]["ingress"][0]["from"].append({})

    def m_extra_port(d):
        find(d, "vaultgram-egress")["spec"]["egress"][-1]["ports"].append({"protocol": "TCP", "port": 80})

    def m_drop_range(d):
        find(d, "vaultgram-egress")["spec"]["egress"][-1]["to"].pop()

    def m_ingress_any_ns(d):
        find(d, "vaultgram-ingress")["spec"]["ingress"][0]["from"] = [{"namespaceSelector": {}}]

    def m_no_deny(d):
        d.remove(find(d, "default-deny-egress"))

    def m_etcd_open(d):
        find(d, "etcd-ingress")["spec"]["ingress"][0]["from"].append(
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "default"}}})

    return [
        ("vaultgram egress + 0.0.0.0/0", add_cidr("0.0.0.0/0")),
        ("vaultgram egress + ::/0", add_cidr("::/0")),
        ("vaultgram egress + 8.8.8.8/32", add_cidr("8.8.8.8/32")),
        ("new policy with 0.0.0.0/0", m_new_policy),
        ("rule without to:", m_empty_to),
        ("empty ingress rule {}", m_empty_rule),
        ("empty peer {}", m_empty_peer),
        ("extra port 80", m_extra_port),
        ("a Telegram range missing", m_drop_range),
        ("ingress from any namespace", m_ingress_any_ns),
        ("default-deny-egress removed", m_no_deny),
        ("etcd reachable from namespace default", m_etcd_open),
    ]


def main():
    self_test = "--self-test" in sys.argv[1:]
    variants = [("base (k8s/)", os.path.join(ROOT, "k8s"), False),
                ("overlay openbao-raft", os.path.join(ROOT, "k8s/overlays/openbao-raft"), True)]
    passed = failed = 0
    for label, path, raft in variants:
        docs = render(path)
        try:
            all_checks(docs, raft)
            print(f"ok   {label}: allow-lists exact, default-deny present, nothing wide")
            passed += 1
        except AssertionError as e:
            print(f"FAIL {label}: {e}")
            failed += 1
        if not self_test:
            continue
        for desc, mutate in mutations():
            mutated = copy.deepcopy(docs)
            mutate(mutated)
            # round-trip through YAML text, as a rendered file would be
            mutated = [d for d in yaml.safe_load_all(yaml.safe_dump_all(mutated)) if d]
            try:
                all_checks(mutated, raft)
                print(f"FAIL self-test {label}: mutation '{desc}' was NOT caught")
                failed += 1
            except AssertionError as e:
                print(f"ok   self-test {label}: '{desc}' caught ({e})"[:200])
                passed += 1
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
