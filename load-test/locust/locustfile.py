"""Locust version of the couponrush issue race (load-test/k6/issue-race.js does the same in k6).

Many users race for one first-come-first-served coupon:

    pip install -r load-test/locust/requirements.txt
    locust -f load-test/locust/locustfile.py --headless --host http://127.0.0.1:8080 \
        -u 200 -r 200 --run-time 2m --max-requests 10000

When the test starts, one coupon with --stock units is created (once, on the master when the
test is distributed), unless --coupon-id names an existing one. Every simulated user then sends
POST /api/v1/coupons/{id}/issues back to back, each time for a random user id drawn from
--user-id-start .. --user-id-start + --user-id-count - 1, so users ask more than once and
"already issued" answers are exercised along with "sold out" ones. The test stops after
--max-requests issue requests (or at --run-time, whichever comes first) and prints the outcome
counts.

202 and 409 count as successes in Locust's statistics; 503 (the service failing closed), any
other status and connection errors count as failures. The process exits non-zero on any
failure (Locust's default), and also when a 5xx other than 503 was seen or more issues were
accepted than the coupon had stock (oversold).

Distributed runs (--processes N, or --master/--worker) split --max-requests between the
workers; start at least as many users as there are workers.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from collections import Counter
from datetime import datetime, timedelta, timezone
from random import randint
from typing import Any

import gevent
from locust import constant, events, task
from locust.contrib.fasthttp import FastHttpUser
from locust.env import Environment
from locust.exception import StopUser
from locust.runners import LocalRunner, MasterRunner, WorkerRunner

DEFAULT_HOST = "http://127.0.0.1:8080"
# Every issue request is reported under the route, not the URL, so the statistics have one row
# instead of one per coupon id.
ISSUE_ROUTE = "/api/v1/coupons/{coupon_id}/issues"
DONE_MESSAGE = "couponrush_done"
REPORT_KEY = "couponrush_outcomes"
# Set on the master's parsed options at test start; Locust copies custom options to the workers
# with each spawn message, which is how the workers learn the coupon id and their share.
WORKERS_OPTION = "couponrush_worker_count"

OUTCOMES = (
    ("accepted", "202 accepted"),
    ("already_issued", "409 ALREADY_ISSUED"),
    ("sold_out", "409 SOLD_OUT"),
    ("conflict_other", "409 other code"),
    ("unavailable", "503 unavailable"),
    ("server_error", "5xx other (bug)"),
    ("other", "other / conn. error"),
)

log = logging.getLogger("couponrush")


class Race:
    """Per-process bookkeeping (greenlets switch only on I/O, so no locking is needed)."""

    def __init__(self) -> None:
        self.reset(limit=None)
        self.user_supplied_coupon = False
        self.stock: int | None = None
        # Master only: outcome totals reported by the workers, and workers that have finished.
        self.worker_totals: Counter[str] = Counter()
        self.done_workers: set[str] = set()
        self.expected_workers = 0

    def reset(self, limit: int | None) -> None:
        self.outcomes: Counter[str] = Counter()  # everything this process saw
        self.unreported: Counter[str] = Counter()  # worker: not yet sent to the master
        self.limit = limit  # issue requests this process may send; None = no limit
        self.sent = 0
        self.in_flight = 0
        self.finished = False

    def take_ticket(self) -> bool:
        if self.limit is not None and self.sent >= self.limit:
            return False
        self.sent += 1
        self.in_flight += 1
        return True

    def exhausted(self) -> bool:
        return self.limit is not None and self.sent >= self.limit and self.in_flight == 0

    def record(self, outcome: str) -> None:
        self.outcomes[outcome] += 1
        self.unreported[outcome] += 1


race = Race()


@events.init_command_line_parser.add_listener
def add_arguments(parser: Any) -> None:
    group = parser.add_argument_group("couponrush issue race")
    group.add_argument("--stock", type=int, default=500, env_var="STOCK",
                       help="total_quantity of the coupon created at test start (default 500)")
    group.add_argument("--coupon-id", type=str, default="", env_var="COUPON_ID",
                       help="race for this existing coupon instead of creating one")
    group.add_argument("--user-id-start", type=int, default=1, env_var="USER_ID_START",
                       help="lowest user id sent (default 1)")
    group.add_argument("--user-id-count", type=int, default=5000, env_var="USER_ID_COUNT",
                       help="how many distinct user ids requests are drawn from (default 5000)")
    group.add_argument("--max-requests", type=int, default=10000, env_var="MAX_REQUESTS",
                       help="stop after this many issue requests in total; 0 = run until "
                            "--run-time or Ctrl-C (default 10000)")
    group.add_argument("--ready-timeout", type=float, default=30.0, env_var="READY_TIMEOUT_S",
                       help="seconds to wait for GET /ready before creating the coupon (default 30)")


@events.init.add_listener
def on_init(environment: Environment, **_kw: Any) -> None:
    opts = environment.parsed_options
    race.user_supplied_coupon = bool(opts and opts.coupon_id)
    if isinstance(environment.runner, MasterRunner):
        environment.runner.register_message(DONE_MESSAGE, on_worker_done)


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def http_json(method: str, url: str, body: dict[str, Any] | None = None,
              timeout: float = 10.0) -> tuple[int, Any]:
    """One request outside Locust's statistics (test set-up). Returns (status, parsed body)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json",
                                          "Accept": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as res:
            status, raw = res.status, res.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


def wait_until_ready(host: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while True:
        try:
            status, _ = http_json("GET", f"{host}/ready", timeout=5)
            if status == 200:
                return
            last = f"HTTP {status}"
        except OSError as err:  # connection refused, timeout, DNS
            last = err
        if time.monotonic() >= deadline:
            raise RuntimeError(f"{host}/ready did not answer 200 within {timeout_s:g}s ({last})")
        gevent.sleep(1)


def create_coupon(host: str, stock: int) -> str:
    now = datetime.now(timezone.utc)
    body = {
        "title": "locust race",
        "coupon_type": "FIRST_COME_FIRST_SERVED",
        "total_quantity": stock,
        "discount_type": "FIXED",
        "discount_value": 1000,
        "min_order_amount": 0,
        "issue_starts_at": rfc3339(now - timedelta(minutes=1)),  # already open
        "issue_ends_at": rfc3339(now + timedelta(hours=1)),
        "valid_days": 30,
    }
    status, payload = http_json("POST", f"{host}/api/v1/coupons", body)
    if status != 201 or not isinstance(payload, dict) or payload.get("id") is None:
        raise RuntimeError(f"creating the coupon failed: HTTP {status} {payload!r}")
    return str(payload["id"])


def end_test(environment: Environment) -> None:
    """Stops the test from a fresh greenlet (never from inside a user that is being killed)."""
    runner = environment.runner
    headless = bool(environment.parsed_options and environment.parsed_options.headless)
    gevent.spawn(runner.quit if headless else runner.stop)


@events.test_start.add_listener
def on_test_start(environment: Environment, **_kw: Any) -> None:
    opts = environment.parsed_options
    runner = environment.runner

    if isinstance(runner, WorkerRunner):
        # The coupon id and the worker count arrived from the master with the spawn message.
        # Worker i of n sends max_requests // n requests, plus one for the first
        # max_requests % n workers, so the shares add up to exactly --max-requests.
        workers = max(1, int(getattr(opts, WORKERS_OPTION, 1) or 1))
        index = max(0, runner.worker_index) % workers
        share = opts.max_requests // workers + (1 if index < opts.max_requests % workers else 0)
        race.reset(limit=share if opts.max_requests > 0 else None)
        return

    local = isinstance(runner, LocalRunner)
    race.reset(limit=opts.max_requests if local and opts.max_requests > 0 else None)
    race.worker_totals.clear()
    race.done_workers.clear()
    if isinstance(runner, MasterRunner):
        race.expected_workers = runner.worker_count
        setattr(opts, WORKERS_OPTION, runner.worker_count)

    if race.user_supplied_coupon:
        race.stock = None
        log.info("racing for existing coupon %s", opts.coupon_id)
        return
    host = (environment.host or DEFAULT_HOST).rstrip("/")
    try:
        wait_until_ready(host, opts.ready_timeout)
        opts.coupon_id = create_coupon(host, opts.stock)
    except (OSError, RuntimeError) as err:
        log.error("%s", err)
        environment.process_exit_code = 1
        opts.coupon_id = ""
        end_test(environment)
        return
    race.stock = opts.stock
    log.info("created coupon %s with stock %d", opts.coupon_id, opts.stock)


@events.report_to_master.add_listener
def on_report_to_master(client_id: str, data: dict[str, Any], **_kw: Any) -> None:
    data[REPORT_KEY] = dict(race.unreported)
    race.unreported.clear()


@events.worker_report.add_listener
def on_worker_report(client_id: str, data: dict[str, Any], **_kw: Any) -> None:
    race.worker_totals.update(data.get(REPORT_KEY) or {})


def on_worker_done(environment: Environment, msg: Any, **_kw: Any) -> None:
    race.worker_totals.update(msg.data.get(REPORT_KEY) or {})
    race.done_workers.add(msg.node_id)
    if not race.finished and len(race.done_workers) >= max(1, race.expected_workers):
        race.finished = True
        log.info("all %d workers sent their share of requests", len(race.done_workers))
        end_test(environment)


def finish_share(environment: Environment) -> None:
    """This process has sent its share and every answer is in."""
    if race.finished:
        return
    race.finished = True
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        # Sends the last counts with the message, so the master has them before it quits.
        runner.send_message(DONE_MESSAGE, {REPORT_KEY: dict(race.unreported)})
        race.unreported.clear()
    else:
        log.info("sent %d issue requests, stopping", race.sent)
        end_test(environment)


def classify(status: int, body: Any) -> str:
    if status == 202:
        return "accepted"
    if status == 409:
        code = body.get("code") if isinstance(body, dict) else None
        return {"ALREADY_ISSUED": "already_issued", "SOLD_OUT": "sold_out"}.get(code, "conflict_other")
    if status == 503:
        return "unavailable"
    if status >= 500:
        return "server_error"
    return "other"


class CouponRaceUser(FastHttpUser):
    """One simulated client hammering the issue endpoint; concurrency is Locust's -u."""

    host = DEFAULT_HOST
    # A race: no think time between requests.
    wait_time = constant(0)
    network_timeout = 10.0
    connection_timeout = 5.0

    def on_start(self) -> None:
        opts = self.environment.parsed_options
        self.coupon_id = opts.coupon_id if opts else ""
        self.user_id_start = opts.user_id_start if opts else 1
        self.user_id_end = self.user_id_start + max(1, opts.user_id_count if opts else 1) - 1

    @task
    def issue(self) -> None:
        if not self.coupon_id:
            # Test start could not create the coupon (logged there) and is ending the test.
            # (Raised here rather than in on_start, where Locust logs StopUser as an error.)
            raise StopUser()
        if not race.take_ticket():
            if race.in_flight == 0:
                finish_share(self.environment)
            raise StopUser()
        try:
            user_id = randint(self.user_id_start, self.user_id_end)
            with self.client.post(
                f"/api/v1/coupons/{self.coupon_id}/issues",
                json={"user_id": user_id},
                name=ISSUE_ROUTE,
                catch_response=True,
            ) as res:
                try:
                    body = res.json()
                except Exception:  # noqa: BLE001 - not JSON (or no body at all)
                    body = None
                outcome = classify(res.status_code or 0, body)
                race.record(outcome)
                if res.status_code in (202, 409):
                    # "Already issued" and "sold out" are correct answers in a race.
                    res.success()
                elif outcome == "unavailable":
                    res.failure("503 unavailable")
                elif res.status_code:
                    res.failure(f"HTTP {res.status_code}")
                else:
                    res.failure(f"connection error: {getattr(res, 'error', None)}")
        finally:
            race.in_flight -= 1
        if race.exhausted():
            finish_share(self.environment)


@events.quitting.add_listener
def on_quitting(environment: Environment, **_kw: Any) -> None:
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        return
    totals = race.worker_totals if isinstance(runner, MasterRunner) else race.outcomes
    opts = environment.parsed_options
    total = sum(totals.values())
    lines = ["", f"couponrush issue race against {(environment.host or DEFAULT_HOST).rstrip('/')}"]
    coupon = opts.coupon_id if opts else ""
    stock = f", stock {race.stock}" if race.stock is not None else ""
    lines.append(f"  coupon {coupon or '-'}{stock}")
    for key, label in OUTCOMES:
        lines.append(f"  {label:<20} {totals.get(key, 0):>8}")
    lines.append(f"  {'total':<20} {total:>8}")
    accepted = totals.get("accepted", 0)
    if race.stock is not None:
        verdict = ("OVERSOLD" if accepted > race.stock
                   else "sold out exactly" if accepted == race.stock else "not sold out")
        lines.append(f"  accepted {accepted} of stock {race.stock}: {verdict}")
    print("\n".join(lines) + "\n", flush=True)

    if totals.get("server_error", 0) > 0:
        log.error("%d issue requests failed with a 5xx other than 503", totals["server_error"])
        environment.process_exit_code = 1
    if race.stock is not None and accepted > race.stock:
        log.error("oversold: %d accepted for a stock of %d", accepted, race.stock)
        environment.process_exit_code = 1
