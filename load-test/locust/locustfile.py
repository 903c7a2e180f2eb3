"""Locust: many users race for one first-come-first-served coupon (load-test/README.md).

    load-test/run-locust.sh [options]     pinned Locust, headless, then `coupon-demo verify`
    locust -f load-test/locust/locustfile.py --headless -u 200 -r 200 --run-time 5m

At test start the coupon is created with --stock units (unless --coupon-id names one). Every
simulated client then sends POST /api/v1/coupons/{id}/issues back to back, each request as one
user of --user-id-start .. --user-id-start + --user-id-count - 1, with that user's token (HS256,
signed with $JWT_SECRET) and no body; a share --repeat-share of the requests re-sends an id an
earlier request used, the others take the next unused id. After --max-requests requests (0: at
--run-time) the answers are printed, the thresholds decide the exit code, and --race-json gets
the coupon id, the 202 count and the requests left without an answer, from which
run-locust.sh runs `coupon-demo verify`. The counts and the request numbers live in one
process, so a distributed run (--processes, --master/--worker) is refused.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from random import randrange
from typing import Any

import gevent
from locust import constant, events, task
from locust.contrib.fasthttp import FastHttpUser
from locust.env import Environment
from locust.runners import LocalRunner

# After locust, which patches ssl: both import it.
import jwt  # noqa: E402 - PyJWT
import requests  # noqa: E402

JWT_SECRET = os.environ.get("JWT_SECRET") or "couponrush-local-development-secret"
OUTCOMES = {
    "accepted": "202 accepted", "already_issued": "409 ALREADY_ISSUED", "sold_out": "409 SOLD_OUT",
    "in_progress": "409 ISSUE_IN_PROGRESS", "conflict_other": "409 other code", "rate_limited": "429 RATE_LIMITED (RATE_LIMITS=off?)",
    "unavailable": "503 unavailable", "server_error": "5xx other (bug)", "other": "other status",
    "no_answer": "timeout / no answer", "cut_off": "cut off when the test stopped",
}
log = logging.getLogger("couponrush")


class Race:
    """This process's race (greenlets switch only on I/O, so no locking)."""

    def __init__(self) -> None:
        self.coupon_id, self.created, self.stopping = "", False, False
        self.sent, self.in_flight = 0, 0
        self.outcomes: Counter[str] = Counter()
        self.failures: list[str] = []
        self.tokens: dict[int, str] = {}


race = Race()


def token(subject: Any, role: str) -> str:
    now = int(time.time())  # valid for 3 hours, longer than any run
    claims = {"sub": str(subject), "role": role, "exp": now + 3 * 3600, "iat": now}
    return jwt.encode(claims, JWT_SECRET, algorithm="HS256")


@events.init_command_line_parser.add_listener
def add_arguments(parser: Any) -> None:
    group = parser.add_argument_group("couponrush issue race")
    for flag, kind, default, env, text in (
        ("--coupon-id", str, "", "COUPON_ID", "race for this coupon instead of creating one"),
        ("--stock", int, 500, "STOCK", "stock of the coupon created at test start"),
        ("--user-id-count", int, 5000, "USER_ID_COUNT", "distinct user ids"),
        ("--user-id-start", int, 1, "USER_ID_START", "lowest user id"),
        ("--repeat-share", float, 0.5, "REPEAT_SHARE", "share (0..1) of requests re-sending a used id"),
        ("--max-requests", int, 10000, "MAX_REQUESTS", "issue requests in total; 0 = until --run-time"),
        ("--max-error-ratio", float, 0.01, "MAX_ERROR_RATIO", "fail above this share of failed requests"),
        ("--max-p99-ms", float, 1000.0, "P99_MS", "fail above this p99 (ms); 0 = off"),
        ("--race-json", str, "", "RACE_JSON", "write coupon id, 202 count and unanswered requests here"),
    ):
        shown = f"; default {default}" if default != "" else ""
        group.add_argument(flag, type=kind, default=default, env_var=env, help=f"{text} (${env}{shown})")


def fail(environment: Environment, message: str) -> None:
    log.error("%s", message)
    race.failures.append(message)
    stop(environment)


def stop(environment: Environment) -> None:
    """Ends the test once, from a fresh greenlet (never from inside a user being killed)."""
    if not race.stopping:
        race.stopping = True
        headless = environment.parsed_options.headless
        gevent.spawn(environment.runner.quit if headless else environment.runner.stop)


def create_coupon(host: str, stock: int) -> str:
    for _ in range(30):
        try:
            if requests.get(f"{host}/ready", timeout=5).status_code == 200:
                break
        except requests.RequestException:
            pass
        gevent.sleep(1)
    else:
        raise RuntimeError(f"{host}/ready did not answer 200 within 30 s")
    now = datetime.now(timezone.utc)
    res = requests.post(f"{host}/api/v1/coupons", timeout=10, json={
        "title": "locust race", "coupon_type": "FIRST_COME_FIRST_SERVED", "total_quantity": stock,
        "discount_type": "FIXED", "discount_value": 1000, "min_order_amount": 0, "valid_days": 30,
        "issue_starts_at": (now - timedelta(minutes=1)).isoformat(),
        "issue_ends_at": (now + timedelta(hours=1)).isoformat(),
    }, headers={"Authorization": f"Bearer {token('load-test', 'admin')}"})
    if res.status_code != 201:
        hint = " (is JWT_SECRET the secret coupon-api runs with?)" if res.status_code == 401 else ""
        raise RuntimeError(f"creating the coupon answered {res.status_code} {res.text}{hint}")
    return str(res.json()["id"])


@events.test_start.add_listener
def on_test_start(environment: Environment, **_kw: Any) -> None:
    if not isinstance(environment.runner, LocalRunner):
        return fail(environment, "the locustfile counts in one process: drop --processes/--master")
    opts = environment.parsed_options
    race.__init__()
    if opts.coupon_id:
        race.coupon_id = opts.coupon_id
        return
    try:
        race.coupon_id = create_coupon((environment.host or IssueRace.host).rstrip("/"), opts.stock)
        race.created = True
        log.info("created coupon %s with stock %d", race.coupon_id, opts.stock)
    except (requests.RequestException, RuntimeError) as err:
        fail(environment, str(err))


def user_id(number: int, opts: Any) -> int:
    """Request `number` takes the next unused id when ceil(n * (1 - share)) grows there (the
    first request always does); otherwise, or once every id is used, an id already used."""
    fresh_ppm = round((1.0 - opts.repeat_share) * 1_000_000)  # integer arithmetic, like k6's
    fresh = lambda n: 0 if n == 0 else max(1, (n * fresh_ppm + 999_999) // 1_000_000)  # noqa: E731
    before = fresh(number)
    if fresh(number + 1) > before and before < opts.user_id_count:
        return opts.user_id_start + before
    return opts.user_id_start + randrange(max(1, min(before, opts.user_id_count)))


def outcome(status: int, body: Any) -> str:
    code = body.get("code") if isinstance(body, dict) else None
    if status in (202, 429, 503, 0):
        return {202: "accepted", 429: "rate_limited", 503: "unavailable", 0: "no_answer"}[status]
    if status == 409:
        known = {"ALREADY_ISSUED": "already_issued", "ISSUE_IN_PROGRESS": "in_progress", "SOLD_OUT": "sold_out"}
        return known.get(code, "conflict_other")
    return "server_error" if status >= 500 else "other"


class IssueRace(FastHttpUser):
    host = (os.environ.get("BASE_URL") or "http://127.0.0.1:8080").rstrip("/")
    wait_time = constant(0)
    network_timeout, connection_timeout = 10.0, 5.0

    @task
    def issue(self) -> None:
        opts = self.environment.parsed_options
        if not race.coupon_id or (opts.max_requests and race.sent >= opts.max_requests):
            if race.coupon_id and race.in_flight == 0:
                stop(self.environment)  # every request sent and answered
            gevent.sleep(0.25)
            return
        user = user_id(race.sent, opts)
        race.sent += 1
        race.in_flight += 1
        result = "cut_off"  # unless an answer comes
        try:
            auth = race.tokens.get(user) or race.tokens.setdefault(user, token(user, "user"))
            with self.client.post(f"/api/v1/coupons/{race.coupon_id}/issues", catch_response=True,
                                  name="/api/v1/coupons/{coupon_id}/issues",
                                  headers={"Authorization": f"Bearer {auth}"}) as res:
                try:
                    body = res.json()
                except Exception:  # noqa: BLE001 - not JSON, or no answer
                    body = None
                result = outcome(res.status_code or 0, body)
                if res.status_code in (202, 409):  # a correct answer in a race
                    res.success()
                else:
                    res.failure(OUTCOMES[result])
        finally:
            race.in_flight -= 1
            race.outcomes[result] += 1


@events.quitting.add_listener
def on_quitting(environment: Environment, **_kw: Any) -> None:
    opts, stats = environment.parsed_options, environment.stats.total
    p99 = stats.get_response_time_percentile(0.99) if stats.num_requests else 0
    checks = [(stats.fail_ratio <= opts.max_error_ratio,
               f"failed {stats.num_failures} of {stats.num_requests} <= {opts.max_error_ratio:g}"),
              (race.outcomes["server_error"] == 0, "no 5xx other than 503"),
              (not opts.max_p99_ms or p99 <= opts.max_p99_ms,
               f"p99 {p99} ms <= {opts.max_p99_ms:g} ms" if opts.max_p99_ms else "p99: no threshold")]
    if race.created:
        checks.append((race.outcomes["accepted"] <= opts.stock, f"202 answers <= stock {opts.stock}"))
    if environment.runner.exceptions:
        checks.append((False, "no exception in the locustfile"))
    checks += [(False, failure) for failure in race.failures]
    unanswered = race.outcomes["no_answer"] + race.outcomes["cut_off"]
    lines = ["", f"issue race against {environment.host or IssueRace.host}, coupon {race.coupon_id or '-'}"
             + (f" (created, stock {opts.stock})" if race.created else "")]
    lines += [f"  {label:<38} {race.outcomes[key]:>7}" for key, label in OUTCOMES.items()]
    if stats.num_requests:
        lines.append(f"  latency med {stats.median_response_time} ms, p95 "
                     f"{stats.get_response_time_percentile(0.95)} ms, p99 {p99} ms, "
                     f"max {stats.max_response_time:.0f} ms; {stats.total_rps:.0f} req/s")
    lines += [f"  {'ok  ' if ok else 'FAIL'} {text}" for ok, text in checks]
    if race.coupon_id:
        exact = f" --accepted {race.outcomes['accepted']}" if race.created and not unanswered else ""
        lines.append(f"  verify: coupon-demo verify --coupon {race.coupon_id}{exact}")
    print("\n".join(lines) + "\n", flush=True)
    # Ours to decide: Locust would exit 1 on any failure, a 503 within the ratio included.
    environment.process_exit_code = 0 if all(ok for ok, _ in checks) else 1
    if opts.race_json:
        with open(opts.race_json, "w", encoding="utf-8") as out:
            json.dump({"coupon_id": race.coupon_id or None, "created": race.created,
                       "accepted": race.outcomes["accepted"], "unanswered": unanswered,
                       "outcomes": {key: race.outcomes[key] for key in OUTCOMES}}, out, indent=2)
