#!/usr/bin/env python3
"""The broker's pod on a real node, its NetworkPolicies enforced (issue 31).

Inside a network namespace of its own (the host's interfaces and firewall are
never touched) this starts a one-node cluster: etcd, kube-apiserver,
containerd + runc + the CNI bridge, kubelet, and later kube-router as the
NetworkPolicy enforcer. It applies k8s/ through tests/node/overlay (only the
image, the pull policy and the API server's address changed), runs the
Deployment's own pod template as a pod on the node, and listeners for every
destination the policies name. Then, from the broker pod's network
namespace, it probes a matrix of destinations:

  1. without the enforcer: every destination answers (a blocked connection
     looks like a closed port, so this proves each forbidden listener is
     alive);
  2. with kube-router: exactly what the policies allow;
  3. a policy deleted, and one widened to 0.0.0.0/0: the matrix changes, and
     the time until it does is measured; restored, it is exact again.

    node_test.py --netprobe BIN --broker BIN [--keep]

Needs root, kubelet/kube-apiserver/kubectl ($KUBE_BIN_DIR), kube-router
($KUBE_ROUTER), etcd, containerd, runc, /usr/lib/cni, iptables, nsenter.
Fixed host paths (so runs are serialized by a lock): /run/containerd/s
(containerd's shim sockets), /var/lib/cni (libcni's cache), the kubepods
cgroups, /run/netns/cni-*.
"""
import argparse
import datetime
import fcntl
import glob
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
NETNS = "vaultgram-node"
NODE = "vgnode"
NODE_IP = "172.30.0.1"  # the node's InternalIP: API server, kubelet
ELSEWHERE_IP = "172.30.0.9"  # an arbitrary address on the node's network
TELEGRAM_IP = "149.154.167.50"  # inside a Telegram range, simulated here
POD_CIDR = "10.88.0.0/24"
SERVICE_CIDR = "10.96.0.0/24"
KUBERNETES_SVC = "10.96.0.1"
CLUSTER_DNS = "10.96.0.10"  # the kubelet's clusterDNS: DNAT to the DNS pod
# Stand-ins for the Vault and etcd Services' addresses (no kube-proxy):
# DNAT to whichever server pod runs, as kube-proxy would.
VAULT_SVC = "10.96.1.20"
ETCD_SVC = "10.96.1.21"
API_PORT = 6443
KUBELET_PORT = 10250
PAUSE_IMAGE = "vaultgram.local/pause:node-test"
NETPROBE_IMAGE = "vaultgram.local/netprobe:node-test"
BROKER_IMAGE = "vaultgram.local/vaultgram:node-test"
SERVER_IMAGE = "vaultgram.local/{}:node-test"  # openbao, vault, etcd
LOCK = "/run/vaultgram-node-test.lock"

T0 = time.monotonic()


def log(msg):
    print(f"[node {time.monotonic() - T0:6.1f}s] {msg}", flush=True)


class Fail(Exception):
    pass


class Fatal(Fail):
    """Raised inside a wait: no point waiting any longer."""


class Mismatch(Fail):
    """The enforced matrix differs from what the policies allow."""


def run(cmd, check=True, ns=False, timeout=120, **kw):
    if ns:
        cmd = ["nsenter", f"--net=/run/netns/{NETNS}", "--"] + cmd
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise Fail(f"{' '.join(cmd[:6])}... exit {p.returncode}: {p.stderr.strip()[:800]}")
    return p


# ---------------------------------------------------------------- PKI ----
class Pki:
    def __init__(self, d):
        self.dir = d
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vaultgram node-test CA")])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.ca = os.path.join(d, "ca.pem")
        with open(self.ca, "wb") as f:
            f.write(self.cert.public_bytes(serialization.Encoding.PEM))

    def leaf(self, stem, cn, org=None, ips=(), dns=()):
        key = ec.generate_private_key(ec.SECP256R1())
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
        if org:
            attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
        now = datetime.datetime.now(datetime.timezone.utc)
        b = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attrs))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH, x509.ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
        )
        sans = [x509.IPAddress(ipaddress.ip_address(i)) for i in ips] + [x509.DNSName(n) for n in dns]
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = b.sign(self.key, hashes.SHA256())
        crt, k = os.path.join(self.dir, f"{stem}.pem"), os.path.join(self.dir, f"{stem}-key.pem")
        with open(crt, "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
        with open(os.open(k, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
            f.write(
                key.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                )
            )
        return crt, k


def kubeconfig(path, server, ca, crt, key):
    with open(path, "w") as f:
        json.dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "node", "cluster": {"server": server, "certificate-authority": ca}}],
                "users": [{"name": "u", "user": {"client-certificate": crt, "client-key": key}}],
                "contexts": [{"name": "c", "context": {"cluster": "node", "user": "u"}}],
                "current-context": "c",
            },
            f,
        )


# ------------------------------------------------------------ the node ----
class Node:
    def __init__(self, args):
        self.args = args
        self.kube = os.environ["KUBE_BIN_DIR"]
        self.kube_router = os.environ["KUBE_ROUTER"]
        self.dir = tempfile.mkdtemp(prefix="vaultgram-node-")
        os.chmod(self.dir, 0o755)
        self.procs = {}
        self.timings = {}

    # -- processes in the node's network namespace
    def spawn(self, name, cmd):
        logf = open(os.path.join(self.dir, f"{name}.log"), "w")
        p = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{NETNS}", "--"] + cmd,
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs[name] = p
        return p

    def stop(self, name, sig=signal.SIGTERM, wait=15):
        p = self.procs.pop(name, None)
        if p is None or p.poll() is not None:
            return
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            return
        try:
            p.wait(wait)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(5)

    def tail(self, name, n=15):
        try:
            with open(os.path.join(self.dir, f"{name}.log")) as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def wait(self, what, fn, timeout, every=0.2):
        end = time.monotonic() + timeout
        last = None
        while time.monotonic() < end:
            try:
                got = fn()
                if got:
                    return got
            except Fatal:
                raise
            except Fail as e:
                last = e
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise Fail(f"{name} exited ({p.returncode}) while waiting for {what}:\n{self.tail(name)}")
            time.sleep(every)
        raise Fail(f"timed out after {timeout}s waiting for {what}" + (f": {last}" if last else ""))

    def kubectl(self, *a, check=True, input=None):
        return run(
            [os.path.join(self.kube, "kubectl"), "--kubeconfig", self.admin_kc, "--request-timeout", "20s", *a],
            ns=True,
            check=check,
            input=input,
        )

    def get_for_apply(self, kind, name, ns="vaultgram"):
        """An object as JSON without the fields the server sets, ready to be
        changed and applied again (or re-created after a delete)."""
        obj = json.loads(self.kubectl("get", kind, name, "-n", ns, "-o", "json").stdout)
        for k in ("resourceVersion", "uid", "creationTimestamp", "managedFields", "generation"):
            obj["metadata"].pop(k, None)
        return obj

    def apply(self, obj):
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=json.dumps(obj))

    # -- set-up
    def netns(self):
        run(["ip", "netns", "add", NETNS])
        for c in (
            ["ip", "link", "set", "lo", "up"],
            # The node's "NIC": one end of a veth pair (no dummy module here).
            ["ip", "link", "add", "vg0", "type", "veth", "peer", "name", "vg1"],
            ["ip", "link", "set", "vg1", "up"],
            ["ip", "link", "set", "vg0", "up"],
            ["ip", "addr", "add", f"{NODE_IP}/24", "dev", "vg0"],
            ["ip", "addr", "add", f"{ELSEWHERE_IP}/32", "dev", "vg0"],
            ["ip", "addr", "add", f"{TELEGRAM_IP}/32", "dev", "vg0"],
            ["ip", "route", "add", "default", "dev", "vg0"],
            ["sysctl", "-qw", "net.ipv4.ip_forward=1"],
        ):
            run(c, ns=True)
        # Pod-to-pod traffic crosses the bridge at layer 2: only with
        # br_netfilter's hook does iptables (the enforcer) see it.
        run(["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"], ns=True)

    def control_plane(self):
        d = self.dir
        self.pki = pki = Pki(d)
        etcd_crt, etcd_key = pki.leaf("etcd", "etcd", ips=["127.0.0.1"])
        api_etcd = pki.leaf("apiserver-etcd", "kube-apiserver")
        api_crt, api_key = pki.leaf(
            "apiserver",
            "kube-apiserver",
            ips=[NODE_IP, KUBERNETES_SVC, "127.0.0.1"],
            dns=["kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"],
        )
        api_kubelet = pki.leaf("apiserver-kubelet", "kube-apiserver-kubelet-client")
        admin = pki.leaf("admin", "node-test-admin", org="system:masters")
        kubelet_client = pki.leaf("kubelet-client", f"system:node:{NODE}", org="system:nodes")
        self.kubelet_serving = pki.leaf("kubelet", NODE, ips=[NODE_IP], dns=[NODE])
        sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.sa_key = os.path.join(d, "sa-key.pem")
        with open(os.open(self.sa_key, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
            f.write(sa.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        self.admin_kc = os.path.join(d, "admin.kubeconfig")
        kubeconfig(self.admin_kc, f"https://{NODE_IP}:{API_PORT}", pki.ca, *admin)
        self.kubelet_kc = os.path.join(d, "kubelet.kubeconfig")
        kubeconfig(self.kubelet_kc, f"https://{NODE_IP}:{API_PORT}", pki.ca, *kubelet_client)

        self.spawn(
            "etcd",
            [
                "etcd", "--name", "node-etcd", "--data-dir", os.path.join(d, "etcd"),
                "--listen-client-urls", "https://127.0.0.1:2379", "--advertise-client-urls", "https://127.0.0.1:2379",
                "--listen-peer-urls", "http://0.0.0.0:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
                "--initial-cluster", "node-etcd=http://127.0.0.1:2380",
                "--cert-file", etcd_crt, "--key-file", etcd_key, "--trusted-ca-file", pki.ca, "--client-cert-auth",
            ],
        )
        self.spawn(
            "kube-apiserver",
            [
                os.path.join(self.kube, "kube-apiserver"),
                "--etcd-servers", "https://127.0.0.1:2379", "--etcd-cafile", pki.ca,
                "--etcd-certfile", api_etcd[0], "--etcd-keyfile", api_etcd[1],
                "--bind-address", "0.0.0.0", "--advertise-address", NODE_IP, f"--secure-port={API_PORT}",
                "--tls-cert-file", api_crt, "--tls-private-key-file", api_key, "--client-ca-file", pki.ca,
                "--authorization-mode", "Node,RBAC", "--anonymous-auth=false",
                "--enable-admission-plugins", "NodeRestriction",
                "--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
                "--service-account-key-file", self.sa_key, "--service-account-signing-key-file", self.sa_key,
                "--service-cluster-ip-range", SERVICE_CIDR,
                "--kubelet-client-certificate", api_kubelet[0], "--kubelet-client-key", api_kubelet[1],
                "--kubelet-certificate-authority", pki.ca,
                "--kubelet-preferred-address-types", "InternalIP",
                "--cert-dir", os.path.join(d, "apiserver-certs"), "--profiling=false",
            ],
        )
        self.wait("the API server", lambda: self.kubectl("get", "--raw", "/readyz", check=False).returncode == 0, 90)
        # The API server asks the kubelet for logs and exec as this user.
        self.kubectl(
            "create", "clusterrolebinding", "apiserver-kubelet", "--clusterrole=system:kubelet-api-admin",
            "--user=kube-apiserver-kubelet-client",
        )

    def runtime(self):
        d = self.dir
        for sub in ("containerd/root", "containerd/state", "cni/net.d", "cni/ipam", "kubelet", "images"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        self.cri = os.path.join(d, "containerd", "containerd.sock")
        with open(os.path.join(d, "cni/net.d/10-bridge.conflist"), "w") as f:
            json.dump(
                {
                    "cniVersion": "0.4.0",
                    "name": "node-test",
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": "cni0",
                            "isGateway": True,
                            "ipMasq": False,
                            "hairpinMode": True,
                            "ipam": {
                                "type": "host-local",
                                "dataDir": os.path.join(d, "cni/ipam"),
                                "ranges": [[{"subnet": POD_CIDR}]],
                                "routes": [{"dst": "0.0.0.0/0"}],
                            },
                        }
                    ],
                },
                f,
            )
        cfg = f"""version = 2
root = "{d}/containerd/root"
state = "{d}/containerd/state"
[grpc]
  address = "{self.cri}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # This VM lacks CAP_SYS_RESOURCE: runc cannot raise oom_score_adj as the
  # kubelet asks ("can't get final child's PID from pipe: EOF").
  restrict_oom_score_adj = true
  # Listeners on port 53 run as non-root (Pod Security restricted).
  enable_unprivileged_ports = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{d}/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
"""
        with open(os.path.join(d, "containerd.toml"), "w") as f:
            f.write(cfg)
        self.spawn("containerd", ["containerd", "--config", os.path.join(d, "containerd.toml")])
        self.wait("containerd", lambda: run(self.ctr("version"), check=False).returncode == 0, 30)

    def ctr(self, *a):
        return ["ctr", "--address", self.cri, "--namespace", "k8s.io", *a]

    def images(self):
        d = os.path.join(self.dir, "images")
        img = [sys.executable, os.path.join(HERE, "image.py")]
        np = self.args.netprobe
        run(img + [f"{d}/pause.tar", PAUSE_IMAGE, "--file", f"{np}=/pause:755", "--user", "65535:65535",
                   "--entrypoint", '["/pause","pause"]'])
        run(img + [f"{d}/netprobe.tar", NETPROBE_IMAGE, "--file", f"{np}=/netprobe:755",
                   "--entrypoint", '["/netprobe"]'])
        run(img + [f"{d}/broker.tar", BROKER_IMAGE] + broker_image_args(self.args.broker, d))
        servers = {"openbao": (self.args.bao, "/bin/bao"), "vault": (self.args.vault, "/bin/vault"),
                   "etcd": (shutil.which("etcd"), "/bin/etcd")}
        for t, (binary, dest) in servers.items():
            spec = []
            for f in binary_files(binary, dest):
                spec += ["--file", f]
            run(img + [f"{d}/{t}.tar", SERVER_IMAGE.format(t), *spec, "--user", "65534:65534",
                       "--entrypoint", json.dumps([dest])])
        for t in ("pause", "netprobe", "broker", *servers):
            run(self.ctr("images", "import", "--no-unpack=false", f"{d}/{t}.tar"), ns=True, timeout=300)

    def kubelet(self):
        d = self.dir
        resolv = os.path.join(d, "resolv.conf")
        with open(resolv, "w") as f:
            f.write("nameserver 10.96.0.10\n")
        cfg = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "containerRuntimeEndpoint": f"unix://{self.cri}",
            "address": NODE_IP,
            "port": KUBELET_PORT,
            "readOnlyPort": 0,
            "healthzPort": 0,
            "tlsCertFile": self.kubelet_serving[0],
            "tlsPrivateKeyFile": self.kubelet_serving[1],
            "authentication": {"anonymous": {"enabled": False}, "x509": {"clientCAFile": self.pki.ca},
                               "webhook": {"enabled": True}},
            "authorization": {"mode": "Webhook"},
            "failSwapOn": False,
            "resolvConf": resolv,
            "clusterDomain": "cluster.local",
            "clusterDNS": ["10.96.0.10"],
            "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": False,
            "syncFrequency": "5s",
            "fileCheckFrequency": "5s",
            "nodeStatusUpdateFrequency": "2s",
            "localStorageCapacityIsolation": True,
            "registerNode": True,
            "protectKernelDefaults": False,
            "makeIPTablesUtilChains": False,
            "podLogsDir": os.path.join(d, "pod-logs"),
        }
        path = os.path.join(d, "kubelet.json")
        with open(path, "w") as f:
            json.dump(cfg, f)
        t = time.monotonic()
        self.spawn(
            "kubelet",
            [
                os.path.join(self.kube, "kubelet"), "--config", path, "--kubeconfig", self.kubelet_kc,
                "--root-dir", os.path.join(d, "kubelet"), "--hostname-override", NODE, "--node-ip", NODE_IP, "--v=1",
            ],
        )

        def ready():
            p = self.kubectl("get", "node", NODE, "-o", "json", check=False)
            if p.returncode:
                return False
            conds = json.loads(p.stdout)["status"].get("conditions", [])
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)

        self.wait("the node to be Ready", ready, 120)
        self.timings["node Ready after kubelet start"] = time.monotonic() - t
        # No controller-manager: the node's pod range is set here (kube-router
        # reads it), and no kube-proxy: one NAT rule makes the `kubernetes`
        # Service address reach the API server.
        self.kubectl("patch", "node", NODE, "--type=merge", "-p", json.dumps({"spec": {"podCIDR": POD_CIDR, "podCIDRs": [POD_CIDR]}}))
        run(["iptables", "-t", "nat", "-A", "PREROUTING", "-d", KUBERNETES_SVC, "-p", "tcp", "--dport", "443",
             "-j", "DNAT", "--to-destination", f"{NODE_IP}:{API_PORT}"], ns=True)
        run(["iptables", "-t", "nat", "-N", "VG-SERVICES"], ns=True)
        run(["iptables", "-t", "nat", "-A", "PREROUTING", "-j", "VG-SERVICES"], ns=True)
        run(["iptables", "-t", "nat", "-A", "OUTPUT", "-j", "VG-SERVICES"], ns=True)  # the node's own clients

    def service(self, addr, port, pod_ip, protos=("tcp",)):
        """Points a Service stand-in address at a pod (replacing the last)."""
        rules = run(["iptables", "-t", "nat", "-S", "VG-SERVICES"], ns=True).stdout.splitlines()
        for r in rules:
            if r.startswith("-A ") and f"-d {addr}/32" in r and f"--dport {port} " in r:
                run(["iptables", "-t", "nat", "-D", *r.split()[1:]], ns=True)
        for proto in protos:
            run(["iptables", "-t", "nat", "-A", "VG-SERVICES", "-d", addr, "-p", proto, "--dport", str(port),
                 "-j", "DNAT", "--to-destination", f"{pod_ip}:{port}"], ns=True)

    # -- workloads
    def namespaces(self):
        rendered = run([os.path.join(self.kube, "kubectl"), "kustomize", os.path.join(HERE, "overlay")]).stdout
        with open(os.path.join(self.dir, "rendered.yaml"), "w") as f:
            f.write(rendered)
        for ns in ("monitoring", "elsewhere"):
            self.apply({"apiVersion": "v1", "kind": "Namespace",
                        "metadata": {"name": ns, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})
        self.kubectl("apply", "--server-side", "-f", os.path.join(self.dir, "rendered.yaml"))
        with open(self.pki.ca) as f:
            ca = f.read()
        # No controller-manager: what it would create in every namespace.
        for ns in ("default", "kube-system", "vaultgram", "monitoring", "elsewhere"):
            self.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": ns}})
            self.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kube-root-ca.crt", "namespace": ns},
                        "data": {"ca.crt": ca}})

    def broker_secrets(self):
        """What the broker pod mounts and a real deployment's operator
        creates: test values (the node test proves confinement, not login)."""
        etcd_crt, etcd_key = self.pki.leaf("broker-etcd", "vaultgram")
        files = {"ca.crt": self.pki.ca, "tls.crt": etcd_crt, "tls.key": etcd_key}
        args = ["create", "secret", "generic", "vaultgram-etcd-client", "-n", "vaultgram"]
        self.etcd_pw = {u: os.path.join(self.dir, f"etcd-{u}-password") for u in ("root", "vaultgram", "vault")}
        for path in self.etcd_pw.values():
            with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
                f.write(secrets.token_hex(16) + "\n")
        files["password"] = self.etcd_pw["vaultgram"]
        args += [f"--from-file={k}={v}" for k, v in files.items()]
        self.kubectl(*args)
        self.kubectl("create", "secret", "generic", "vault-ca", "-n", "vaultgram", f"--from-file=ca.crt={self.pki.ca}")

    def listener(self, ns, name, labels, ports, args=None):
        self.apply(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "namespace": ns, "labels": labels},
                "spec": {
                    "nodeName": NODE,
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": 1,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 65534, "runAsGroup": 65534,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [
                        {
                            "name": "netprobe",
                            "image": NETPROBE_IMAGE,
                            "imagePullPolicy": "Never",
                            "args": args or (["listen", *ports] if ports else ["pause"]),
                            "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                                "capabilities": {"drop": ["ALL"]}},
                        }
                    ],
                },
            }
        )

    def broker_pod(self, name="vaultgram-0"):
        """The Deployment's own pod template, as a pod on this node."""
        dep = json.loads(self.kubectl("get", "deployment", "vaultgram", "-n", "vaultgram", "-o", "json").stdout)
        tmpl = dep["spec"]["template"]
        spec = dict(tmpl["spec"], nodeName=NODE)
        spec.pop("affinity", None)  # scheduling hints; nothing schedules here
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": "vaultgram", "labels": tmpl["metadata"]["labels"]},
               "spec": spec}
        c = spec["containers"][0]
        if c["image"] != BROKER_IMAGE or c.get("imagePullPolicy") != "Never":
            raise Fail(f"the overlay did not set the broker image: {c['image']} {c.get('imagePullPolicy')}")
        self.apply(pod)

    def pod_ip(self, ns, name):
        p = self.kubectl("get", "pod", name, "-n", ns, "-o", "jsonpath={.status.podIP}", check=False)
        return p.stdout.strip() if p.returncode == 0 else ""

    def wait_running(self, ns, name, timeout=90):
        def ok():
            pod = json.loads(self.kubectl("get", "pod", name, "-n", ns, "-o", "json").stdout)
            st = pod.get("status", {})
            cs = st.get("containerStatuses", [])
            return st.get("podIP") and cs and all(c.get("state", {}).get("running") for c in cs)

        self.wait(f"pod {ns}/{name} running", ok, timeout)

    def pod_netns(self, ip):
        """The network namespace (under /run/netns) holding a pod's address."""
        for n in os.listdir("/run/netns"):
            if not n.startswith("cni-"):
                continue
            p = run(["ip", "-n", n, "-4", "-o", "addr"], check=False)
            if re.search(rf"inet {re.escape(ip)}/", p.stdout):
                return f"/run/netns/{n}"
        raise Fail(f"no network namespace holds {ip}")


def binary_files(binary, dest):
    """image.py --file specs: a binary and the shared libraries it loads."""
    files = [f"{binary}={dest}:755"]
    p = run(["ldd", binary], check=False)  # "not a dynamic executable": static
    for lib in re.findall(r"(/\S+) \(0x", p.stdout):
        files.append(f"{os.path.realpath(lib)}={lib}:755")
    return files


def broker_image_args(binary, workdir):
    """The broker's image: what userbot/Containerfile's final stage ships
    (its USER, ENTRYPOINT, CMD and EXPOSE are read from it, so the two cannot
    drift), built from the CI-built binary. The binary here is linked against
    glibc, so its shared libraries come along (the Containerfile builds a
    static musl binary instead)."""
    with open(os.path.join(ROOT, "userbot", "Containerfile")) as f:
        text = f.read()
    final = text[text.rindex("\nFROM "):]
    user = re.search(r"^USER (\S+)$", final, re.M).group(1)
    entry = re.search(r"^ENTRYPOINT (\[.*\])$", final, re.M).group(1)
    cmd = re.search(r"^CMD (\[.*\])$", final, re.M).group(1)
    expose = re.search(r"^EXPOSE (\d+)$", final, re.M).group(1)
    dest = re.search(r"^COPY --from=builder \S+ \S+ /out/vaultgram (\S+)$", final, re.M).group(1)
    if json.loads(entry) != [dest]:
        raise Fail(f"Containerfile: ENTRYPOINT {entry} is not the copied binary {dest}")
    files = binary_files(binary, dest)
    uid, gid = user.split(":")
    passwd, group = os.path.join(workdir, "passwd"), os.path.join(workdir, "group")
    with open(passwd, "w") as f:
        f.write(f"root:x:0:0:root:/root:/sbin/nologin\nvaultgram:x:{uid}:{gid}::/nonexistent:/sbin/nologin\n")
    with open(group, "w") as f:
        f.write(f"root:x:0:\nvaultgram:x:{gid}:\n")
    files += [f"{passwd}=/etc/passwd:644", f"{group}=/etc/group:644",
              "/etc/ssl/certs/ca-certificates.crt=/etc/ssl/certs/ca-certificates.crt:644"]
    out = []
    for spec in files:
        out += ["--file", spec]
    return out + ["--user", user, "--entrypoint", entry, "--cmd", cmd, "--expose", f"{expose}/tcp"]


# ------------------------------------------------------------ teardown ----
def kill_netns_and_pods(keep_dir=None):
    """Everything a run (this one or a crashed earlier one) left behind."""
    # Pods' processes live in the kubepods cgroups; shims and daemons in the
    # node's network namespace.
    for _ in range(3):
        pids = set()
        for root, _dirs, files in os.walk("/sys/fs/cgroup/pids/kubepods"):
            if "cgroup.procs" in files:
                with open(os.path.join(root, "cgroup.procs")) as f:
                    pids.update(int(x) for x in f.read().split())
        p = run(["ip", "netns", "pids", NETNS], check=False)
        pids.update(int(x) for x in p.stdout.split())
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if not pids:
            break
        time.sleep(0.5)
    # Mounts: pod volumes under the kubelet dirs, containerd's rootfs, netns.
    with open("/proc/self/mounts") as f:
        mounts = [line.split()[1] for line in f]
    for m in reversed(mounts):
        if "/vaultgram-node-" in m or m.startswith("/run/netns/cni-") or m.startswith("/run/containerd/"):
            subprocess.run(["umount", "-l", m], capture_output=True)
    for n in os.listdir("/run/netns") if os.path.isdir("/run/netns") else []:
        if n.startswith("cni-"):
            try:
                os.unlink(f"/run/netns/{n}")
            except OSError:
                pass
    run(["ip", "netns", "del", NETNS], check=False)
    # kubepods cgroups, deepest first.
    for ctrl in os.listdir("/sys/fs/cgroup"):
        base = f"/sys/fs/cgroup/{ctrl}/kubepods"
        if os.path.isdir(base):
            for root, dirs, _files in sorted(os.walk(base), key=lambda w: -w[0].count("/")):
                try:
                    os.rmdir(root)
                except OSError:
                    pass
    shutil.rmtree("/var/lib/cni", ignore_errors=True)
    shutil.rmtree("/run/containerd/s", ignore_errors=True)


# -------------------------------------------------------------- matrix ----
def destinations(ips):
    """(label, probe destination, allowed by the policies)."""
    return [
        ("Vault API port (vault pod, :8200)", f"tcp:{ips['vault']}:8200", True),
        ("etcd client port (etcd pod, :2379)", f"tcp:{ips['etcd']}:2379", True),
        ("DNS over UDP (kube-dns pod, :53)", f"udp:{ips['dns']}:53", True),
        ("DNS over TCP (kube-dns pod, :53)", f"tcp:{ips['dns']}:53", True),
        (f"API server ({NODE_IP}:{API_PORT})", f"tcp:{NODE_IP}:{API_PORT}", True),
        (f"kubernetes Service ({KUBERNETES_SVC}:443)", f"tcp:{KUBERNETES_SVC}:443", True),
        (f"Telegram range ({TELEGRAM_IP}:443, simulated)", f"tcp:{TELEGRAM_IP}:443", True),
        ("Vault cluster port (vault pod, :8201)", f"tcp:{ips['vault']}:8201", False),
        ("etcd peer port (etcd pod, :2380)", f"tcp:{ips['etcd']}:2380", False),
        ("another pod in vaultgram (:8080)", f"tcp:{ips['bystander']}:8080", False),
        ("Vault-labelled pod in another namespace (:8200)", f"tcp:{ips['vault-elsewhere']}:8200", False),
        ("kube-dns-labelled pod in another namespace (udp :53)", f"udp:{ips['dns-elsewhere']}:53", False),
        ("kube-dns-labelled pod in another namespace (tcp :53)", f"tcp:{ips['dns-elsewhere']}:53", False),
        (f"kubelet ({NODE_IP}:{KUBELET_PORT})", f"tcp:{NODE_IP}:{KUBELET_PORT}", False),
        (f"another port on the node ({NODE_IP}:12379)", f"tcp:{NODE_IP}:12379", False),
        (f"an arbitrary address ({ELSEWHERE_IP}:443)", f"tcp:{ELSEWHERE_IP}:443", False),
        (f"Telegram range, wrong port ({TELEGRAM_IP}:80)", f"tcp:{TELEGRAM_IP}:80", False),
    ]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--netprobe", required=True)
    ap.add_argument("--broker", required=True)
    ap.add_argument("--bao", required=True, help="the OpenBao server binary")
    ap.add_argument("--vault", required=True, help="the HashiCorp Vault server binary")
    ap.add_argument("--mutate", choices=["drop-vault-egress", "widen-egress"],
                    help="break the policy first: the run must fail with exit 3 (a mismatch)")
    ap.add_argument("--keep", action="store_true", help="leave the node running (debugging; the next run cleans up)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("node_test: needs root (network namespaces, containerd, kubelet)", file=sys.stderr)
        return 2
    lockf = open(LOCK, "w")
    fcntl.flock(lockf, fcntl.LOCK_EX)
    kill_netns_and_pods()
    for old in glob.glob(os.path.join(tempfile.gettempdir(), "vaultgram-node-*")):
        shutil.rmtree(old, ignore_errors=True)  # a crashed or --keep run's
    node = Node(args)
    log(f"work dir {node.dir}")
    ok = False
    mismatch = False
    try:
        ok = scenario(node)
    except Mismatch as e:
        mismatch = True
        print(f"node_test: MISMATCH: {e}", file=sys.stderr)
    except Fail as e:
        print(f"node_test: FAILED: {e}", file=sys.stderr)
        for name in ("kubelet", "containerd", "kube-router", "kube-apiserver"):
            t = node.tail(name, 8)
            if t:
                print(f"--- {name} (last lines)\n{t}", file=sys.stderr)
    finally:
        if not args.keep:
            for name in ("kube-router", "kubelet", "containerd", "kube-apiserver", "etcd"):
                node.stop(name)
            kill_netns_and_pods()
            subprocess.run(["umount", "-R", "-l", node.dir], capture_output=True)
            shutil.rmtree(node.dir, ignore_errors=True)
            log("torn down")
    return 0 if ok else 3 if mismatch else 1


def scenario(node):
    node.netns()
    node.control_plane()
    log("API server ready")
    node.runtime()
    node.images()
    log("containerd up, images imported")
    node.kubelet()
    log(f"node Ready ({node.timings['node Ready after kubelet start']:.1f}s after kubelet start)")
    node.namespaces()
    if node.args.mutate:
        mutate(node, node.args.mutate)
    # The cluster DNS first (the servers' names), then the listeners the
    # matrix probes (every one alive: checked without the enforcer).
    node.listener("kube-system", "kube-dns", {"k8s-app": "kube-dns"}, [], args=["dns", *dns_records()])
    node.listener("vaultgram", "bystander", {"app.kubernetes.io/name": "bystander"}, ["tcp:8080"])
    node.listener("elsewhere", "vault-elsewhere", {"app.kubernetes.io/name": "vault"}, ["tcp:8200"])
    node.listener("elsewhere", "dns-elsewhere", {"k8s-app": "kube-dns"}, ["udp:53", "tcp:53"])
    node.listener("monitoring", "scraper", {"app.kubernetes.io/name": "prometheus"}, [])
    node.listener("elsewhere", "intruder", {"app.kubernetes.io/name": "intruder"}, [])
    # Host-side listeners in the node's namespace: the node's other ports.
    np = node.args.netprobe
    node.spawn("host-listeners", [np, "listen", "tcp:443", "tcp:80", "tcp:12379"])
    t = time.monotonic()
    pods = [("vaultgram", "bystander"), ("kube-system", "kube-dns"), ("elsewhere", "vault-elsewhere"),
            ("elsewhere", "dns-elsewhere"), ("monitoring", "scraper"), ("elsewhere", "intruder")]
    for ns, name in pods:
        node.wait_running(ns, name)
    node.timings["6 listener pods Running"] = time.monotonic() - t
    node.service(CLUSTER_DNS, 53, node.pod_ip("kube-system", "kube-dns"), ("udp", "tcp"))
    # The real servers the broker uses: etcd and OpenBao, each in a pod.
    node.broker_secrets()
    broker_config(node)
    etcd_ip = start_etcd(node)
    vault_env, vault_cli, vault_ip = start_vault(node, "openbao")
    broker_ready(node, "openbao", "vaultgram-0", vault_env, vault_cli)
    ips = {
        "vault": vault_ip,
        "etcd": etcd_ip,
        "bystander": node.pod_ip("vaultgram", "bystander"),
        "dns": node.pod_ip("kube-system", "kube-dns"),
        "vault-elsewhere": node.pod_ip("elsewhere", "vault-elsewhere"),
        "dns-elsewhere": node.pod_ip("elsewhere", "dns-elsewhere"),
        "broker": node.pod_ip("vaultgram", "vaultgram-0"),
    }
    log(f"pods running: {ips}")
    broker_ns = node.pod_netns(ips["broker"])
    dests = destinations(ips)

    def probe_from_broker(subset=None, timeout="1s"):
        ds = [d for d in dests if subset is None or d[1] in subset]
        p = run(["nsenter", f"--net={broker_ns}", "--", np, "probe", "-timeout", timeout, *[d[1] for d in ds]])
        return {line.split(" ", 1)[0]: line.endswith(" open") for line in p.stdout.splitlines()}

    sources = {f"{ns}/{name} -> broker :9090": node.pod_netns(node.pod_ip(ns, name))
               for ns, name in (("monitoring", "scraper"), ("elsewhere", "intruder"))}

    def probe_ingress():
        res = {}
        for label, netns in sources.items():
            p = run(["nsenter", f"--net={netns}", "--", np, "probe", "-timeout", "1s", f"tcp:{ips['broker']}:9090"])
            res[label] = p.stdout.strip().endswith(" open")
        return res

    matrix = {}
    got = probe_from_broker()
    ing = probe_ingress()
    dead = [lbl for lbl, dst, _ in dests if not got[dst]] + [k for k, v in ing.items() if not v]
    for lbl, dst, allowed in dests:
        matrix[lbl] = [allowed, got[dst]]
    if dead:
        raise Fail(f"without the enforcer these destinations do not answer (listener dead?): {dead}")
    log(f"without the enforcer: all {len(dests)} destinations and both ingress sources answer")

    # -- the enforcer
    t = time.monotonic()
    node.spawn(
        "kube-router",
        [node.kube_router, "--kubeconfig", node.admin_kc, "--run-firewall=true", "--run-router=false",
         "--run-service-proxy=false", "--enable-cni=false", "--enable-ipv6=false", "--hostname-override", NODE,
         "--health-port=0", "--metrics-port=0", "--iptables-sync-period=5m",
         # kube-router lets pods reach this range unfiltered (Services); its
         # default, 10.96.0.0/12, would cover more than the API server's.
         f"--service-cluster-ip-range={SERVICE_CIDR}"],
    )
    expect = {dst: allowed for _, dst, allowed in dests}
    expect_ing = {"monitoring/scraper -> broker :9090": True, "elsewhere/intruder -> broker :9090": False}
    seen = []

    def settled():
        # In force once something is blocked and three probes in a row agree
        # (the policy may be wrong: waiting for the expected matrix would
        # hide that).
        seen.append((probe_from_broker(), probe_ingress()))
        return len(seen) > 2 and seen[-1] == seen[-2] == seen[-3] and not all(seen[-1][0].values())

    node.wait("kube-router's rules in force", settled, 60, every=0.3)
    node.timings["enforcer start -> rules in force"] = time.monotonic() - t
    got, ing = seen[-1]
    for lbl, dst, allowed in dests:
        matrix[lbl].append(got[dst])
    print_matrix(matrix, ing, expect_ing)
    if ing != expect_ing:
        raise Mismatch(f"ingress with the enforcer: {ing}, policy says {expect_ing}")

    # -- the policies change under the pod
    vault = f"tcp:{ips['vault']}:8200"
    anywhere = f"tcp:{ELSEWHERE_IP}:443"
    egress = node.get_for_apply("networkpolicy", "vaultgram-egress")
    t = time.monotonic()
    node.kubectl("delete", "networkpolicy", "vaultgram-egress", "-n", "vaultgram")
    node.wait("Vault blocked after the egress policy is deleted", lambda: probe_from_broker({vault}, "200ms")[vault] is False,
              10, every=0.05)
    node.timings["egress policy deleted -> Vault blocked"] = time.monotonic() - t
    t = time.monotonic()
    node.apply(egress)
    node.wait("Vault allowed after the egress policy is restored", lambda: probe_from_broker({vault}, "200ms")[vault] is True,
              10, every=0.05)
    node.timings["egress policy restored -> Vault allowed"] = time.monotonic() - t
    wide = json.loads(json.dumps(egress))
    wide["spec"]["egress"].append({"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]})
    t = time.monotonic()
    node.apply(wide)
    node.wait("an arbitrary address reachable after widening to 0.0.0.0/0",
              lambda: probe_from_broker({anywhere}, "200ms")[anywhere] is True, 10, every=0.05)
    node.timings["egress widened to 0.0.0.0/0 -> arbitrary address open"] = time.monotonic() - t
    widened = probe_from_broker()
    opened = [lbl for lbl, dst, allowed in dests if not allowed and widened[dst]]
    log(f"widened: {len(opened)} forbidden destinations now open: {opened}")
    node.apply(egress)
    node.wait("the exact matrix after the policy is restored",
              lambda: probe_from_broker() == expect and probe_ingress() == expect_ing, 30, every=0.2)
    log("restored: the matrix is exact again")
    # -- /readyz follows the policies (OpenBao), then the same broker pod
    # template against HashiCorp Vault, with the enforcer running.
    readyz_follows_policies(node, "openbao", "vaultgram-0")
    node.kubectl("delete", "pod", "vaultgram-0", "openbao-server", "-n", "vaultgram", "--wait=true", "--timeout=60s")
    vault_env, vault_cli, _ = start_vault(node, "vault")
    broker_ready(node, "vault", "vaultgram-1", vault_env, vault_cli)
    readyz_follows_policies(node, "vault", "vaultgram-1")
    for k, v in node.timings.items():
        log(f"timing: {k}: {v:.2f}s")
    log(f"memory: {node_rss_mib():.0f} MiB resident in the node's namespace (daemons, shims, listeners)")
    return True


def node_rss_mib():
    total = 0
    for pid in run(["ip", "netns", "pids", NETNS], check=False).stdout.split():
        try:
            with open(f"/proc/{pid}/status") as f:
                total += next((int(l.split()[1]) for l in f if l.startswith("VmRSS:")), 0)
        except OSError:
            pass
    return total / 1024


def server_pod(node, name, image, labels, args, volumes, mounts, sa=None):
    spec = {
        "nodeName": NODE,
        "automountServiceAccountToken": sa is not None,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 1,
        "securityContext": {"runAsNonRoot": True, "runAsUser": 65534, "runAsGroup": 65534, "fsGroup": 65534,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{
            "name": "server", "image": image, "imagePullPolicy": "Never", "args": args,
            "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]}},
            "volumeMounts": mounts + [{"name": "data", "mountPath": "/data"}, {"name": "tmp", "mountPath": "/tmp"}],
        }],
        "volumes": volumes + [{"name": "data", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}],
    }
    if sa:
        spec["serviceAccountName"] = sa
    node.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "vaultgram", "labels": labels},
                "spec": spec})
    node.wait_running("vaultgram", name)
    return node.pod_ip("vaultgram", name)


def tls_secret(node, name, crt, key):
    node.kubectl("create", "secret", "generic", name, "-n", "vaultgram", f"--from-file=tls.crt={crt}",
                 f"--from-file=tls.key={key}", f"--from-file=ca.crt={node.pki.ca}")
    # 0444 in the pod: the servers run as 65534 (test-only key material).
    return {"name": "tls", "secret": {"secretName": name, "defaultMode": 0o444}}


def start_etcd(node):
    names = [f"etcd-{i}.etcd.vaultgram.svc" for i in range(3)]
    crt, key = node.pki.leaf("etcd-server", "etcd-0", ips=["127.0.0.1", ETCD_SVC], dns=names)
    vol = tls_secret(node, "node-etcd-tls", crt, key)
    ip = server_pod(
        node, "etcd-server", SERVER_IMAGE.format("etcd"), {"app.kubernetes.io/name": "etcd"},
        ["--name", "etcd-0", "--data-dir", "/data/etcd", "--listen-client-urls", "https://0.0.0.0:2379",
         "--advertise-client-urls", f"https://{names[0]}:2379", "--listen-peer-urls", "http://0.0.0.0:2380",
         "--initial-advertise-peer-urls", "http://127.0.0.1:2380", "--initial-cluster", "etcd-0=http://127.0.0.1:2380",
         "--cert-file", "/tls/tls.crt", "--key-file", "/tls/tls.key", "--trusted-ca-file", "/tls/ca.crt",
         "--client-cert-auth"],
        [vol], [{"name": "tls", "mountPath": "/tls", "readOnly": True}])
    node.service(ETCD_SVC, 2379, ip)
    root = node.pki.leaf("etcd-root", "root")
    env = dict(os.environ, ETCDCTL_API="3", ETCDCTL_ENDPOINTS=f"https://{ETCD_SVC}:2379", ETCDCTL_CACERT=node.pki.ca,
               ETCDCTL_CERT=root[0], ETCDCTL_KEY=root[1], ETCD_ROOT_PASSWORD_FILE=node.etcd_pw["root"],
               ETCD_VAULTGRAM_PASSWORD_FILE=node.etcd_pw["vaultgram"], ETCD_VAULT_PASSWORD_FILE=node.etcd_pw["vault"])
    node.wait("etcd in its pod", lambda: run(["etcdctl", "--command-timeout=2s", "endpoint", "health"], ns=True,
                                            check=False, env=env).returncode == 0, 30, every=0.5)
    # The deployment's own RBAC bootstrap (what Ansible runs).
    p = run([os.path.join(ROOT, "etcd", "bootstrap-rbac.sh")], ns=True, env=env)
    log(f"etcd pod {ip}: {p.stderr.strip().splitlines()[-1] if p.stderr.strip() else 'rbac ok'}")
    return ip


def start_vault(node, server):
    """OpenBao or HashiCorp Vault (raft, TLS) in a Vault-labelled pod, its
    ServiceAccount `vault` (system:auth-delegator) mounted: Vault reviews the
    broker's token with its own, as in a real deployment."""
    cli = node.args.bao if server == "openbao" else node.args.vault
    crt, key = node.pki.leaf(f"{server}-server", "vault", ips=["127.0.0.1"], dns=["vault.vaultgram.svc"])
    vol = tls_secret(node, f"node-{server}-tls", crt, key)
    hcl = """ui = false
disable_mlock = true
storage "raft" {
  path    = "/data"
  node_id = "vault-0"
}
listener "tcp" {
  address         = "0.0.0.0:8200"
  cluster_address = "0.0.0.0:8201"
  tls_cert_file   = "/tls/tls.crt"
  tls_key_file    = "/tls/tls.key"
}
api_addr     = "https://vault.vaultgram.svc:8200"
cluster_addr = "https://127.0.0.1:8201"
"""
    node.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"node-{server}-config", "namespace": "vaultgram"},
                "data": {"server.hcl": hcl}})
    ip = server_pod(
        node, f"{server}-server", SERVER_IMAGE.format(server), {"app.kubernetes.io/name": "vault"},
        ["server", "-config=/config/server.hcl"],
        [vol, {"name": "config", "configMap": {"name": f"node-{server}-config"}}],
        [{"name": "tls", "mountPath": "/tls", "readOnly": True}, {"name": "config", "mountPath": "/config", "readOnly": True}],
        sa="vault")
    node.service(VAULT_SVC, 8200, ip)
    env = dict(os.environ, VAULT_ADDR=f"https://{VAULT_SVC}:8200", VAULT_CACERT=node.pki.ca,
               VAULT_TLS_SERVER_NAME="vault.vaultgram.svc", HOME=node.dir)
    for k in ("VAULT_TOKEN", "BAO_ADDR", "BAO_TOKEN"):
        env.pop(k, None)
    node.wait(f"{server} listening", lambda: run([cli, "status"], ns=True, check=False, env=env).returncode == 2,
              30, every=0.3)
    init = json.loads(run([cli, "operator", "init", "-key-shares=1", "-key-threshold=1", "-format=json"],
                          ns=True, env=env).stdout)
    unseal = init.get("unseal_keys_b64") or init["keys_base64"]
    # The key goes on stdin, never on a command line.
    run(["curl", "-sSf", "--cacert", node.pki.ca, "--resolve", f"vault.vaultgram.svc:8200:{VAULT_SVC}", "-X", "PUT",
         "--data-binary", "@-", "https://vault.vaultgram.svc:8200/v1/sys/unseal"], ns=True,
        input=json.dumps({"key": unseal[0]}))
    env["VAULT_TOKEN"] = init["root_token"]
    node.wait(f"{server} active", lambda: run([cli, "read", "-format=json", "sys/leader"], ns=True, check=False,
                                              env=env).stdout.count('"is_self": true') == 1, 60, every=0.5)
    t = time.monotonic()
    apply_env = dict(env, VAULT_CLI=cli, VAULTGRAM_K8S_HOST=f"https://{KUBERNETES_SVC}:443")
    run([os.path.join(ROOT, "vault-policies", "apply.sh")], ns=True, env=apply_env, timeout=300)
    log(f"{server} pod {ip}: initialised, unsealed, vault-policies/apply.sh in {time.monotonic() - t:.1f}s")
    return env, cli, ip


def broker_config(node):
    """The ConfigMap as shipped, but Telegram off (no Telegram here: /readyz
    would rightly fail a leader without a client) and the confinement
    re-checked every 10 s (the least allowed) instead of 300: the test
    measures the reaction."""
    cm = node.get_for_apply("configmap", "vaultgram-config")
    toml = cm["data"]["vaultgram.toml"]
    for old, new in (("\n[telegram]\n", "\n[telegram]\nenabled = false\n"),
                     ("\nrecheck_secs = 300\n", "\nrecheck_secs = 10\n")):
        if toml.count(old) != 1:
            raise Fail(f"k8s/ ConfigMap changed: {old.strip()!r} is not there once; update the node test")
        toml = toml.replace(old, new)
    cm["data"]["vaultgram.toml"] = toml
    node.apply(cm)


def readyz(node, ip):
    p = run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2", f"http://{ip}:9090/readyz"],
            ns=True, check=False)
    return p.stdout.strip()


def broker_ready(node, server, name, env, cli):
    """The Deployment's pod template as pod NAME, Ready against SERVER: its
    Vault token came from auth/kubernetes/login with the projected token."""
    t = time.monotonic()
    node.broker_pod(name)

    def ready():
        pod = json.loads(node.kubectl("get", "pod", name, "-n", "vaultgram", "-o", "json").stdout)
        cs = pod.get("status", {}).get("containerStatuses", [])
        # `run` waits for a Vault or etcd that refuses at first (a new pod's
        # address reaches the peers' allow-lists about a second late): it
        # must not need a restart.
        if cs and cs[0].get("restartCount", 0) > 0:
            raise Fatal(f"the broker restarted in its pod:\n{broker_log(node, name)}")
        return any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", []))

    try:
        node.wait(f"the broker pod Ready against {server}", ready, 120, every=0.5)
    except Fail as e:
        raise Fail(f"{e}\n--- broker log\n{broker_log(node, name)}") from None
    node.timings[f"{server}: broker pod created -> Ready (kubernetes login, etcd, confinement)"] = time.monotonic() - t
    pod = json.loads(node.kubectl("get", "pod", name, "-n", "vaultgram", "-o", "json").stdout)
    restarts = pod["status"]["containerStatuses"][0].get("restartCount", 0)
    lines = broker_log(node, name, 400).splitlines()
    retries = [json.loads(l).get("error") for l in lines if "trying again" in l]
    if retries:
        log(f"{server}: the broker waited for a refusing peer {len(retries)} time(s) at start: {retries[0]}")
    # Its confinement check read its own Pod and the policies through the
    # projected ServiceAccount token before it logged in.
    confined = [json.loads(l) for l in lines if '"vaultgram::service"' in l and "confinement: pod" in l]
    if not confined or f"vaultgram/{name}:" not in confined[-1]["message"]:
        raise Fail(f"{server}: no confinement check of vaultgram/{name} in the broker's log:\n{broker_log(node, name)}")
    if confined[-1].get("state") != "ok":
        # A broken policy set (--mutate) is seen by the broker too.
        log(f"{server}: the broker's own confinement check: {confined[-1]['message']}")
        if not node.args.mutate:
            raise Fail(f"{server}: the broker finds its confinement {confined[-1].get('state')!r}")
    logins = [json.loads(l) for l in lines if '"logged in to Vault"' in l]
    if not logins or logins[-1].get("method") != "kubernetes":
        raise Fail(f"{server}: no kubernetes login in the broker's log:\n{broker_log(node, name)}")
    # Vault's side: the token came from auth/kubernetes/login for the
    # vaultgram ServiceAccount.
    accessors = json.loads(run([cli, "list", "-format=json", "auth/token/accessors"], ns=True, env=env).stdout)
    found = []
    for a in accessors:
        info = json.loads(run([cli, "token", "lookup", "-format=json", "-accessor", a], ns=True, env=env).stdout)["data"]
        if info.get("path", "").startswith("auth/kubernetes/login"):
            found.append(info)
    if not found:
        raise Fail(f"{server}: no token issued by auth/kubernetes/login")
    tok = found[-1]
    meta = tok.get("meta") or {}
    if meta.get("service_account_name") != "vaultgram" or meta.get("service_account_namespace") != "vaultgram":
        raise Fail(f"{server}: the login token is not the vaultgram ServiceAccount's: {meta}")
    log(f"{server}: broker Ready in {node.timings[f'{server}: broker pod created -> Ready (kubernetes login, etcd, confinement)']:.1f}s, "
        f"{restarts} restart(s); kubernetes login: {len(found)} token(s) for vaultgram/vaultgram, policies "
        f"{tok.get('policies')}, ttl {tok.get('ttl')}s, period {tok.get('period')}, renewable {tok.get('renewable')}")
    return tok


def readyz_follows_policies(node, server, name):
    ip = node.pod_ip("vaultgram", name)
    if readyz(node, ip) != "200":
        raise Fail(f"{server}: /readyz is {readyz(node, ip)} on a Ready pod")
    # The egress policies deleted: the broker notices (recheck 10 s) and
    # turns unready; restored: ready again.
    policies = {}
    for pol in ("vaultgram-egress", "default-deny-egress"):
        policies[pol] = node.get_for_apply("networkpolicy", pol)
    t = time.monotonic()
    node.kubectl("delete", "networkpolicy", *policies, "-n", "vaultgram")
    node.wait("/readyz 503 without egress policies", lambda: readyz(node, ip) == "503", 30, every=0.2)
    node.timings[f"{server}: egress policies deleted -> /readyz 503"] = time.monotonic() - t
    t = time.monotonic()
    for obj in policies.values():
        node.apply(obj)
    node.wait("/readyz 200 with the policies restored", lambda: readyz(node, ip) == "200", 30, every=0.2)
    node.timings[f"{server}: egress policies restored -> /readyz 200"] = time.monotonic() - t
    log(f"{server}: /readyz followed the policies (503 without, 200 restored)")


def broker_log(node, name, n=30):
    logs = glob.glob(os.path.join(node.dir, "pod-logs", f"vaultgram_{name}_*", "vaultgram", "*.log"))
    out = []
    for path in sorted(logs):
        with open(path) as f:
            for line in f.readlines()[-n:]:
                # CRI log format: TIME STREAM TAG MESSAGE
                out.append(line.split(" ", 3)[-1])
    return "".join(out)


def dns_records():
    names = {"vault.vaultgram.svc": VAULT_SVC}
    names.update({f"etcd-{i}.etcd.vaultgram.svc": ETCD_SVC for i in range(3)})
    out = []
    for name, ip in names.items():
        out += [f"{name}={ip}", f"{name}.cluster.local={ip}"]
    return out


def mutate(node, how):
    """--mutate: the test must fail on a broken policy set (run.sh checks)."""
    pol = node.get_for_apply("networkpolicy", "vaultgram-egress")
    rules = pol["spec"]["egress"]
    if how == "drop-vault-egress":
        pol["spec"]["egress"] = [r for r in rules if not any(p.get("port") == 8200 for p in r.get("ports", []))]
        if len(pol["spec"]["egress"]) != len(rules) - 1:
            raise Fail("mutate: no single egress rule for Vault's port 8200")
    elif how == "widen-egress":
        rules.append({"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]})
    else:
        raise Fail(f"mutate: unknown mutation {how}")
    node.apply(pol)
    log(f"mutated the egress policy: {how}")


def print_matrix(matrix, ing, expect_ing):
    w = max(len(k) for k in matrix) + 2
    word = {True: "open", False: "blocked"}
    print(f"{'destination from the broker pod':<{w}} {'policy':<8} {'no enforcer':<12} {'kube-router':<12}")
    for lbl, (allowed, before, after) in matrix.items():
        mark = "" if after == allowed else "   <-- MISMATCH"
        print(f"{lbl:<{w}} {word[allowed]:<8} {word[before]:<12} {word[after]:<12}{mark}")
    for k, v in ing.items():
        mark = "" if v == expect_ing[k] else "   <-- MISMATCH"
        print(f"{'ingress ' + k:<{w}} {word[expect_ing[k]]:<8} {'open':<12} {word[v]:<12}{mark}")
    bad = [lbl for lbl, (allowed, _b, after) in matrix.items() if allowed != after]
    if bad:
        raise Mismatch(f"with the enforcer the matrix differs from the policy: {bad}")


if __name__ == "__main__":
    sys.exit(main())
