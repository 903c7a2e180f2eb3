// k6 load test: many users race for one first-come-first-served coupon.
//
//   k6 run load-test/k6/issue-race.js
//   k6 run -e BASE_URL=http://127.0.0.1:8080 -e STOCK=500 -e REQUESTS=10000 \
//          -e USER_ID_COUNT=5000 -e VUS=200 load-test/k6/issue-race.js
//   k6 run -e EXECUTOR=constant-arrival-rate -e RATE=2000 load-test/k6/issue-race.js
//
// setup() creates a fresh coupon with STOCK units (or reuses COUPON_ID), then REQUESTS issue
// requests are fired for user ids USER_ID_START .. USER_ID_START+USER_ID_COUNT-1. With the
// defaults (10,000 requests over 5,000 user ids) many users ask more than once, some of them
// concurrently, so both "already issued" and "sold out" answers are exercised.
//
// Environment variables (all optional):
//   BASE_URL          http://127.0.0.1:8080
//   STOCK             500      total_quantity of the coupon setup() creates
//   COUPON_ID         -        race for an existing coupon instead of creating one
//   REQUESTS          10000    issue requests in total
//   USER_ID_COUNT     5000     distinct user ids the requests are drawn from
//   USER_ID_START     1        first user id
//   USER_PICK         random   random: each request draws a user id at random (repeats land at
//                              random times, some concurrently); cycle: request i uses id
//                              i mod USER_ID_COUNT, so every id is used and repeats come in waves
//   EXECUTOR          shared-iterations (default) or constant-arrival-rate
//   VUS               200      VUs (shared-iterations) or pre-allocated VUs (arrival rate)
//   MAX_VUS           2*VUS    VU ceiling for constant-arrival-rate
//   RATE              2000     requests/s for constant-arrival-rate (runs REQUESTS/RATE seconds)
//   MAX_DURATION      5m       give-up time for shared-iterations
//   MAX_FAILED_RATE   0.01     threshold on http_req_failed (202 and 409 count as success)
//   P99_MS            -        if set, threshold on the issue requests' p99 in milliseconds
//   READY_TIMEOUT_S   30       how long setup() waits for GET /ready to answer 200
//   SUMMARY_JSON      -        if set, also write k6's full summary JSON to this path
//
// k6 exits non-zero (99) when a threshold fails: a 5xx other than 503, more accepted issues than
// stock (oversold), or too many failed requests.

import http from 'k6/http';
import { check, sleep } from 'k6';
import exec from 'k6/execution';
import { Counter } from 'k6/metrics';

const BASE_URL = (__ENV.BASE_URL || 'http://127.0.0.1:8080').replace(/\/+$/, '');
const STOCK = intEnv('STOCK', 500);
const COUPON_ID = __ENV.COUPON_ID || '';
const REQUESTS = intEnv('REQUESTS', 10000);
const USER_ID_COUNT = intEnv('USER_ID_COUNT', 5000);
const USER_ID_START = intEnv('USER_ID_START', 1);
const USER_PICK = (__ENV.USER_PICK || 'random').toLowerCase();
const EXECUTOR = __ENV.EXECUTOR || 'shared-iterations';
const VUS = intEnv('VUS', 200);
const MAX_VUS = intEnv('MAX_VUS', 2 * VUS);
const RATE = intEnv('RATE', 2000);
const MAX_DURATION = __ENV.MAX_DURATION || '5m';
const MAX_FAILED_RATE = Number(__ENV.MAX_FAILED_RATE || '0.01');
const READY_TIMEOUT_S = intEnv('READY_TIMEOUT_S', 30);

const SCENARIO = 'issue_race';
// One name for every issue URL, so k6 groups them instead of making a series per coupon id.
const ISSUE_ROUTE = 'POST /api/v1/coupons/{coupon_id}/issues';
const JSON_HEADERS = { 'Content-Type': 'application/json', Accept: 'application/json' };

function intEnv(name, fallback) {
  const raw = __ENV[name];
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 1) throw new Error(`${name} must be a positive integer, got "${raw}"`);
  return n;
}

// Outcome counters, by HTTP status and, for 409, by the error body's `code`.
const accepted = new Counter('issue_accepted'); // 202 {"request_id": ..., "status": "PENDING"}
const alreadyIssued = new Counter('issue_already_issued'); // 409 ALREADY_ISSUED
const soldOut = new Counter('issue_sold_out'); // 409 SOLD_OUT
const conflictOther = new Counter('issue_conflict_other'); // 409 with any other code
const unavailable = new Counter('issue_unavailable'); // 503: Redis/Kafka failing closed
const serverError = new Counter('issue_server_error'); // 5xx other than 503: a bug
const other = new Counter('issue_other'); // anything else (4xx, timeouts: status 0)

function scenario() {
  if (EXECUTOR === 'constant-arrival-rate') {
    const seconds = Math.max(1, Math.ceil(REQUESTS / Math.max(1, RATE)));
    return {
      executor: 'constant-arrival-rate',
      exec: 'issue',
      rate: RATE,
      timeUnit: '1s',
      duration: `${seconds}s`,
      preAllocatedVUs: VUS,
      maxVUs: Math.max(VUS, MAX_VUS),
    };
  }
  if (EXECUTOR !== 'shared-iterations') {
    throw new Error(`EXECUTOR must be shared-iterations or constant-arrival-rate, got "${EXECUTOR}"`);
  }
  return {
    executor: 'shared-iterations',
    exec: 'issue',
    vus: Math.min(VUS, Math.max(1, REQUESTS)),
    iterations: REQUESTS,
    maxDuration: MAX_DURATION,
  };
}

const thresholds = {
  // A 503 is the service failing closed on purpose; any other 5xx is a bug.
  issue_server_error: ['count==0'],
  // 202 and 409 are expected answers (see responseCallback below), so this counts 503s,
  // other errors and timeouts. Scoped to the race so setup() requests do not count.
  [`http_req_failed{scenario:${SCENARIO}}`]: [`rate<${MAX_FAILED_RATE}`],
};
// Never more coupons than stock: only checkable when this run created the coupon.
if (!COUPON_ID) thresholds.issue_accepted = [`count<=${STOCK}`];
// Optional latency objective for the race's own requests (setup() requests excluded).
if (__ENV.P99_MS) thresholds[`http_req_duration{scenario:${SCENARIO}}`] = [`p(99)<${Number(__ENV.P99_MS)}`];

export const options = {
  scenarios: { [SCENARIO]: scenario() },
  thresholds,
  setupTimeout: `${READY_TIMEOUT_S + 30}s`,
  teardownTimeout: '90s', // teardown waits up to 60 s for the consumer to drain
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max'],
};

// RFC 3339 in UTC without fractional seconds, e.g. 2025-01-31T12:00:00Z.
function rfc3339(ms) {
  return new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');
}

function waitUntilReady() {
  const deadline = Date.now() + READY_TIMEOUT_S * 1000;
  for (;;) {
    const res = http.get(`${BASE_URL}/ready`, {
      tags: { name: 'GET /ready' },
      responseCallback: http.expectedStatuses(200),
      timeout: '5s',
    });
    if (res.status === 200) return;
    if (Date.now() >= deadline) {
      exec.test.abort(`${BASE_URL}/ready did not answer 200 within ${READY_TIMEOUT_S}s (last status ${res.status})`);
    }
    sleep(1);
  }
}

export function setup() {
  waitUntilReady();
  if (COUPON_ID) {
    console.log(`racing for existing coupon ${COUPON_ID}`);
    return { couponId: COUPON_ID, stock: null };
  }
  const now = Date.now();
  const body = {
    title: 'k6 race',
    coupon_type: 'FIRST_COME_FIRST_SERVED',
    total_quantity: STOCK,
    discount_type: 'FIXED',
    discount_value: 1000,
    min_order_amount: 0,
    issue_starts_at: rfc3339(now - 60 * 1000), // already open when the race starts
    issue_ends_at: rfc3339(now + 60 * 60 * 1000),
    valid_days: 30,
  };
  const res = http.post(`${BASE_URL}/api/v1/coupons`, JSON.stringify(body), {
    headers: JSON_HEADERS,
    tags: { name: 'POST /api/v1/coupons' },
    responseCallback: http.expectedStatuses(201),
  });
  let couponId = null;
  try {
    couponId = JSON.parse(res.body).id; // a number today; kept opaque (string) from here on
  } catch (_) {
    couponId = null;
  }
  if (res.status !== 201 || couponId === undefined || couponId === null) {
    exec.test.abort(`creating the coupon failed: HTTP ${res.status} ${res.body}`);
  }
  console.log(`created coupon ${couponId} with stock ${STOCK}`);
  return { couponId: String(couponId), stock: STOCK };
}

function pickUserId() {
  if (USER_PICK === 'cycle') {
    return USER_ID_START + (exec.scenario.iterationInTest % USER_ID_COUNT);
  }
  return USER_ID_START + Math.floor(Math.random() * USER_ID_COUNT);
}

// A string field of a JSON response body, or '' when the body is not JSON or lacks it.
function jsonField(res, key) {
  try {
    const parsed = JSON.parse(res.body);
    return parsed && typeof parsed[key] === 'string' ? parsed[key] : '';
  } catch (_) {
    return '';
  }
}

export function issue(data) {
  const userId = pickUserId();
  const res = http.post(
    `${BASE_URL}/api/v1/coupons/${encodeURIComponent(data.couponId)}/issues`,
    JSON.stringify({ user_id: userId }),
    {
      headers: JSON_HEADERS,
      tags: { name: ISSUE_ROUTE },
      // 409 (already issued, sold out) is a correct answer in a race, not a failure.
      responseCallback: http.expectedStatuses(202, 409),
      timeout: '10s',
    },
  );

  if (res.status === 202) {
    accepted.add(1);
    check(res, { 'accepted body is PENDING': (r) => jsonField(r, 'status') === 'PENDING' });
  } else if (res.status === 409) {
    const code = jsonField(res, 'code');
    if (code === 'ALREADY_ISSUED') alreadyIssued.add(1);
    else if (code === 'SOLD_OUT') soldOut.add(1);
    else conflictOther.add(1, { code: code || 'none' });
  } else if (res.status === 503) {
    unavailable.add(1);
  } else if (res.status >= 500) {
    serverError.add(1, { status: String(res.status) });
  } else {
    other.add(1, { status: String(res.status) });
  }
}

// After the race: wait for the consumer to persist every admission (pending 0), then check the
// API's own stats: never more admitted or issued than the coupon's total. Aborts the test
// (k6 exits non-zero) when they disagree.
export function teardown(data) {
  const url = `${BASE_URL}/api/v1/coupons/${data.couponId}/stats`;
  let stats = null;
  for (let i = 0; i < 120; i++) {
    const res = http.get(url, { tags: { name: 'GET /api/v1/coupons/{coupon_id}/stats' } });
    if (res.status === 200) {
      stats = res.json();
      if (stats.pending === 0) break;
    }
    sleep(0.5);
  }
  if (stats === null) exec.test.abort(`exactness: ${url} never answered 200`);
  console.log(`exactness: total ${stats.total}, admitted ${stats.admitted}, issued ${stats.issued}, pending ${stats.pending}`);
  if (stats.total !== null && (stats.admitted > stats.total || stats.issued > stats.total)) {
    exec.test.abort(`exactness: OVERSOLD (admitted ${stats.admitted}, issued ${stats.issued}, total ${stats.total})`);
  }
  if (stats.pending !== 0 || stats.admitted !== stats.issued) {
    exec.test.abort(`exactness: ${stats.pending} admissions not persisted after 60 s`);
  }
}

function count(data, name) {
  const m = data.metrics[name];
  return m && m.values && typeof m.values.count === 'number' ? m.values.count : 0;
}

function ms(v) {
  return typeof v === 'number' ? `${v.toFixed(1)}ms` : '-';
}

export function handleSummary(data) {
  const rows = [
    ['202 accepted', count(data, 'issue_accepted')],
    ['409 ALREADY_ISSUED', count(data, 'issue_already_issued')],
    ['409 SOLD_OUT', count(data, 'issue_sold_out')],
    ['409 other code', count(data, 'issue_conflict_other')],
    ['503 unavailable', count(data, 'issue_unavailable')],
    ['5xx other (bug)', count(data, 'issue_server_error')],
    ['other / timeout', count(data, 'issue_other')],
  ];
  const total = rows.reduce((sum, [, n]) => sum + n, 0);
  const lines = [];
  lines.push('');
  lines.push(`couponrush issue race against ${BASE_URL}`);
  lines.push(`  executor ${EXECUTOR}, ${REQUESTS} requests planned, user ids ${USER_ID_START}..${USER_ID_START + USER_ID_COUNT - 1} (${USER_PICK})`);
  if (!COUPON_ID) lines.push(`  stock ${STOCK}`);
  lines.push('');
  for (const [label, n] of rows) lines.push(`  ${label.padEnd(20)} ${String(n).padStart(8)}`);
  lines.push(`  ${'total'.padEnd(20)} ${String(total).padStart(8)}`);

  const dur = data.metrics[`http_req_duration{scenario:${SCENARIO}}`] || data.metrics.http_req_duration;
  if (dur && dur.values) {
    const v = dur.values;
    lines.push('');
    lines.push(`  latency  med ${ms(v.med)}  p95 ${ms(v['p(95)'])}  p99 ${ms(v['p(99)'])}  max ${ms(v.max)}`);
  }
  const secs = data.state && data.state.testRunDurationMs ? data.state.testRunDurationMs / 1000 : 0;
  if (secs > 0) lines.push(`  throughput ${(total / secs).toFixed(0)} req/s over the whole run (${secs.toFixed(1)}s, setup included)`);

  if (!COUPON_ID) {
    const got = count(data, 'issue_accepted');
    const verdict = got > STOCK ? 'OVERSOLD' : got === STOCK ? 'sold out exactly' : 'not sold out';
    lines.push(`  accepted ${got} of stock ${STOCK}: ${verdict}`);
  }

  lines.push('');
  lines.push('  thresholds');
  let failed = 0;
  for (const [name, metric] of Object.entries(data.metrics)) {
    for (const [expr, result] of Object.entries(metric.thresholds || {})) {
      if (!result.ok) failed += 1;
      lines.push(`    ${result.ok ? 'ok  ' : 'FAIL'} ${name}: ${expr}`);
    }
  }
  lines.push(failed ? `  ${failed} threshold(s) failed` : '  all thresholds passed');
  lines.push('');

  const out = { stdout: lines.join('\n') + '\n' };
  if (__ENV.SUMMARY_JSON) out[__ENV.SUMMARY_JSON] = JSON.stringify(data, null, 2);
  return out;
}
