#!/usr/bin/env bash
# The whole test suite, on a fresh machine too: installs what is missing
# (etcd, etcdctl, protoc, OpenBao), then runs the unit tests and the one
# integration-test binary, which starts a real 3-member etcd cluster and a
# real OpenBao server over TLS on free loopback ports.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$ROOT/scripts/lib.sh"
ensure_tools
cd "$ROOT"
# Developers' own VAULT_* / ETCDCTL_* must not steer the tests.
unset VAULT_ADDR BAO_ADDR VAULT_TOKEN VAULT_CACERT VAULTGRAM_CONFIG \
  ETCDCTL_ENDPOINTS ETCDCTL_CACERT ETCDCTL_CERT ETCDCTL_KEY ETCDCTL_USER
cargo test --locked --all-targets "$@"
# Policy semantics in depth (131 checks) against a throw-away OpenBao.
vault-policies/selftest.sh
# Deployment as code: Kubernetes manifests (kubernetes-validate, checkov,
# the NetworkPolicy allow-list), the HashiCorp Vault etcd config against the
# documented keys, OpenBao transit auto-unseal, and the whole stack deployed
# with Ansible on loopback (twice: changed=0), smoke-tested and torn down.
tests/k8s/run.sh
tests/deploy/vault_etcd_config.sh --self-test
tests/deploy/autounseal.sh
ansible/test-local.sh
