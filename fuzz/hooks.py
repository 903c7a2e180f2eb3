"""Schemathesis hooks for scripts/fuzz.sh (loaded through SCHEMATHESIS_HOOKS=fuzz.hooks).

- `error_body_has_code`: a custom check. Every answer with status >= 400 must be JSON
  `{"code": "<string>", "message": "<string>"}`, the API's one error shape (coupon-api's
  `ErrorBody`). Runs next to the built-in `not_a_server_error`.
- `after_call`: tallies every request schemathesis sends by status, plus the answers that break
  either rule, and writes the tallies as JSON to $FUZZ_TALLY_FILE every 250 requests (so
  fuzz/budget.py sees passes still running) and when the process exits (`"done": true`).
  fuzz/summary.py adds the tallies of all passes up and checks the request count against
  coupon-api's own `http_requests_total`.
- `map_body` for `POST /api/v1/topics/{topic_id}/codes`: maps an accepted `count` (1 to
  10,000,000; the document puts no bound on it) into 1-10. Every generation request is a
  background job, and the seeded topic gets hundreds of them per pass: uncapped, they wrote
  hundreds of thousands of codes, and each bulk activate/suspend/delete of that topic then
  rewrote them all, so MariaDB, not the fuzzer, set the pace. Counts < 1 and > 10,000,000 are
  left alone: their rejection is part of what is fuzzed.
"""

from __future__ import annotations

import atexit
import json
import os
import threading
from collections import Counter

import schemathesis

_lock = threading.Lock()
_statuses: Counter[int] = Counter()
# Failing answers grouped by (kind, status, content type, body start, operation) -> count and a
# few requests that got it. The operation is left out for an empty error body (one fault, say
# the router's bare 405, shows on every operation) and kept otherwise: one generic 500 body may
# hide different faults, and a non-JSON body varies with the input.
_groups: dict[tuple, dict] = {}
_EXAMPLES_PER_GROUP = 3


def _content_type(response) -> str:
    values = response.headers.get("content-type") or [""]  # lower-case names, lists of values
    return values[0]


def _error_body_problem(response) -> str | None:
    """Why `response` (status >= 400) is not a proper error body, or None when it is."""
    content_type = _content_type(response)
    if not content_type.split(";")[0].strip().lower() == "application/json":
        return f"content-type is {content_type!r}, not application/json"
    if response.request.method == "HEAD":
        return None  # an answer to HEAD has no body by definition (RFC 9110 9.3.2)
    try:
        body = json.loads(response.content)
    except ValueError as exc:
        return f"body is not JSON ({exc})"
    if not isinstance(body, dict):
        return f"body is JSON {type(body).__name__}, not an object"
    if not isinstance(body.get("code"), str) or not body["code"]:
        return "body has no non-empty string `code`"
    if not isinstance(body.get("message"), str):
        return "body has no string `message`"
    return None


def _describe(case, response) -> dict:
    request = response.request
    body = request.body
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    return {
        "operation": case.operation.label,
        "method": request.method,
        "url": request.url,
        "headers": {k: v for k, v in request.headers.items() if k.lower() != "authorization"},
        "authorization": "bearer" if "authorization" in {k.lower() for k in request.headers} else "none",
        "body": body[:2000] if isinstance(body, str) else body,
        "status": response.status_code,
        "response_headers": {k: v for k, v in response.headers.items()},
        "response_body": response.content[:2000].decode("utf-8", "replace"),
    }


@schemathesis.check
def error_body_has_code(ctx, response, case):
    """An error answer (status >= 400) is JSON with a string `code` and a string `message`."""
    if response.status_code < 400:
        return None
    problem = _error_body_problem(response)
    if problem is not None:
        raise AssertionError(f"{response.status_code} answer without the error shape: {problem}")
    return None


def _record(kind: str, case, response) -> None:
    content_type = _content_type(response)
    body = response.content[:120].decode("utf-8", "replace")
    operation = case.operation.label if kind == "server_error" or body else ""
    if kind == "bad_error_body" and body:
        body = ""  # grouped by operation; the examples keep the bodies
    group = _groups.setdefault(
        (kind, response.status_code, content_type, body, operation),
        {"count": 0, "examples": [], "requests": set()},
    )
    group["count"] += 1
    group["requests"].add(f"{response.request.method} {case.operation.path}")
    if len(group["examples"]) < _EXAMPLES_PER_GROUP:
        group["examples"].append(_describe(case, response))


@schemathesis.hook
def after_call(context, case, response):
    status = response.status_code
    with _lock:
        _statuses[status] += 1
        if status >= 500:
            _record("server_error", case, response)
        if status >= 400 and _error_body_problem(response) is not None:
            _record("bad_error_body", case, response)
        if sum(_statuses.values()) % _WRITE_EVERY == 0:
            _write_tallies(done=False)


# Requests between two writes of the tally file.
_WRITE_EVERY = 250

# Largest `count` passed through to a generation job; see the module docstring.
_MAX_GENERATED_CODES = 10


@schemathesis.hook("map_body").apply_to(method="POST", path="/api/v1/topics/{topic_id}/codes")
def map_body(context, body):
    if isinstance(body, dict):
        count = body.get("count")
        if isinstance(count, int) and not isinstance(count, bool) and _MAX_GENERATED_CODES < count <= 10_000_000:
            body = {**body, "count": 1 + count % _MAX_GENERATED_CODES}
    return body


def _write_tallies(done: bool) -> None:
    """Writes the tallies to $FUZZ_TALLY_FILE, atomically: fuzz/budget.py may be reading it.
    The caller holds _lock."""
    path = os.environ.get("FUZZ_TALLY_FILE")
    if not path:
        return
    groups = [
        {
            "kind": kind, "status": status, "content_type": content_type, "body": body,
            "operation": operation, **group, "requests": sorted(group["requests"]),
        }
        for (kind, status, content_type, body, operation), group in _groups.items()
    ]
    data = {
        "done": done,
        "requests": sum(_statuses.values()),
        "statuses": {str(k): v for k, v in sorted(_statuses.items())},
        "server_errors": sum(g["count"] for g in groups if g["kind"] == "server_error"),
        "bad_error_bodies": sum(g["count"] for g in groups if g["kind"] == "bad_error_body"),
        "groups": groups,
    }
    with open(path + ".tmp", "w") as f:
        json.dump(data, f, indent=1)
    os.replace(path + ".tmp", path)


@atexit.register
def _write_final_tallies() -> None:
    with _lock:
        _write_tallies(done=True)
