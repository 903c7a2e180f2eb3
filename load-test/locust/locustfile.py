"""Locust version of the couponrush issue race (load-test/k6/issue-race.js does the same in k6).

Many users race for one first-come-first-served coupon:

    load-test/run-locust.sh                  # pinned Locust, headless, the defaults below
    locust -f load-test/locust/locustfile.py --headless --host http://127.0.0.1:8080 \
        -u 200 -r 200 --run-time 5m --max-requests 10000 --repeat-share 0.5

When the test starts, one coupon with --stock units is created (once, on the master when the
test is distributed), unless --coupon-id names an existing one. Every simulated user then sends
POST /api/v1/coupons/{id}/issues back to back for user ids from --user-id-start ..
--user-id-start + --user-id-count - 1. The test stops after --max-requests issue requests (or at
--run-time, whichever comes first; --max-requests 0 runs for --run-time alone) and prints the
outcome counts.

Tokens: coupon-api wants a bearer token (JWT, HS256) on every request but GET /ready. Each issue
request is sent as its user, with no body and `Authorization: Bearer <token>`, the claims being
{"sub": "<user id>", "role": "user", "exp": ..., "iat": ...}, signed here with PyJWT and the
secret in the environment variable JWT_SECRET (default: the local stack's development secret,
as in scripts/services.sh). Each process mints one token per user id, on the user's first
request, and keeps it (valid for an hour; renewed when it gets close to expiry). Creating the
coupon and reading its stats use an admin token, {"sub": "load-test", "role": "admin"}. A 401
means JWT_SECRET differs from coupon-api's (or coupon-api expects iss/aud claims: JWT_ISSUER /
JWT_AUDIENCE, not sent here).

Rate limits: coupon-api's per-address limit (500 req/s, burst 1000, on by default) answers a
load generator on one address 429 RATE_LIMITED; run coupon-api with RATE_LIMITS=off. 429s are
counted as their own outcome and, being unexpected, as failures.

Fresh and repeat requests (--user-pick share, the default): a share --repeat-share of the
requests re-sends a user id that an earlier request already used (picked at random among those,
so some repeats race their user's first request), the others each take the next unused id. The
split is spread evenly over the run (with 0.5: fresh, repeat, fresh, repeat, ...), counted over
all users of the run by request number; in a distributed run each worker takes every n-th
request number, so "already used" is exact per worker and approximate across workers. Once all
--user-id-count ids are used every further request is a repeat, so the share actually sent is
at least 1 - user-id-count / max-requests; the defaults (10,000 requests, 5,000 ids, 0.5) use
every id exactly once fresh and once again. 0 means every request is a new user (as far as the
ids last), 1 means one user asks every time.

Parameters (options this file adds; each also read from the environment variable in brackets):

    --host (LOCUST_HOST, or BASE_URL)  http://127.0.0.1:8080   the coupon-api under test
    (JWT_SECRET, environment only)     couponrush-local-development-secret (scripts/services.sh's)
                                               HS256 secret of the tokens: coupon-api's JWT_SECRET
    --coupon-id (COUPON_ID)            -       race for an existing coupon instead of creating one
    --stock (STOCK)                    500     stock of the coupon created at test start
    --user-id-count (USER_ID_COUNT)    5000    number of distinct user ids (users)
    --user-id-start (USER_ID_START)    1       lowest user id
    --repeat-share (REPEAT_SHARE)      0.5     share (0..1) of requests re-sending a used user id
    --user-pick (USER_PICK)            share   share (above); random: each request draws an id
                                               uniformly at random (--repeat-share ignored);
                                               cycle: request i uses id i mod user-id-count
    --max-requests (MAX_REQUESTS)      10000   issue requests in total (the iteration count);
                                               0 = run for --run-time (the duration) alone
    --max-error-ratio (MAX_ERROR_RATIO) 0.01   threshold: at most this share of issue requests
                                               may fail (503, other statuses, connection errors)
    --max-p99-ms (P99_MS)              1000    threshold: p99 of the issue requests at most this
                                               many milliseconds; 0 turns it off
    --ready-timeout (READY_TIMEOUT_S)  30      seconds to wait for GET /ready at test start
    --summary-json (SUMMARY_JSON)      -       also write the outcome, thresholds and stats here

Locust's own -u (users, i.e. concurrent clients), -r (spawn rate) and --run-time complete the
set; load-test/run-locust.sh defaults them to 200, 200 and 5m.

202 and 409 count as successes in Locust's statistics; 503 (the service failing closed), 429
(rate limited), any other status and connection errors count as failures. The exit code is
decided here, not by Locust's "any failure" rule: it is non-zero when the error ratio or the p99
exceeds its threshold, a 5xx other than 503 was seen, more issues were accepted than the coupon
had stock, the locustfile raised, or the exactness check fails.

Exactness check (when the test stops, on the master or the local runner): new requests are held
back and those in flight answered, then GET /api/v1/coupons/{id}/stats is polled for up to 60 s
until pending is 0. The run fails when admitted or issued exceed total, pending stays above 0
(or issued differs from admitted), or, when this run created the coupon, the number of 202s
seen differs from admitted.

Distributed runs (--processes N, or --master/--worker) split --max-requests between the
workers; start at least as many users as there are workers.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from datetime import datetime, timedelta, timezone
from random import randint, randrange
from typing import Any

import gevent
import gevent.event
from locust import constant, events, task
from locust.contrib.fasthttp import FastHttpUser
from locust.env import Environment
from locust.runners import LocalRunner, MasterRunner, WorkerRunner

# PyJWT, imported after locust: locust monkey-patches ssl when imported, and PyJWT imports ssl
# (gevent warns about modules that imported ssl before the patch).
import jwt  # noqa: E402

DEFAULT_HOST = (os.environ.get("BASE_URL") or "http://127.0.0.1:8080").rstrip("/")
# Every issue request is reported under the route, not the URL, so the statistics have one row
# instead of one per coupon id.
ISSUE_ROUTE = "/api/v1/coupons/{coupon_id}/issues"
DONE_MESSAGE = "couponrush_done"  # worker -> master: share sent, every answer in, final counts
HALT_MESSAGE = "couponrush_halt"  # master -> workers: the test is stopping, send no more
REPORT_KEY = "couponrush_outcomes"
# Set on the master's parsed options at test start; Locust copies custom options to the workers
# with each spawn message, which is how the workers learn the coupon id and their share.
WORKERS_OPTION = "couponrush_worker_count"
# How long the exactness check waits for the consumer to persist every admission (as k6's).
STATS_WAIT_S = 60.0
# How long stopping waits for answers to requests in flight (the user's network timeout + slack).
DRAIN_WAIT_S = 15.0
# How long a user without work sleeps before looking again.
IDLE_S = 0.25
# HS256 secret of the tokens: coupon-api's JWT_SECRET; the local stack's development secret
# (scripts/services.sh) unless set.
JWT_SECRET = os.environ.get("JWT_SECRET") or "couponrush-local-development-secret"
# Subject of the admin token that creates the coupon and reads its stats.
ADMIN_SUBJECT = "load-test"
# Lifetime of a token (s), and how long before its expiry a cached one is replaced.
TOKEN_TTL_S = 3600
TOKEN_RENEW_S = 300

OUTCOMES = (
    ("accepted", "202 accepted"),
    ("already_issued", "409 ALREADY_ISSUED"),
    ("sold_out", "409 SOLD_OUT"),
    ("conflict_other", "409 other code"),
    ("rate_limited", "429 RATE_LIMITED"),
    ("unavailable", "503 unavailable"),
    ("server_error", "5xx other (bug)"),
    ("other", "other / conn. error"),
)
# Counted along with the outcomes, not one of them: requests re-sending a used user id, and
# requests that ended without an answer being counted (cut off by Ctrl-C or a forced stop).
REPEAT_KEY = "repeat"
UNANSWERED_KEY = "unanswered"

log = logging.getLogger("couponrush")


class Race:
    """Per-process bookkeeping (greenlets switch only on I/O, so no locking is needed)."""

    def __init__(self) -> None:
        self.user_supplied_coupon = False
        self.stock: int | None = None
        # Master only: outcome totals reported by the workers, and workers that have finished.
        self.worker_totals: Counter[str] = Counter()
        self.done_workers: set[str] = set()
        self.expected_workers = 0
        # Master / local: failed checks of the whole process (several tests in the web UI).
        self.failures: list[str] = []
        self.tests_started = 0
        self.exactness: dict[str, Any] | None = None
        self.reset(limit=None)

    def reset(self, limit: int | None, stride: int = 1, offset: int = 0) -> None:
        self.outcomes: Counter[str] = Counter()  # everything this process saw
        self.unreported: Counter[str] = Counter()  # worker: not yet sent to the master
        self.limit = limit  # issue requests this process may send; None = no limit
        # This process's n-th request is request number n * stride + offset of the whole run.
        self.stride = stride
        self.offset = offset
        self.sent = 0
        self.in_flight = 0
        self.finished = False  # share sent and answered (worker: DONE sent; master: all DONE)
        self.halted = False  # stopping: take no more tickets
        self.stopping = False  # the test is stopping: do not start another stop
        self.check_started = False
        self.check_done = gevent.event.Event()
        self.exactness = None

    def take_ticket(self) -> int | None:
        """The run-wide number of the next request, or None when this process must stop."""
        if self.halted or (self.limit is not None and self.sent >= self.limit):
            return None
        number = self.sent * self.stride + self.offset
        self.sent += 1
        self.in_flight += 1
        return number

    def exhausted(self) -> bool:
        out_of_tickets = self.halted or (self.limit is not None and self.sent >= self.limit)
        return out_of_tickets and self.in_flight == 0

    def record(self, outcome: str) -> None:
        self.outcomes[outcome] += 1
        self.unreported[outcome] += 1


race = Race()


def mint_token(subject: str, role: str) -> tuple[str, int]:
    """An HS256 JWT for `subject` with `role` (the claims coupon-api reads), and its expiry."""
    now = int(time.time())
    exp = now + TOKEN_TTL_S
    claims = {"sub": subject, "role": role, "exp": exp, "iat": now}
    return jwt.encode(claims, JWT_SECRET, algorithm="HS256"), exp


# This process's user tokens by user id: (token, expiry). Minted on a user's first request.
user_tokens: dict[int, tuple[str, int]] = {}


def user_token(user_id: int) -> str:
    """The token acting for `user_id`: minted once per user (per process), renewed near expiry."""
    cached = user_tokens.get(user_id)
    if cached is None or cached[1] - TOKEN_RENEW_S <= time.time():
        cached = user_tokens[user_id] = mint_token(str(user_id), "user")
    return cached[0]


def admin_token() -> str:
    return mint_token(ADMIN_SUBJECT, "admin")[0]


def auth_hint(status: int) -> str:
    """Why a 401 or 403 happened, for set-up and check messages."""
    if status == 401:
        return " (token refused: is JWT_SECRET the secret coupon-api runs with?)"
    if status == 403:
        return " (the admin token was not accepted as admin)"
    return ""


def ratio(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be from 0 to 1, got {text}")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0.0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


@events.init_command_line_parser.add_listener
def add_arguments(parser: Any) -> None:
    group = parser.add_argument_group("couponrush issue race")
    group.add_argument("--coupon-id", type=str, default="", env_var="COUPON_ID",
                       help="race for this existing coupon instead of creating one")
    group.add_argument("--stock", type=positive_int, default=500, env_var="STOCK",
                       help="total_quantity of the coupon created at test start (default 500)")
    group.add_argument("--user-id-count", type=positive_int, default=5000, env_var="USER_ID_COUNT",
                       help="number of distinct user ids (users) the requests are for "
                            "(default 5000)")
    group.add_argument("--user-id-start", type=positive_int, default=1, env_var="USER_ID_START",
                       help="lowest user id sent (default 1)")
    group.add_argument("--repeat-share", type=ratio, default=0.5, env_var="REPEAT_SHARE",
                       help="share (0..1) of requests that re-send a user id an earlier request "
                            "already used; the others take the next unused id (default 0.5)")
    group.add_argument("--user-pick", choices=("share", "random", "cycle"), default="share",
                       env_var="USER_PICK",
                       help="share: fresh ids and repeats per --repeat-share; random: each "
                            "request draws an id uniformly at random; cycle: request i uses id "
                            "i mod --user-id-count (default share)")
    group.add_argument("--max-requests", type=non_negative_int, default=10000, env_var="MAX_REQUESTS",
                       help="stop after this many issue requests in total; 0 = run until "
                            "--run-time or Ctrl-C (default 10000)")
    group.add_argument("--max-error-ratio", type=ratio, default=0.01, env_var="MAX_ERROR_RATIO",
                       help="fail the run when more than this share of issue requests failed "
                            "(503, other statuses, connection errors; default 0.01)")
    group.add_argument("--max-p99-ms", type=non_negative_float, default=1000.0, env_var="P99_MS",
                       help="fail the run when the issue requests' p99 exceeds this many "
                            "milliseconds; 0 = no latency threshold (default 1000)")
    group.add_argument("--ready-timeout", type=non_negative_float, default=30.0,
                       env_var="READY_TIMEOUT_S",
                       help="seconds to wait for GET /ready before creating the coupon (default 30)")
    group.add_argument("--summary-json", type=str, default="", env_var="SUMMARY_JSON",
                       help="also write the outcome counts, thresholds, exactness check and "
                            "latency to this JSON file when Locust quits")


@events.init.add_listener
def on_init(environment: Environment, **_kw: Any) -> None:
    opts = environment.parsed_options
    race.user_supplied_coupon = bool(opts and opts.coupon_id)
    if isinstance(environment.runner, MasterRunner):
        environment.runner.register_message(DONE_MESSAGE, on_worker_done)
    elif isinstance(environment.runner, WorkerRunner):
        environment.runner.register_message(HALT_MESSAGE, on_halt)


def base_url(environment: Environment) -> str:
    return (environment.host or DEFAULT_HOST).rstrip("/")


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def http_json(method: str, url: str, body: dict[str, Any] | None = None,
              timeout: float = 10.0, token: str | None = None) -> tuple[int, Any]:
    """One request outside Locust's statistics (set-up, checks), with `token` as its bearer
    token if given. Returns (status, parsed body)."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Accept": "application/json"}
    if data is not None:
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
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
    status, payload = http_json("POST", f"{host}/api/v1/coupons", body, token=admin_token())
    if status != 201 or not isinstance(payload, dict) or payload.get("id") is None:
        raise RuntimeError(f"creating the coupon failed: HTTP {status} {payload!r}"
                           f"{auth_hint(status)}")
    return str(payload["id"])


def fresh_before(number: int, repeat_share: float) -> int:
    """How many of the requests before request `number` take a fresh user id:
    ceil(number * (1 - repeat_share)), in integer arithmetic (per million) like the k6 script,
    and at least 1 from number 1 on, so the very first request is always fresh."""
    if number == 0:
        return 0
    fresh_ppm = round((1.0 - repeat_share) * 1_000_000)
    return max(1, (number * fresh_ppm + 999_999) // 1_000_000)


def warn_if_ids_run_out(opts: Any) -> None:
    """Warns when the fresh ids run out before the planned requests do (--user-pick share)."""
    if opts.user_pick != "share" or opts.max_requests <= 0:
        return
    wanted = fresh_before(opts.max_requests, opts.repeat_share)
    if wanted <= opts.user_id_count:
        return
    number = 0
    while fresh_before(number + 1, opts.repeat_share) <= opts.user_id_count:
        number += 1
    log.warning("--repeat-share %g wants %d fresh user ids but --user-id-count is %d: every "
                "request from number %d on is a repeat (share sent %.3f)",
                opts.repeat_share, wanted, opts.user_id_count, number + 1,
                1 - opts.user_id_count / opts.max_requests)


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
        # max_requests % n workers, so the shares add up to exactly --max-requests; its k-th
        # request is request number k * n + i of the run, so the numbers do not overlap.
        workers = max(1, int(getattr(opts, WORKERS_OPTION, 1) or 1))
        index = max(0, runner.worker_index) % workers
        share = opts.max_requests // workers + (1 if index < opts.max_requests % workers else 0)
        race.reset(limit=share if opts.max_requests > 0 else None, stride=workers, offset=index)
        return

    local = isinstance(runner, LocalRunner)
    race.reset(limit=opts.max_requests if local and opts.max_requests > 0 else None)
    race.tests_started += 1
    race.worker_totals.clear()
    race.done_workers.clear()
    if isinstance(runner, MasterRunner):
        race.expected_workers = runner.worker_count
        setattr(opts, WORKERS_OPTION, runner.worker_count)
    warn_if_ids_run_out(opts)

    if race.user_supplied_coupon:
        race.stock = None
        log.info("racing for existing coupon %s", opts.coupon_id)
        return
    host = base_url(environment)
    try:
        wait_until_ready(host, opts.ready_timeout)
        opts.coupon_id = create_coupon(host, opts.stock)
    except (OSError, RuntimeError) as err:
        log.error("%s", err)
        race.failures.append(str(err))
        environment.process_exit_code = 1
        opts.coupon_id = ""
        race.stock = None
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
        log.info("all %d workers are done and reported their final counts", len(race.done_workers))
        if not race.stopping:
            end_test(environment)


def on_halt(environment: Environment, msg: Any, **_kw: Any) -> None:
    """Worker: the master is stopping the test; send nothing more, report once all answered."""
    race.halted = True
    race.stopping = True
    if race.in_flight == 0:
        finish_share(environment)


def finish_share(environment: Environment) -> None:
    """This process has sent its share (or was halted) and every answer is in."""
    if race.finished:
        return
    race.finished = True
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        # Sends the last counts with the message, so the master has them before it quits.
        runner.send_message(DONE_MESSAGE, {REPORT_KEY: dict(race.unreported)})
        race.unreported.clear()
    elif not race.stopping:
        log.info("sent %d issue requests, stopping", race.sent)
        end_test(environment)


def halt(environment: Environment) -> None:
    """Holds back new issue requests and waits for the answers to those in flight, so the
    202 count is complete before the exactness check compares it with the API's stats."""
    race.stopping = True
    race.halted = True
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        return
    deadline = time.monotonic() + DRAIN_WAIT_S
    if isinstance(runner, MasterRunner):
        if len(race.done_workers) < race.expected_workers:
            runner.send_message(HALT_MESSAGE)
        while len(race.done_workers) < race.expected_workers and time.monotonic() < deadline:
            gevent.sleep(0.1)
    else:
        while race.in_flight > 0 and time.monotonic() < deadline:
            gevent.sleep(0.05)


def outcome_totals(environment: Environment) -> Counter[str]:
    return race.worker_totals if isinstance(environment.runner, MasterRunner) else race.outcomes


def answers_complete(environment: Environment) -> bool:
    """Whether every issue request sent has been answered and counted."""
    if outcome_totals(environment).get(UNANSWERED_KEY, 0):
        return False
    if isinstance(environment.runner, MasterRunner):
        return len(race.done_workers) >= race.expected_workers
    return race.in_flight == 0


def fail(message: str) -> None:
    log.error("%s", message)
    race.failures.append(message)


def check_exactness(environment: Environment) -> None:
    """Like the k6 teardown: waits up to STATS_WAIT_S for pending 0, then checks the stats."""
    opts = environment.parsed_options
    coupon = opts.coupon_id if opts else ""
    if not coupon:
        return  # no coupon was raced for (creating it failed; already reported)
    url = f"{base_url(environment)}/api/v1/coupons/{urllib.parse.quote(coupon, safe='')}/stats"
    stats: dict[str, Any] | None = None
    last: Any = None
    deadline = time.monotonic() + STATS_WAIT_S
    token = admin_token()
    while True:
        try:
            status, body = http_json("GET", url, timeout=5, token=token)
            if status == 200 and isinstance(body, dict):
                stats = body
                if body.get("pending") == 0:
                    break
            else:
                last = f"HTTP {status} {body!r}{auth_hint(status)}"
        except OSError as err:
            last = err
        if time.monotonic() >= deadline:
            break
        gevent.sleep(0.5)
    if stats is None:
        fail(f"exactness: {url} never answered 200 ({last})")
        return

    total, admitted = stats.get("total"), stats.get("admitted")
    issued, pending = stats.get("issued"), stats.get("pending")
    accepted = outcome_totals(environment).get("accepted", 0)
    complete = answers_complete(environment)
    race.exactness = {"coupon_id": coupon, "total": total, "admitted": admitted, "issued": issued,
                      "pending": pending, "accepted_202": accepted, "answers_complete": complete}
    print(f"exactness: coupon {coupon}: total {total}, admitted {admitted}, issued {issued}, "
          f"pending {pending}; 202 answers seen {accepted}", flush=True)
    if not all(isinstance(v, int) for v in (admitted, issued, pending)):
        fail(f"exactness: unexpected stats body {stats!r}")
        return
    if total is not None and (admitted > total or issued > total):
        fail(f"exactness: OVERSOLD (admitted {admitted}, issued {issued}, total {total})")
    if pending != 0:
        fail(f"exactness: {pending} admissions not persisted after {STATS_WAIT_S:g} s")
    elif admitted != issued:
        fail(f"exactness: admitted {admitted} but issued {issued}")
    if race.stock is not None:  # this run created the coupon: every admission is ours
        if accepted > admitted or (complete and accepted != admitted):
            fail(f"exactness: {accepted} answers were 202 but the API admitted {admitted}")
        elif accepted != admitted:
            log.warning("exactness: %d answers were 202, the API admitted %d; some requests "
                        "were cut off unanswered when the test stopped, so not a failure",
                        accepted, admitted)


def stop_and_check(environment: Environment) -> None:
    """Once per test, on the master or local runner: halt, drain, check exactness."""
    if race.check_started:
        race.check_done.wait(timeout=STATS_WAIT_S + DRAIN_WAIT_S + 30)  # another greenlet's
        return
    race.check_started = True
    try:
        halt(environment)
        check_exactness(environment)
    finally:
        race.check_done.set()


@events.test_stopping.add_listener
def on_test_stopping(environment: Environment, **_kw: Any) -> None:
    # Before Locust kills the users: let the requests in flight be answered first.
    if not isinstance(environment.runner, WorkerRunner):
        halt(environment)
    else:
        race.halted = True
        race.stopping = True


@events.test_stop.add_listener
def on_test_stop(environment: Environment, **_kw: Any) -> None:
    if not isinstance(environment.runner, WorkerRunner):
        stop_and_check(environment)


def classify(status: int, body: Any) -> str:
    if status == 202:
        return "accepted"
    if status == 409:
        code = body.get("code") if isinstance(body, dict) else None
        return {"ALREADY_ISSUED": "already_issued", "SOLD_OUT": "sold_out"}.get(code, "conflict_other")
    if status == 429:
        return "rate_limited"
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
        self.user_id_count = max(1, opts.user_id_count if opts else 1)
        self.repeat_share = opts.repeat_share if opts else 0.5
        self.user_pick = opts.user_pick if opts else "share"

    def pick_user_id(self, number: int) -> tuple[int, bool | None]:
        """The user id for request `number` of the run, and whether it re-sends an id an
        earlier request already used (known for --user-pick share only; None otherwise)."""
        if self.user_pick == "cycle":
            return self.user_id_start + number % self.user_id_count, None
        if self.user_pick == "random":
            return randint(self.user_id_start, self.user_id_start + self.user_id_count - 1), None
        before = fresh_before(number, self.repeat_share)
        if fresh_before(number + 1, self.repeat_share) > before and before < self.user_id_count:
            return self.user_id_start + before, False  # the next unused id
        # A repeat: any id an earlier request took (possibly still in flight).
        used = max(1, min(before, self.user_id_count))
        return self.user_id_start + randrange(used), True

    @task
    def issue(self) -> None:
        # Without work (no coupon: test start failed and is ending the test; or this process's
        # share is sent, or the test is stopping) a user idles until Locust stops it, rather
        # than raising StopUser, for which Locust logs "didn't have proper args" at stop.
        if not self.coupon_id:
            gevent.sleep(IDLE_S)
            return
        number = race.take_ticket()
        if number is None:
            if race.in_flight == 0:
                finish_share(self.environment)
            gevent.sleep(IDLE_S)
            return
        answered = False
        try:
            user_id, repeat = self.pick_user_id(number)
            if repeat:
                race.record(REPEAT_KEY)
            # The user is the token's subject; no body (and so no Content-Type: with one,
            # coupon-api would parse the empty body as JSON and refuse it).
            with self.client.post(
                f"/api/v1/coupons/{self.coupon_id}/issues",
                headers={"Accept": "application/json",
                         "Authorization": f"Bearer {user_token(user_id)}"},
                name=ISSUE_ROUTE,
                catch_response=True,
            ) as res:
                try:
                    body = res.json()
                except Exception:  # noqa: BLE001 - not JSON (or no body at all)
                    body = None
                outcome = classify(res.status_code or 0, body)
                race.record(outcome)
                answered = True
                if res.status_code in (202, 409):
                    # "Already issued" and "sold out" are correct answers in a race.
                    res.success()
                elif outcome == "unavailable":
                    res.failure("503 unavailable")
                elif outcome == "rate_limited":
                    res.failure("429 RATE_LIMITED")
                elif res.status_code:
                    res.failure(f"HTTP {res.status_code}")
                else:
                    res.failure(f"connection error: {getattr(res, 'error', None)}")
        finally:
            race.in_flight -= 1
            if not answered:
                race.record(UNANSWERED_KEY)
        if race.exhausted():
            finish_share(self.environment)


@events.quitting.add_listener
def on_quitting(environment: Environment, **_kw: Any) -> None:
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        return
    if race.tests_started == 0:
        return  # web UI closed without running a test: nothing to report
    # Normally done at test stop already; on Ctrl-C or SIGTERM Locust quits before stopping.
    stop_and_check(environment)

    opts = environment.parsed_options
    totals = outcome_totals(environment)
    total = sum(totals.get(key, 0) for key, _ in OUTCOMES)
    lines = ["", f"couponrush issue race against {base_url(environment)}"]
    coupon = opts.coupon_id if opts else ""
    stock = f", stock {race.stock}" if race.stock is not None else ""
    pick = opts.user_pick if opts else "share"
    if pick == "share":
        pick = f"repeat share {opts.repeat_share:g}"
    if opts:
        lines.append(f"  coupon {coupon or '-'}{stock}; user ids {opts.user_id_start}.."
                     f"{opts.user_id_start + opts.user_id_count - 1} ({pick})")
    for key, label in OUTCOMES:
        lines.append(f"  {label:<20} {totals.get(key, 0):>8}")
    lines.append(f"  {'total':<20} {total:>8}")
    repeats = totals.get(REPEAT_KEY, 0)
    if opts and opts.user_pick == "share" and total > 0:
        lines.append(f"  {'repeat user ids':<20} {repeats:>8}  ({repeats / total:.3f} of requests)")
    if totals.get(UNANSWERED_KEY, 0):
        lines.append(f"  {'cut off, unanswered':<20} {totals[UNANSWERED_KEY]:>8}  (not in the total)")
    if totals.get("rate_limited", 0):
        lines.append(f"  {totals['rate_limited']} answers were 429 RATE_LIMITED: coupon-api's rate "
                     f"limits are on; start it with RATE_LIMITS=off")

    s = environment.stats.total
    p50, p95, p99 = (s.get_response_time_percentile(q) if s.num_requests else None
                     for q in (0.5, 0.95, 0.99))
    if s.num_requests:
        lines.append(f"  latency  med {p50}ms  p95 {p95}ms  p99 {p99}ms  "
                     f"max {s.max_response_time:.1f}ms; {s.total_rps:.0f} req/s")
    accepted = totals.get("accepted", 0)
    if race.stock is not None:
        verdict = ("OVERSOLD" if accepted > race.stock
                   else "sold out exactly" if accepted == race.stock else "not sold out")
        lines.append(f"  accepted {accepted} of stock {race.stock}: {verdict}")

    # Thresholds and checks; each (ok, description).
    checks: list[tuple[bool, str]] = []
    max_ratio = opts.max_error_ratio if opts else 0.01
    if s.num_requests:
        checks.append((s.fail_ratio <= max_ratio,
                       f"error ratio {s.fail_ratio:.4f} ({s.num_failures} of {s.num_requests}) "
                       f"<= {max_ratio:g}"))
    elif coupon:
        checks.append((False, "no issue request was made"))
    max_p99 = opts.max_p99_ms if opts else 0.0
    if max_p99 > 0 and s.num_requests:
        checks.append((p99 <= max_p99, f"p99 {p99}ms <= {max_p99:g}ms"))
    checks.append((totals.get("server_error", 0) == 0,
                   f"5xx other than 503: {totals.get('server_error', 0)} == 0"))
    if race.stock is not None:
        checks.append((accepted <= race.stock, f"202 accepted {accepted} <= stock {race.stock}"))
    if runner.exceptions:
        count = sum(row["count"] for row in runner.exceptions.values())
        checks.append((False, f"{count} exception(s) in the locustfile"))
    # Set-up and exactness failures (of every test this process ran, in the web UI).
    checks.extend((False, text) for text in race.failures)
    if race.exactness is not None and not race.failures:
        e = race.exactness
        checks.append((True, f"exactness: admitted {e['admitted']}, issued {e['issued']} <= "
                             f"total {e['total']}, pending {e['pending']}"
                       + (f", 202 answers {e['accepted_202']} == admitted"
                          if race.stock is not None and e["accepted_202"] == e["admitted"]
                          else "")))

    lines.append("")
    lines.append("  thresholds and checks")
    for ok, text in checks:
        lines.append(f"    {'ok  ' if ok else 'FAIL'} {text}")
    failed = sum(1 for ok, _ in checks if not ok)
    lines.append(f"  {failed} failed" if failed else "  all passed")
    print("\n".join(lines) + "\n", flush=True)

    # The exit code is ours to decide: Locust would otherwise exit 1 on any single failure
    # (a 503 within --max-error-ratio included). A code set earlier (set-up failed) stands.
    if failed:
        environment.process_exit_code = 1
    elif environment.process_exit_code is None:
        environment.process_exit_code = 0

    if opts and opts.summary_json:
        summary = {
            "host": base_url(environment),
            "coupon_id": coupon or None,
            "stock": race.stock,
            "parameters": {k: getattr(opts, k) for k in (
                "user_id_start", "user_id_count", "repeat_share", "user_pick", "max_requests",
                "max_error_ratio", "max_p99_ms", "num_users", "spawn_rate", "run_time")},
            "outcomes": {key: totals.get(key, 0) for key, _ in OUTCOMES},
            "total": total,
            "repeat_requests": repeats if opts.user_pick == "share" else None,
            "unanswered_requests": totals.get(UNANSWERED_KEY, 0),
            "latency_ms": {"med": p50, "p95": p95, "p99": p99,
                           "max": s.max_response_time if s.num_requests else None,
                           "avg": s.avg_response_time if s.num_requests else None},
            "requests": s.num_requests,
            "failures": s.num_failures,
            "rps": s.total_rps,
            "exactness": race.exactness,
            "checks": [{"ok": ok, "check": text} for ok, text in checks],
            "exit_code": environment.process_exit_code,
        }
        folder = os.path.dirname(opts.summary_json)
        if folder:
            os.makedirs(folder, exist_ok=True)
        with open(opts.summary_json, "w", encoding="utf-8") as out:
            json.dump(summary, out, indent=2)
            out.write("\n")
