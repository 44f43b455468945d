#!/usr/bin/env python3
"""Renders the Prometheus Operator's objects from the observability files, their one source.

    python3 deploy/k8s/monitoring/render.py                    # after editing observability/
    python3 deploy/k8s/monitoring/render.py --runbook-base-url https://wiki.example.org/cognito-gateway/docs
    python3 deploy/k8s/monitoring/render.py --check            # exit 1 if the files are not rendered

- prometheusrule.yaml: a PrometheusRule holding the groups of observability/alerts.yaml.
- grafana-dashboard.yaml: a ConfigMap labelled grafana_dashboard: "1" holding
  observability/grafana-dashboard.json as it is.

--runbook-base-url changes the base of every runbook_url, in observability/alerts.yaml too (so that a
Prometheus loading that file directly links to the same place), and renders. Every runbook_url is
"<base>/<page>#<anchor>", a page of docs/.

--output DIR writes the rendered files there instead (observability/alerts.yaml is then left alone).
Needs PyYAML.
"""

import argparse
import pathlib
import re
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[3]
ALERTS = ROOT / "observability" / "alerts.yaml"
DASHBOARD = ROOT / "observability" / "grafana-dashboard.json"
HERE = pathlib.Path(__file__).resolve().parent
RUNBOOK = re.compile(r'^(\s*runbook_url: ")(https?://[^"]*?)(/[\w.-]+\.md#[\w-]+)(")\s*$', re.M)
HEADER = "# Rendered by deploy/k8s/monitoring/render.py from {source}: edit that, then run it.\n"


class Literal(yaml.SafeDumper):
    """Multi-line strings (the PromQL expressions) as literal blocks, as in alerts.yaml."""


Literal.add_representer(
    str,
    lambda dumper, text: dumper.represent_scalar(
        "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None
    ),
)


def with_base(alerts_text, base):
    """alerts.yaml with every runbook_url on `base`; refuses a file with a runbook_url of another form."""
    found = RUNBOOK.findall(alerts_text)
    if len(found) != len(re.findall(r"^\s*runbook_url:", alerts_text, re.M)):
        sys.exit(f"{ALERTS}: every runbook_url must be \"<base>/<page>.md#<anchor>\"")
    return RUNBOOK.sub(lambda m: f"{m[1]}{base.rstrip('/')}{m[3]}{m[4]}", alerts_text)


def prometheus_rule(alerts_text):
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "cognito-gateway",
            "labels": {"app.kubernetes.io/name": "cognito-gateway"},
        },
        "spec": {"groups": yaml.safe_load(alerts_text)["groups"]},
    }
    body = yaml.dump(rule, Dumper=Literal, sort_keys=False, width=1000, allow_unicode=True)
    return HEADER.format(source="observability/alerts.yaml") + body


def dashboard_config_map(dashboard_text):
    head = HEADER.format(source="observability/grafana-dashboard.json") + (
        "apiVersion: v1\n"
        "kind: ConfigMap\n"
        "metadata:\n"
        "  name: cognito-gateway-dashboard\n"
        "  labels:\n"
        "    app.kubernetes.io/name: cognito-gateway\n"
        '    grafana_dashboard: "1"\n'
        "data:\n"
        "  cognito-gateway.json: |\n"
    )
    return head + "".join(f"    {line}\n" if line else "\n" for line in dashboard_text.splitlines())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runbook-base-url", help="e.g. https://git.example.org/platform/cognito-gateway/-/blob/main/docs")
    parser.add_argument("--output", type=pathlib.Path, help="write the rendered files here")
    parser.add_argument("--check", action="store_true", help="exit 1 if the files are not as rendered")
    args = parser.parse_args()

    alerts_text = ALERTS.read_text()
    if args.runbook_base_url:
        if not re.match(r"^https?://[^\s\"]+$", args.runbook_base_url):
            sys.exit("--runbook-base-url must be an absolute http(s) URL")
        alerts_text = with_base(alerts_text, args.runbook_base_url)
    rendered = {
        "prometheusrule.yaml": prometheus_rule(alerts_text),
        "grafana-dashboard.yaml": dashboard_config_map(DASHBOARD.read_text()),
    }
    if args.check:
        stale = [name for name, text in rendered.items() if (HERE / name).read_text() != text]
        if stale:
            sys.exit(f"not rendered from observability/: {', '.join(stale)} (run {sys.argv[0]})")
        print("deploy/k8s/monitoring: rendered from observability/")
        return
    output = args.output or HERE
    output.mkdir(parents=True, exist_ok=True)
    for name, text in rendered.items():
        (output / name).write_text(text)
    if args.runbook_base_url and not args.output:
        ALERTS.write_text(alerts_text)


if __name__ == "__main__":
    main()
