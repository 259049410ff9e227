#!/usr/bin/env bash
# Fuzzes the parsers of outside input (cargo-fuzz, fuzz/fuzz_targets/):
#   scripts/fuzz.sh TARGET [SECONDS]   one target (default 60 s)
#   scripts/fuzz.sh --long [TARGET]    the documented long run: 10 million
#                                      executions or 15 minutes, first wins
#                                      (no TARGET: each in turn)
#   scripts/fuzz.sh --list             the targets
#   scripts/fuzz.sh --smoke [SECONDS]  every target briefly (CI: 10 s each)
# Seeds are committed under fuzz/corpus/TARGET/ (small); what a run finds
# goes to a corpus under $FUZZ_WORK (default ~/.cache/vaultgram-fuzz-work),
# never into the repository. A crash leaves its input in fuzz/artifacts/
# and fails the run. cargo-fuzz needs nightly features; RUSTC_BOOTSTRAP=1
# enables them on the machine's stable toolchain.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$ROOT/scripts/lib.sh"
cd "$ROOT"
targets=$(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^vaultgram-fuzz$')
long=0
runs=()
case ${1:-} in
  --list) printf '%s\n' "$targets"; exit 0 ;;
  --smoke) smoke=1; seconds=${2:-10} ;;
  --long) shift; long=1 ;;
  "") echo "usage: scripts/fuzz.sh TARGET [SECONDS] | --long [TARGET] | --smoke [SECONDS] | --list" >&2; exit 2 ;;
esac
if ((long)); then smoke=0; seconds=900; runs=(-runs=10000000); fi
case ${1:-} in
  --smoke | "") ;;
  *)
    smoke=0; ((long)) || seconds=${2:-60}
    grep -qx -- "$1" <<<"$targets" || { echo "scripts/fuzz.sh: no target '$1' (--list)" >&2; exit 2; }
    targets=$1
    ;;
esac
ensure_fuzz_tools
export RUSTC_BOOTSTRAP=1
# Keep the fuzz build (sanitizer flags) apart from the normal target dir.
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-$HOME/.cache/vaultgram-fuzz-target}
work=${FUZZ_WORK:-$HOME/.cache/vaultgram-fuzz-work}
for t in $targets; do
  mkdir -p "$work/$t"
  echo "== fuzz $t for ${seconds}s (seeds: fuzz/corpus/$t)"
  # The first corpus directory receives new inputs: the work one.
  rc=0
  cargo fuzz run --fuzz-dir fuzz "$t" "$work/$t" "fuzz/corpus/$t" -- \
    -max_total_time="$seconds" "${runs[@]}" -max_len=4096 -print_final_stats=1 >"$work/$t.log" 2>&1 || rc=$?
  grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|#[0-9]+[[:space:]]+DONE|SUMMARY|Test unit written)|panicked' "$work/$t.log" || true
  if ((rc)); then
    tail -n 40 "$work/$t.log" >&2
    echo "scripts/fuzz.sh: $t failed (exit $rc; the input is in fuzz/artifacts/$t/)" >&2
    exit 1
  fi
done
((smoke)) && echo "fuzz smoke: every target ran ${seconds}s without a finding"
exit 0
