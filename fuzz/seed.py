"""Seeds a fresh coupon-api with a few real resources and prints schemathesis dictionaries of
their identifiers (TOML), for scripts/fuzz.sh.

Without them almost every generated id names nothing, so the fuzzer would mostly see 404s and
never reach the issue, redeem, reserve and code paths behind them. With them, schemathesis
substitutes a real id for a path or body parameter in a share of the cases
(`FUZZ_ID_PROBABILITY`, default 0.5) and generates the rest as usual.

Usage: seed.py BASE_URL ADMIN_TOKEN > ids.toml
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import datetime, timedelta, timezone

import requests

USERS = [7, 8, 9, 10]
ORDERS = ["fuzz-order-1", "fuzz-order-2"]


def main() -> None:
    base, token = sys.argv[1].rstrip("/"), sys.argv[2]
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"

    def call(method: str, path: str, expect: int, body: object = None) -> dict:
        response = session.request(method, base + path, json=body, timeout=30)
        if response.status_code != expect:
            sys.exit(f"seed: {method} {path} answered {response.status_code}, expected {expect}: {response.text}")
        return response.json() if response.content else {}

    now = datetime.now(timezone.utc)
    window = {
        "issue_starts_at": (now - timedelta(hours=1)).isoformat(),
        "issue_ends_at": (now + timedelta(days=30)).isoformat(),
    }
    coupons = [
        # Plenty of stock: issues keep being admitted for the whole run.
        call("POST", "/api/v1/coupons", 201, {
            "title": "fuzz fixed", "coupon_type": "FIRST_COME_FIRST_SERVED", "total_quantity": 1_000_000,
            "discount_type": "FIXED", "discount_value": 1000, "min_order_amount": 5000, "valid_days": 30, **window,
        }),
        call("POST", "/api/v1/coupons", 201, {
            "title": "fuzz percentage", "coupon_type": "UNLIMITED", "discount_type": "PERCENTAGE",
            "discount_value": 10, "max_discount_amount": 3000, "valid_days": 7, **window,
        }),
        # One unit: sold out after the first issue, so SOLD_OUT paths run too.
        call("POST", "/api/v1/coupons", 201, {
            "title": "fuzz scarce", "coupon_type": "FIRST_COME_FIRST_SERVED", "total_quantity": 1,
            "discount_type": "FIXED", "discount_value": 500, "valid_days": 1, **window,
        }),
    ]
    coupon_ids = [c["id"] for c in coupons]

    topic = call("POST", "/api/v1/topics", 201, {"coupon_id": coupon_ids[0], "name": "fuzz topic"})
    job = call("POST", f"/api/v1/topics/{topic['id']}/codes", 202, {"count": 200})
    for _ in range(300):
        job = call("GET", f"/api/v1/topics/{topic['id']}/code-jobs/{job['job_id']}", 200)
        if job["status"] == "DONE":
            break
        time.sleep(0.1)
    else:
        sys.exit(f"seed: code generation job {job} did not finish in 30 s")
    codes = [c["code"] for c in call("GET", f"/api/v1/topics/{topic['id']}/codes?limit=100", 200)["items"]]

    # Issued coupons (rows in MySQL, no consumer needed): redeem a code for each user.
    issue_ids = []
    for user, code in zip(USERS, codes):
        issue_ids.append(call("POST", f"/api/v1/codes/{code}/redeem", 200, {"user_id": user})["coupon_issue_id"])
    # A hold on the first user's coupon, so confirm and release find one.
    call("POST", f"/api/v1/users/{USERS[0]}/coupons/{issue_ids[0]}/reserve", 200,
         {"order_id": ORDERS[0], "order_amount": 30000})
    # Admission through the issue path (pending: no coupon-consumer runs), and the scarce one
    # sold. Not of the topic's coupon: these users hold it by code, so that would be 409
    # ALREADY_ISSUED (code redeems and issue requests share one admission set).
    call("POST", f"/api/v1/coupons/{coupon_ids[1]}/issues", 202, {"user_id": USERS[1]})
    call("POST", f"/api/v1/coupons/{coupon_ids[2]}/issues", 202, {"user_id": USERS[2]})

    probability = float(os.environ.get("FUZZ_ID_PROBABILITY", "0.5"))
    dictionaries = {
        "coupon_ids": coupon_ids,
        "topic_ids": [topic["id"]],
        "job_ids": [job["job_id"]],
        "user_ids": USERS,
        "issue_ids": issue_ids,
        # Unused codes, and the ones just redeemed (ALREADY_REDEEMED paths).
        "codes": codes[len(USERS):len(USERS) + 20] + codes[:len(USERS)],
        "order_ids": ORDERS,
    }
    bindings = {
        "path.coupon_id": "coupon_ids",
        "body.coupon_id": "coupon_ids",
        "path.topic_id": "topic_ids",
        "path.job_id": "job_ids",
        "path.user_id": "user_ids",
        "body.user_id": "user_ids",
        "path.coupon_issue_id": "issue_ids",
        "path.code": "codes",
        "body.order_id": "order_ids",
    }
    print("# Written by fuzz/seed.py: identifiers of the resources it created.")
    for name, values in dictionaries.items():
        print(f"\n[dictionaries.{name}]\nvalues = {json.dumps(values)}")
    print("\n[parameters]")
    for key, name in bindings.items():
        print(f'"{key}" = {{ dictionary = "{name}", probability = {probability} }}')


if __name__ == "__main__":
    main()
