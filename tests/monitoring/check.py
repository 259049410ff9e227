"""Checks monitoring/rules.yml (the one source of the alert rules) and
prepares its promtool unit tests.

- every alert has a severity (critical|warning), a summary, and a
  runbook_url `docs/MONITORING.md#<alertname lowercased>` whose heading
  exists;
- every metric an expression names is one the broker exports (the names
  `src/metrics.rs` registers, with the `vaultgram_` prefix and the
  encoder's `_total`/`_bucket`/`_sum`/`_count` suffixes), or `up`;
- every alert has a firing and a silent case in rules.test.yml;
- monitoring/prometheusrule.yaml is rules.yml rendered as a
  prometheus-operator PrometheusRule (`--write` regenerates it).

`prepare DIR` writes rules.yml and the test file, each expected alert
given its annotations from rules.yml, into DIR for `promtool test rules`.
"""
import copy
import os
import re
import sys

import yaml

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
RULES = os.path.join(ROOT, "monitoring", "rules.yml")
TESTS = os.path.join(ROOT, "monitoring", "rules.test.yml")
RENDERED = os.path.join(ROOT, "monitoring", "prometheusrule.yaml")
DOC = os.path.join(ROOT, "docs", "MONITORING.md")
METRICS = os.path.join(ROOT, "src", "metrics.rs")

HEADER = """# GENERATED from monitoring/rules.yml by tests/monitoring/check.py --write;
# do not edit. The alert rules as a prometheus-operator PrometheusRule.
"""


def load(path):
    with open(path) as f:
        return yaml.safe_load(f)


def alerts(rules):
    return [r for g in rules["groups"] for r in g["rules"] if "alert" in r]


def rendered(rules):
    doc = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "vaultgram",
            "namespace": "vaultgram",
            "labels": {"app.kubernetes.io/name": "vaultgram", "role": "alert-rules"},
        },
        "spec": rules,
    }
    return HEADER + "---\n" + yaml.safe_dump(doc, sort_keys=False, width=100)


def check(rules, tests):
    errors = []
    exported = set(re.findall(r'register\(\s*"([a-z_]+)"', open(METRICS).read()))
    if not exported:
        errors.append("no metric registrations found in src/metrics.rs")
    headings = {
        re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
        for h in re.findall(r"^#+ (.*)$", open(DOC).read(), re.M)
    }
    names = [a["alert"] for a in alerts(rules)]
    if len(names) != len(set(names)):
        errors.append("an alert name is used twice")
    for a in alerts(rules):
        n = a["alert"]
        if a.get("labels", {}).get("severity") not in ("critical", "warning"):
            errors.append(f"{n}: severity must be critical or warning")
        ann = a.get("annotations", {})
        if not ann.get("summary"):
            errors.append(f"{n}: no summary")
        want = f"docs/MONITORING.md#{n.lower()}"
        if ann.get("runbook_url") != want:
            errors.append(f"{n}: runbook_url must be {want}")
        elif n.lower() not in headings:
            errors.append(f"{n}: docs/MONITORING.md has no heading `{n}`")
        for m in re.findall(r"\b(vaultgram_[a-z_]+)", a["expr"]):
            base = re.sub(r"_(total|bucket|sum|count)$", "", m[len("vaultgram_"):])
            if base not in exported:
                errors.append(f"{n}: {m} is not a metric the broker exports")
        for m in re.findall(r"\b([a-z_]+)\{", a["expr"]):
            if not m.startswith("vaultgram_") and m != "up":
                errors.append(f"{n}: {m} is not a metric the broker exports")
    firing, silent = set(), set()
    for t in tests["tests"]:
        for c in t.get("alert_rule_test", []):
            (firing if c.get("exp_alerts") else silent).add(c["alertname"])
    for n in names:
        if n not in firing:
            errors.append(f"{n}: no firing case in rules.test.yml")
        if n not in silent:
            errors.append(f"{n}: no silent case in rules.test.yml")
    for n in (firing | silent) - set(names):
        errors.append(f"rules.test.yml tests `{n}`, which rules.yml does not define")
    if not os.path.exists(RENDERED) or open(RENDERED).read() != rendered(rules):
        errors.append(
            "monitoring/prometheusrule.yaml is not rules.yml rendered: run tests/monitoring/check.py --write"
        )
    return errors, len(names), len(firing), len(silent)


def prepare(rules, tests, out):
    by_name = {a["alert"]: a.get("annotations", {}) for a in alerts(rules)}
    tests = copy.deepcopy(tests)
    for t in tests["tests"]:
        for c in t.get("alert_rule_test", []):
            for e in c.get("exp_alerts") or []:
                e["exp_annotations"] = by_name.get(c["alertname"], {})
    with open(os.path.join(out, "rules.yml"), "w") as f:
        yaml.safe_dump(rules, f, sort_keys=False)
    with open(os.path.join(out, "rules.test.yml"), "w") as f:
        yaml.safe_dump(tests, f, sort_keys=False)


def main():
    rules, tests = load(RULES), load(TESTS)
    if sys.argv[1:] == ["--write"]:
        with open(RENDERED, "w") as f:
            f.write(rendered(rules))
        return 0
    if sys.argv[1:2] == ["prepare"]:
        prepare(rules, tests, sys.argv[2])
        return 0
    errors, n, firing, silent = check(rules, tests)
    for e in errors:
        print(f"monitoring: {e}", file=sys.stderr)
    if errors:
        return 1
    print(
        f"monitoring: {n} alerts, each with severity, summary and runbook; "
        f"every metric exported; {firing} firing and {silent} silent cases; PrometheusRule up to date"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
