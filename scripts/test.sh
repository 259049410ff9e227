#!/usr/bin/env bash
# The whole test suite, on a fresh machine too: ensure_tools installs what is
# missing, then the unit tests and the one integration-test binary run; the
# latter starts a real 3-member etcd cluster and a real Vault-API server over
# TLS on free loopback ports, once with OpenBao (raft) and once with
# HashiCorp Vault (storage "etcd" on those members), and a real
# kube-apiserver for the Kubernetes tests.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$ROOT/scripts/lib.sh"
ensure_tools
cd "$ROOT"
# Developers' own VAULT_* / ETCDCTL_* must not steer the tests.
unset VAULT_ADDR BAO_ADDR VAULT_TOKEN VAULT_CACERT VAULTGRAM_CONFIG \
  ETCDCTL_ENDPOINTS ETCDCTL_CACERT ETCDCTL_CERT ETCDCTL_KEY ETCDCTL_USER
# Every Vault-facing test runs against both servers: OpenBao on raft, then
# HashiCorp Vault on storage "etcd" (built once by ensure_tools). The
# Kubernetes tests start a real kube-apiserver (built once, too).
KUBE_BIN_DIR=$(kube_binaries)
export KUBE_BIN_DIR
# A real Prometheus scrapes the broker in the monitoring tests.
PROMETHEUS_BIN_DIR=$(prometheus_binaries)
# The prometheus-operator CRDs the Kubernetes tests install.
PROMETHEUS_OPERATOR_CRDS=$(prometheus_operator_crds)
export PROMETHEUS_BIN_DIR PROMETHEUS_OPERATOR_CRDS
# The tests drive Telegram through the stand-in client, compiled only with
# `telegram-standin` (scripts/check-standin.sh: a build without it has none).
cargo test --locked --all-targets --features telegram-standin "$@"
VAULT_BINARY=$(vault_binary) VAULTGRAM_IT_SERVER=vault \
  cargo test --locked --test integration --features telegram-standin "$@"
# Policy semantics in depth (140 checks) against a throw-away OpenBao.
vault-policies/selftest.sh
# Deployment as code: Kubernetes manifests (kubernetes-validate, checkov,
# the NetworkPolicy allow-list), the HashiCorp Vault etcd config against the
# documented keys, OpenBao transit auto-unseal, and the whole stack deployed
# with Ansible on loopback (twice: changed=0), smoke-tested and torn down.
tests/k8s/run.sh
# The broker's pod on a real node (kubelet, containerd, CNI) in a network
# namespace of its own, its NetworkPolicies enforced by kube-router: the
# destination matrix without and with the enforcer, policy changes, and the
# test failing on a policy set with Vault's rule removed or egress widened.
tests/node/run.sh
# Alert rules: shape, metric names, rendered PrometheusRule, promtool
# check and unit tests (docs/MONITORING.md).
tests/monitoring/run.sh
tests/deploy/vault_etcd_config.sh --self-test
tests/deploy/autounseal.sh
# Backups restored for real: every kind of secret back byte for byte on new
# ports after every data directory is gone (OpenBao/raft, Vault/etcd).
tests/deploy/restore_drill.sh openbao
tests/deploy/restore_drill.sh vault
ansible/test-local.sh
