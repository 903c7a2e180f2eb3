"""Adds up the passes of one scripts/fuzz.sh run and prints the verdict; exits 1 on any failure.

Usage: summary.py RUN_DIR METRICS_URL MIN_REQUESTS SECONDS

Reads RUN_DIR/pass-*.json (tallies written by fuzz/hooks.py), RUN_DIR/pass-*.log (schemathesis's
own output, for its failure summary) and RUN_DIR/pass-*.rc (exit codes), and coupon-api's
Prometheus `/metrics` at METRICS_URL, whose `http_requests_total` is the server's own count of
what it answered: a cross-check of the client's count, and of 5xx answers.
"""

from __future__ import annotations

import glob
import json
import os
import re
import sys
import urllib.request
from collections import Counter

# Lines of the summary block of `st run`: a failed check ("  ❌ ST101 Server error: 3") and an
# error of schemathesis itself, which leaves an operation untested ("  🚫 Runtime Error: 2").
FAILURE_LINE = re.compile(r"^\s+❌ (ST\d+ .*?): (\d+)\s*$")
ERROR_LINE = re.compile(r"^\s+🚫 (.*?): (\d+)\s*$")


def server_counts(url: str) -> tuple[int, int]:
    """(all answers, 5xx answers) from coupon-api's http_requests_total."""
    total = server_errors = 0
    with urllib.request.urlopen(url, timeout=10) as response:
        for line in response.read().decode().splitlines():
            if not line.startswith("http_requests_total{"):
                continue
            labels, value = line.rsplit(" ", 1)
            count = int(float(value))
            total += count
            if 'status_class="5xx"' in labels:
                server_errors += count
    return total, server_errors


def main() -> int:
    run, metrics_url, min_requests, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    passes = sorted(glob.glob(os.path.join(run, "pass-*.json")))
    requests = server_errors = bad_bodies = 0
    statuses: Counter[str] = Counter()
    # Failing answers of all passes, grouped as fuzz/hooks.py groups them.
    groups: dict[tuple, dict] = {}
    for path in passes:
        with open(path) as f:
            tally = json.load(f)
        requests += tally["requests"]
        server_errors += tally["server_errors"]
        bad_bodies += tally["bad_error_bodies"]
        statuses.update(tally["statuses"])
        for group in tally["groups"]:
            key = (group["kind"], group["status"], group["content_type"], group["body"], group["operation"])
            merged = groups.setdefault(key, {"count": 0, "examples": [], "operations": set()})
            merged["count"] += group["count"]
            merged["operations"].update(group["requests"])
            for example in group["examples"]:
                if len(merged["examples"]) < 3:
                    merged["examples"].append(example)

    # Failures of the other checks of fuzz/schemathesis.toml, as schemathesis summed them up.
    other: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    abnormal = []
    for path in sorted(glob.glob(os.path.join(run, "pass-*.rc"))):
        rc = open(path).read().strip()
        log = path[: -len(".rc")] + ".log"
        if rc not in ("0", "1"):
            abnormal.append(f"{os.path.basename(log)} (exit {rc})")
        for line in open(log, encoding="utf-8", errors="replace"):
            match = FAILURE_LINE.match(line)
            if match and not match[1].startswith(("ST101", "ST102", "ST901")):
                other[match[1]] += int(match[2])
            match = ERROR_LINE.match(line)
            if match:
                errors[match[1]] += int(match[2])

    print(f"[fuzz] {len(passes)} passes; statuses: " + ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items())))
    try:
        served, served_5xx = server_counts(metrics_url)
    except OSError as exc:  # coupon-api died: its log tells why
        print(f"[fuzz] coupon-api's /metrics did not answer ({exc}); see {run}/coupon-api.log")
        served, served_5xx = -1, 0
        abnormal.append("coupon-api gone at the end")
    else:
        print(f"[fuzz] coupon-api counted {served} requests ({served_5xx} answered 5xx), the fuzzer {requests} "
              "(the rest: seeding, readiness polls, schema downloads)")
    for (kind, status, content_type, body, operation), group in sorted(groups.items(), key=lambda item: -item[1]["count"]):
        what = "server error" if kind == "server_error" else "error body without a code"
        ops = sorted(group["operations"])
        where = ", ".join(ops[:6]) + (f" and {len(ops) - 6} more" if len(ops) > 6 else "")
        print(f"[fuzz] {what}: {group['count']} x {status} (content-type {content_type!r}) from {where}")
        for example in group["examples"]:
            print(f"         e.g. {example['method']} {example['url']} (token: {example['authorization']})"
                  + (f" body {str(example['body'])[:300]}" if example["body"] is not None else ""))
            print(f"           -> {example['status']} {example['response_body'][:200]!r}")
    for name, count in sorted(other.items()):
        print(f"[fuzz] other check failed: {name}: {count} (details in {run}/pass-*.log)")
    for name, count in sorted(errors.items()):
        print(f"[fuzz] schemathesis error (an operation left untested): {name}: {count} (details in {run}/pass-*.log)")
    for item in abnormal:
        print(f"[fuzz] abnormal end: {item}")

    failed = bool(server_errors or served_5xx or bad_bodies or other or errors or abnormal or requests < min_requests)
    if requests < min_requests:
        print(f"[fuzz] only {requests} requests sent, {min_requests} required")
    print(f"fuzz: {requests} requests, {max(server_errors, served_5xx)} server errors, "
          f"{bad_bodies} error bodies without a code, {sum(other.values())} other check failures, "
          f"{sum(errors.values())} schemathesis errors ({seconds:.0f} s): {'FAILED' if failed else 'passed'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
