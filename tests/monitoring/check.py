"""Checks monitoring/rules.yml (the one source of the alert rules) and
monitoring/dashboard.json, and prepares the rules' promtool unit tests.

- every alert has a severity (critical|warning), a summary, and a
  runbook_url `docs/MONITORING.md#<alertname lowercased>` whose heading
  exists;
- every metric an expression names is one the broker exports (the names
  `src/metrics.rs` registers, with the `vaultgram_` prefix and the
  encoder's `_total`/`_bucket`/`_sum`/`_count` suffixes), or `up`;
- every alert has a firing and a silent case in rules.test.yml;
- k8s/monitoring/prometheusrule.yaml is rules.yml rendered as a
  prometheus-operator PrometheusRule, and k8s/monitoring/
  dashboard-configmap.yaml is the dashboard as a ConfigMap for Grafana's
  sidecar loader (`--write` regenerates both);
- the dashboard validates against tests/monitoring/dashboard.schema.json
  (the parts of Grafana's dashboard model it uses), panel ids are unique,
  panels do not overlap, every query names only metrics the broker exports
  and uses the `datasource` variable. (That every query returns data is
  checked against a real Prometheus: tests/suite/monitoring.rs.)

`prepare DIR` writes rules.yml and the test file, each expected alert
given its annotations from rules.yml, into DIR for `promtool test rules`.
"""
import copy
import json
import os
import re
import sys

import yaml

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
RULES = os.path.join(ROOT, "monitoring", "rules.yml")
TESTS = os.path.join(ROOT, "monitoring", "rules.test.yml")
RENDERED = os.path.join(ROOT, "k8s", "monitoring", "prometheusrule.yaml")
DASHBOARD = os.path.join(ROOT, "monitoring", "dashboard.json")
DASHBOARD_SCHEMA = os.path.join(ROOT, "tests", "monitoring", "dashboard.schema.json")
DASHBOARD_CM = os.path.join(ROOT, "k8s", "monitoring", "dashboard-configmap.yaml")
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


CM_HEADER = """# GENERATED from monitoring/dashboard.json by tests/monitoring/check.py --write;
# do not edit. The Grafana dashboard for the sidecar loader (kiwigrid
# k8s-sidecar, as in the kube-prometheus-stack chart): label grafana_dashboard.
"""


class Literal(str):
    pass


def _literal(dumper, data):
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|")


class Dumper(yaml.SafeDumper):
    """Indents sequences under their key, as yamllint (ansible/.yamllint) wants."""

    def increase_indent(self, flow=False, indentless=False):
        return super().increase_indent(flow, False)


Dumper.add_representer(Literal, _literal)


def rendered_dashboard(text):
    doc = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "vaultgram-dashboard",
            "namespace": "vaultgram",
            "labels": {"app.kubernetes.io/name": "vaultgram", "grafana_dashboard": "1"},
        },
        # Indented by one: the same dashboard, lines within yamllint's 160.
        "data": {"vaultgram.json": Literal(json.dumps(json.loads(text), indent=1) + "\n")},
    }
    return CM_HEADER + "---\n" + yaml.dump(doc, Dumper=Dumper, sort_keys=False, width=200)


def exported_metrics():
    return set(re.findall(r'register\(\s*"([a-z_]+)"', open(METRICS).read()))


def unknown_metrics(expr, exported):
    bad = []
    for m in re.findall(r"\b(vaultgram_[a-z_]+)", expr):
        base = re.sub(r"_(total|bucket|sum|count)$", "", m[len("vaultgram_"):])
        if base not in exported:
            bad.append(m)
    for m in re.findall(r"\b([a-z_]+)\{", expr):
        if not m.startswith("vaultgram_") and m != "up":
            bad.append(m)
    return bad


def check_dashboard(text, exported):
    import jsonschema

    errors = []
    try:
        d = json.loads(text)
    except ValueError as e:
        return [f"dashboard.json: not JSON: {e}"], 0
    schema = json.load(open(DASHBOARD_SCHEMA))
    for e in jsonschema.Draft202012Validator(schema).iter_errors(d):
        path = "/".join(str(p) for p in e.absolute_path)
        errors.append(f"dashboard.json: {path}: {e.message}")
    if errors:
        return errors, 0
    ids = [p["id"] for p in d["panels"]]
    if len(ids) != len(set(ids)):
        errors.append("dashboard.json: a panel id is used twice")
    cells = {}
    n = 0
    for p in d["panels"]:
        g = p["gridPos"]
        if g["x"] + g["w"] > 24:
            errors.append(f"dashboard.json: panel {p['title']!r} is wider than the grid")
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                if (x, y) in cells:
                    errors.append(f"dashboard.json: panels {cells[(x, y)]!r} and {p['title']!r} overlap")
                    break
                cells[(x, y)] = p["title"]
            else:
                continue
            break
        if p["type"] == "row":
            continue
        n += 1
        if p["datasource"]["uid"] != "${datasource}":
            errors.append(f"dashboard.json: panel {p['title']!r} does not use the datasource variable")
        for t in p["targets"]:
            for m in unknown_metrics(t["expr"], exported):
                errors.append(f"dashboard.json: panel {p['title']!r}: {m} is not a metric the broker exports")
    if not any(v["name"] == "datasource" and v["type"] == "datasource" for v in d["templating"]["list"]):
        errors.append("dashboard.json: no `datasource` variable of type datasource")
    return errors, n


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
    return HEADER + "---\n" + yaml.dump(doc, Dumper=Dumper, sort_keys=False, width=100)


def check(rules, tests):
    errors = []
    exported = exported_metrics()
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
        for m in unknown_metrics(a["expr"], exported):
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
            "k8s/monitoring/prometheusrule.yaml is not rules.yml rendered: run tests/monitoring/check.py --write"
        )
    dash = open(DASHBOARD).read()
    dash_errors, panels = check_dashboard(dash, exported)
    errors += dash_errors
    # The dashboard checks can fail: each broken copy must be refused.
    def broken(change):
        d = json.loads(dash)
        change(d)
        return check_dashboard(json.dumps(d), exported)[0]

    mutants = {
        "a panel wider than the grid": lambda d: d["panels"][1]["gridPos"].update(w=30),
        "a duplicate panel id": lambda d: d["panels"][2].update(id=d["panels"][1]["id"]),
        "overlapping panels": lambda d: d["panels"][2]["gridPos"].update(d["panels"][1]["gridPos"]),
        "an unknown metric": lambda d: d["panels"][1]["targets"][0].update(expr="vaultgram_nope"),
        "a fixed datasource": lambda d: d["panels"][1]["datasource"].update(uid="prom1"),
        "a panel without queries": lambda d: d["panels"][1].pop("targets"),
    }
    for what, change in mutants.items():
        if not broken(change):
            errors.append(f"dashboard check self-test: {what} was not refused")
    if not os.path.exists(DASHBOARD_CM) or open(DASHBOARD_CM).read() != rendered_dashboard(dash):
        errors.append(
            "k8s/monitoring/dashboard-configmap.yaml is not dashboard.json rendered: run tests/monitoring/check.py --write"
        )
    return errors, len(names), len(firing), len(silent), panels


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
        with open(DASHBOARD_CM, "w") as f:
            f.write(rendered_dashboard(open(DASHBOARD).read()))
        return 0
    if sys.argv[1:2] == ["prepare"]:
        prepare(rules, tests, sys.argv[2])
        return 0
    errors, n, firing, silent, panels = check(rules, tests)
    for e in errors:
        print(f"monitoring: {e}", file=sys.stderr)
    if errors:
        return 1
    print(
        f"monitoring: {n} alerts, each with severity, summary and runbook; "
        f"every metric exported; {firing} firing and {silent} silent cases; PrometheusRule up to date; "
        f"dashboard: {panels} panels valid against the schema, ConfigMap up to date"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
