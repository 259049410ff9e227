#!/usr/bin/env bash
# The alert rules (monitoring/rules.yml): their shape, metric names and
# rendered PrometheusRule (check.py), then `promtool check rules` and
# `promtool test rules` (monitoring/rules.test.yml) with promtool from
# Debian's prometheus package (prometheus_binaries, scripts/lib.sh).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source-path=SCRIPTDIR source=../../scripts/lib.sh
. "$ROOT/scripts/lib.sh"
bin=$(prometheus_binaries)
python=$(k8s_venv)/bin/python
[[ -x $python ]] || { echo "no $python: run ensure_tools (scripts/lib.sh)" >&2; exit 1; }
"$python" "$ROOT/tests/monitoring/check.py"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$python" "$ROOT/tests/monitoring/check.py" prepare "$work"
"$bin/promtool" check rules "$ROOT/monitoring/rules.yml"
(cd "$work" && "$bin/promtool" test rules rules.test.yml)
