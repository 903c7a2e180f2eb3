#!/usr/bin/env python3
"""Evaluates every Grafana panel query and every alert rule of monitoring/ against a running
Prometheus that scraped a drop (`make monitor`, then `make demo`; `make monitor-check`).

It fails (exit 1) when
  - Prometheus rejects an expression (a parse or evaluation error), or an alert rule's last
    evaluation failed (`/api/v1/rules` health);
  - an expression names a metric (coupon_*, http_*) that no scraped service exports;
  - a panel the drop must fill (requests by outcome, latency quantiles, remaining stock,
    admitted vs persisted, consumer lag, ...; REQUIRED below) returns no series;
  - a dashboard is not importable by Grafana 10+ (schemaVersion, the provisioned datasource uid).

Expressions are evaluated at the last instant both services were up (`up` of the coupon-api and
coupon-consumer jobs), so the check works after the demo stopped them. Grafana's variables are
given fixed values: $__range 15m, $__rate_interval 20s (4 scrapes of the datasource's 5 s
timeInterval), $__interval 5s, every template variable `.+`.

    python3 monitoring/check_queries.py [--prometheus http://127.0.0.1:9090] [--dashboards DIR]

Python 3 standard library only.
"""

import argparse
import glob
import json
import os
import re
import sys
import time
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))

# (dashboard uid, panel title): panels a drop (issues admitted, a sell-out, rows persisted)
# must fill with at least one series.
REQUIRED = {
    ("couponrush-issue", "Issued (202)"),
    ("couponrush-issue", "Sold out answers"),
    ("couponrush-issue", "Remaining stock"),
    ("couponrush-issue", "Pending (admitted − persisted)"),
    ("couponrush-issue", "Issue requests/s by outcome"),
    ("couponrush-issue", "Issue latency p50 / p99"),
    ("couponrush-issue", "Coupons now"),
    ("couponrush-issue", "Remaining stock per coupon"),
    ("couponrush-issue", "Admitted vs persisted per coupon"),
    ("couponrush-issue", "Pending per coupon (admitted − persisted)"),
    ("couponrush-issue", "Issued/s vs rows inserted/s"),
    ("couponrush-issue", "Consumer lag per partition"),
    ("couponrush-service", "Targets up"),
    ("couponrush-service", "Requests/s by route and status class"),
    ("couponrush-service", "Latency p50 / p99 by route"),
    ("couponrush-service", "Redis script latency p50 / p99"),
    ("couponrush-service", "Kafka produce latency p50 / p99"),
    ("couponrush-service", "Batch size p50 / p99"),
    ("couponrush-service", "Persist duration p50 / p99"),
    ("couponrush-service", "Rows inserted vs duplicates skipped /s"),
}

# Grafana's built-in variables, as the check evaluates them.
BUILTINS = {
    "$__rate_interval": "20s",
    "$__range": "15m",
    "$__interval": "5s",
}

# The datasource uid the provisioning file gives (monitoring/grafana/provisioning).
DATASOURCE_UID = "prometheus"
MIN_SCHEMA_VERSION = 36  # Grafana 9.0 writes 36; Grafana 10 and 11 import it and newer.

METRIC = re.compile(r"\b((?:coupon|http)_[a-z0-9_]+)\b")
# Label lists are not metric names: `by (...)`, `without (...)`, `on (...)`, ... and `{...}`.
LABEL_LISTS = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
MATCHERS = re.compile(r"\{[^}]*\}")


def get(base, path, **params):
    url = f"{base}{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return json.load(response)
    except urllib.error.HTTPError as err:  # 400/422: Prometheus explains in the body
        return json.load(err)


def metric_names(expr):
    stripped = LABEL_LISTS.sub(" ", MATCHERS.sub(" ", expr))
    return set(METRIC.findall(stripped))


def substitute(expr, variables):
    for name, value in BUILTINS.items():
        expr = expr.replace(name, value)
    for name in variables:
        expr = expr.replace("${" + name + "}", ".+").replace("$" + name, ".+")
    return expr


def panels(items):
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))


def last_instant_up(base):
    """The last evaluation instant at which both services' targets were up."""
    now = time.time()
    data = get(
        base,
        "/api/v1/query_range",
        query='min(max by (job) (up{job=~"coupon-api|coupon-consumer"})) '
        'and count(max by (job) (up{job=~"coupon-api|coupon-consumer"})) == 2',
        start=now - 3600,
        end=now,
        step="1s",
    )
    ups = [
        float(t)
        for series in data.get("data", {}).get("result", [])
        for t, v in series["values"]
        if float(v) == 1
    ]
    return max(ups) if ups else None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090")
    parser.add_argument(
        "--dashboards", default=os.path.join(HERE, "grafana", "dashboards")
    )
    args = parser.parse_args()
    base = args.prometheus.rstrip("/")

    at = last_instant_up(base)
    if at is None:
        print(
            "no instant with both coupon-api and coupon-consumer up in the last hour: "
            "run a drop with this Prometheus scraping (make monitor; make demo)"
        )
        return 1
    print(f"evaluating at {time.strftime('%H:%M:%S', time.gmtime(at))} UTC, "
          "the last instant both services were up")
    names = set(get(base, "/api/v1/label/__name__/values")["data"])
    failures = []
    checked = 0

    def evaluate(where, expr, required):
        nonlocal checked
        checked += 1
        missing = sorted(n for n in metric_names(expr) if n not in names)
        if missing:
            failures.append(f"{where}: names metrics no service exports: {missing}: {expr}")
        answer = get(base, "/api/v1/query", query=expr, time=f"{at:.3f}")
        if answer.get("status") != "success":
            failures.append(f"{where}: rejected ({answer.get('error')}): {expr}")
            return
        series = len(answer["data"]["result"])
        if required and series == 0:
            failures.append(f"{where}: no series, but the drop must produce some: {expr}")
        mark = "ok " if not missing else "ERR"
        print(f"  {mark} {series:3d} series  {where}")

    required_seen = set()
    for path in sorted(glob.glob(os.path.join(args.dashboards, "*.json"))):
        with open(path) as f:
            dashboard = json.load(f)
        uid = dashboard.get("uid", os.path.basename(path))
        print(f"{os.path.basename(path)} (uid {uid})")
        if dashboard.get("schemaVersion", 0) < MIN_SCHEMA_VERSION:
            failures.append(f"{uid}: schemaVersion {dashboard.get('schemaVersion')} < {MIN_SCHEMA_VERSION}")
        variables = [v["name"] for v in dashboard.get("templating", {}).get("list", [])]
        for variable in dashboard.get("templating", {}).get("list", []):
            query = variable.get("query")
            query = query.get("query") if isinstance(query, dict) else query
            match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query or "")
            if match:
                evaluate(
                    f"{uid} / variable {variable['name']}",
                    f"count by ({match.group(2)}) ({match.group(1)})",
                    True,
                )
        for panel in panels(dashboard.get("panels", [])):
            title = panel.get("title", "?")
            for source in [panel.get("datasource")] + [t.get("datasource") for t in panel.get("targets", [])]:
                if isinstance(source, dict) and source.get("uid") not in (DATASOURCE_UID, "-- Grafana --", None):
                    failures.append(f"{uid} / {title}: datasource uid {source.get('uid')!r}, not {DATASOURCE_UID!r}")
            required = (uid, title) in REQUIRED
            if required:
                required_seen.add((uid, title))
            for target in panel.get("targets", []):
                if target.get("expr"):
                    evaluate(f"{uid} / {title} [{target.get('refId', '?')}]",
                             substitute(target["expr"], variables), required)
    for gone in sorted(REQUIRED - required_seen):
        failures.append(f"required panel {gone} is not on its dashboard")

    print("alert rules (monitoring/alerts.yml, as Prometheus loaded them)")
    groups = get(base, "/api/v1/rules")["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    if not rules:
        failures.append("Prometheus loaded no rules: is monitoring/alerts.yml in its rule_files?")
    for rule in rules:
        where = f"rule {rule['name']}"
        if rule.get("health") not in ("ok", "unknown"):
            failures.append(f"{where}: health {rule.get('health')}: {rule.get('lastError')}")
        evaluate(where, rule["query"], False)

    print(f"{checked} expressions evaluated")
    for failure in failures:
        print(f"FAIL {failure}")
    if failures:
        return 1
    print("every panel query and alert rule evaluated; every required panel has series")
    return 0


if __name__ == "__main__":
    sys.exit(main())
