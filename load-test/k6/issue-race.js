// k6 load test: many users race for one first-come-first-served coupon.
//
//   k6 run load-test/k6/issue-race.js                      (or load-test/run-k6.sh, same -e flags)
//   k6 run -e BASE_URL=http://127.0.0.1:8080 -e STOCK=500 -e REQUESTS=10000 \
//          -e USER_ID_COUNT=5000 -e REPEAT_SHARE=0.5 -e VUS=200 load-test/k6/issue-race.js
//   k6 run -e DURATION=30s load-test/k6/issue-race.js      (a fixed time instead of a count)
//   k6 run -e EXECUTOR=constant-arrival-rate -e RATE=2000 load-test/k6/issue-race.js
//
// setup() creates a fresh coupon with STOCK units (or reuses COUPON_ID), then REQUESTS issue
// requests (iterations) are fired for user ids USER_ID_START .. USER_ID_START+USER_ID_COUNT-1.
//
// Tokens: coupon-api wants a bearer token (JWT, HS256) on every request but GET /ready. Each
// issue request is sent as its user, with no body and `Authorization: Bearer <token>`, the
// token's claims being {"sub": "<user id>", "role": "user", "exp": ..., "iat": ...}. The script
// signs the tokens itself with JWT_SECRET (k6/crypto HMAC-SHA256): one per user id, all minted
// once before the race and shared by every VU (a SharedArray), valid for an hour or the planned
// run plus margin, whichever is longer. setup() (creating the coupon) and teardown() (the stats)
// use an admin token, {"sub": "load-test", "role": "admin"}. A 401 means JWT_SECRET differs from
// coupon-api's (or coupon-api expects iss/aud claims: JWT_ISSUER/JWT_AUDIENCE, not sent here).
//
// Rate limits: coupon-api's per-address limit (500 req/s, burst 1000, on by default) answers a
// load generator on one address 429 RATE_LIMITED; run coupon-api with RATE_LIMITS=off. 429s
// are counted as their own outcome and, being unexpected, as failed requests.
//
// Fresh and repeat requests (USER_PICK=share, the default): a share REPEAT_SHARE of the requests
// re-sends a user id that an earlier request already used (picked at random among those, so
// some repeats race their user's first request), the others each take the next unused id. The
// split is spread evenly over the run (with 0.5: fresh, repeat, fresh, repeat, ...) and counts
// all VUs, by k6's global iteration number. Once all USER_ID_COUNT ids are used every further
// request is a repeat, so the share actually sent is at least 1 - USER_ID_COUNT/REQUESTS; the
// defaults (10,000 requests, 5,000 ids, 0.5) use every id exactly once fresh, once again. 0
// means every request is a new user (as far as the ids last), 1 means one user asks every time.
//
// Parameters, all optional environment variables (-e NAME=value):
//   BASE_URL          http://127.0.0.1:8080   the coupon-api under test
//   JWT_SECRET        couponrush-local-development-secret (the local stack's, scripts/services.sh)
//                              HS256 secret the tokens are signed with: coupon-api's JWT_SECRET
//   COUPON_ID         -        race for an existing coupon instead of creating one
//   STOCK             500      total_quantity of the coupon setup() creates
//   USER_ID_COUNT     5000     number of distinct user ids (users) the requests are for
//   USER_ID_START     1        first user id
//   REPEAT_SHARE      0.5      share (0..1) of requests that re-send an already used user id
//   USER_PICK         share    share: fresh ids and repeats as above; random: each request draws
//                              an id uniformly at random (REPEAT_SHARE ignored; the behaviour
//                              before REPEAT_SHARE existed); cycle: request i uses id
//                              i mod USER_ID_COUNT, so every id is used and repeats come in waves
//   REQUESTS          10000    issue requests (iterations) in total, unless DURATION is set
//   DURATION          -        e.g. 30s or 2m: run for this long instead of REQUESTS requests
//                              (constant-vus with VUS VUs; with constant-arrival-rate, RATE/s)
//   EXECUTOR          shared-iterations (default) or constant-arrival-rate
//   VUS               200      VUs (shared-iterations, DURATION) or pre-allocated VUs (arrival rate)
//   MAX_VUS           2*VUS    VU ceiling for constant-arrival-rate
//   RATE              2000     requests/s for constant-arrival-rate (runs REQUESTS/RATE seconds,
//                              or DURATION)
//   MAX_DURATION      5m       give-up time for shared-iterations
//   MAX_ERROR_RATIO   0.01     threshold: at most this share of the race's requests may fail
//                              (http_req_failed; 202 and 409 count as success, so failures are
//                              503s, other statuses and timeouts). MAX_FAILED_RATE is an alias.
//   P99_MS            1000     threshold: p99 of the issue requests' duration at most this many
//                              milliseconds; 0 turns the threshold off
//   READY_TIMEOUT_S   30       how long setup() waits for GET /ready to answer 200
//   SUMMARY_JSON      -        if set, also write k6's full summary JSON to this path
//
// k6 exits non-zero (99) when a threshold fails: a 5xx other than 503, more accepted issues than
// stock (oversold; only when setup() created the coupon), error ratio (429s included) or p99
// above its limit.
// teardown() then checks exactness against GET /api/v1/coupons/{id}/stats: it waits up to 60 s
// for pending 0 and aborts the run (non-zero exit, 108) when more were admitted or issued than
// the coupon's total, or admissions stay unpersisted.

import http from 'k6/http';
import { check, sleep } from 'k6';
import crypto from 'k6/crypto';
import { SharedArray } from 'k6/data';
import encoding from 'k6/encoding';
import exec from 'k6/execution';
import { Counter } from 'k6/metrics';

const BASE_URL = (__ENV.BASE_URL || 'http://127.0.0.1:8080').replace(/\/+$/, '');
const STOCK = intEnv('STOCK', 500);
const COUPON_ID = __ENV.COUPON_ID || '';
const REQUESTS = intEnv('REQUESTS', 10000);
const DURATION = __ENV.DURATION || '';
const USER_ID_COUNT = intEnv('USER_ID_COUNT', 5000);
const USER_ID_START = intEnv('USER_ID_START', 1);
const REPEAT_SHARE = numEnv('REPEAT_SHARE', 0.5, 0, 1);
const USER_PICK = (__ENV.USER_PICK || 'share').toLowerCase();
const EXECUTOR = __ENV.EXECUTOR || 'shared-iterations';
const VUS = intEnv('VUS', 200);
const MAX_VUS = intEnv('MAX_VUS', 2 * VUS);
const RATE = intEnv('RATE', 2000);
const MAX_DURATION = __ENV.MAX_DURATION || '5m';
const MAX_ERROR_RATIO = __ENV.MAX_ERROR_RATIO
  ? numEnv('MAX_ERROR_RATIO', 0.01, 0, 1)
  : numEnv('MAX_FAILED_RATE', 0.01, 0, 1);
const P99_MS = numEnv('P99_MS', 1000, 0, Infinity);
const READY_TIMEOUT_S = intEnv('READY_TIMEOUT_S', 30);
// The local stack's development secret (scripts/services.sh) unless JWT_SECRET is set.
const JWT_SECRET = __ENV.JWT_SECRET || 'couponrush-local-development-secret';
if (!['share', 'random', 'cycle'].includes(USER_PICK)) {
  throw new Error(`USER_PICK must be share, random or cycle, got "${__ENV.USER_PICK}"`);
}
// Fresh requests per million, so the fresh/repeat split is integer arithmetic (exact shares).
const FRESH_PPM = Math.round((1 - REPEAT_SHARE) * 1e6);

const SCENARIO = 'issue_race';
// One name for every issue URL, so k6 groups them instead of making a series per coupon id.
const ISSUE_ROUTE = 'POST /api/v1/coupons/{coupon_id}/issues';
const JSON_HEADERS = { 'Content-Type': 'application/json', Accept: 'application/json' };
// Subject of the admin token that creates the coupon and reads its stats.
const ADMIN_SUBJECT = 'load-test';

function intEnv(name, fallback) {
  const raw = __ENV[name];
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 1) throw new Error(`${name} must be a positive integer, got "${raw}"`);
  return n;
}

function numEnv(name, fallback, min, max) {
  const raw = __ENV[name];
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isFinite(n) || n < min || n > max) {
    const range = max === Infinity ? `>= ${min}` : `from ${min} to ${max}`;
    throw new Error(`${name} must be a number ${range}, got "${raw}"`);
  }
  return n;
}

// Seconds in a k6 duration such as 30s, 2m, 1h30m or 500ms; 0 when the text is not one.
function durationSeconds(text) {
  const unit = { ms: 0.001, s: 1, m: 60, h: 3600 };
  let rest = String(text || '').trim();
  let total = 0;
  while (rest) {
    const m = /^(\d+(?:\.\d+)?)(ms|h|m|s)/.exec(rest);
    if (!m) return 0;
    total += Number(m[1]) * unit[m[2]];
    rest = rest.slice(m[0].length);
  }
  return total;
}

// How long the race may run: DURATION, REQUESTS at RATE, or the give-up time MAX_DURATION.
function plannedSeconds() {
  if (DURATION) return durationSeconds(DURATION);
  if (EXECUTOR === 'constant-arrival-rate') return Math.ceil(REQUESTS / Math.max(1, RATE));
  return durationSeconds(MAX_DURATION);
}

// Lifetime of the user tokens, minted once before the race: they must outlast setup()'s wait
// for /ready and the whole race; at least an hour.
const TOKEN_TTL_S = Math.max(3600, Math.ceil(plannedSeconds()) + READY_TIMEOUT_S + 600);

// An HS256 JWT for `sub` with `role`, valid for `ttlS` seconds from now, with the claims
// coupon-api's own signer (`coupon-api token --sub ... --role ...`) puts in.
const JWT_HEADER = encoding.b64encode(JSON.stringify({ alg: 'HS256', typ: 'JWT' }), 'rawurl');
function jwt(sub, role, ttlS) {
  const iat = Math.floor(Date.now() / 1000);
  const claims = { sub: String(sub), role, exp: iat + ttlS, iat };
  const unsigned = `${JWT_HEADER}.${encoding.b64encode(JSON.stringify(claims), 'rawurl')}`;
  return `${unsigned}.${crypto.hmac('sha256', JWT_SECRET, unsigned, 'base64rawurl')}`;
}

// User tokens, one per user id (index: user id - USER_ID_START), minted once when the test
// starts and shared read-only by every VU, so the race itself signs nothing.
const userTokens = new SharedArray('user tokens', () => {
  const tokens = new Array(USER_ID_COUNT);
  for (let i = 0; i < USER_ID_COUNT; i++) tokens[i] = jwt(USER_ID_START + i, 'user', TOKEN_TTL_S);
  return tokens;
});

// Headers of setup()'s and teardown()'s requests: JSON and a fresh admin token.
function adminHeaders() {
  const token = jwt(ADMIN_SUBJECT, 'admin', 3600);
  return Object.assign({}, JSON_HEADERS, { Authorization: `Bearer ${token}` });
}

// Why a 401 or 403 happened, for the messages of setup() and teardown().
function authHint(status) {
  if (status === 401) return ' (token refused: is JWT_SECRET the secret coupon-api runs with?)';
  if (status === 403) return ' (the admin token was not accepted as admin)';
  return '';
}

// Outcome counters, by HTTP status and, for 409, by the error body's `code`.
const accepted = new Counter('issue_accepted'); // 202 {"request_id": ..., "status": "PENDING"}
const alreadyIssued = new Counter('issue_already_issued'); // 409 ALREADY_ISSUED
const soldOut = new Counter('issue_sold_out'); // 409 SOLD_OUT
const conflictOther = new Counter('issue_conflict_other'); // 409 with any other code
const rateLimited = new Counter('issue_rate_limited'); // 429 RATE_LIMITED: coupon-api's limits are on
const unavailable = new Counter('issue_unavailable'); // 503: Redis/Kafka failing closed
const serverError = new Counter('issue_server_error'); // 5xx other than 503: a bug
const other = new Counter('issue_other'); // anything else (4xx, timeouts: status 0)
const repeats = new Counter('issue_repeat_user'); // USER_PICK=share: requests re-sending a used id

function scenario() {
  if (EXECUTOR === 'constant-arrival-rate') {
    const seconds = Math.max(1, Math.ceil(REQUESTS / Math.max(1, RATE)));
    return {
      executor: 'constant-arrival-rate',
      exec: 'issue',
      rate: RATE,
      timeUnit: '1s',
      duration: DURATION || `${seconds}s`,
      preAllocatedVUs: VUS,
      maxVUs: Math.max(VUS, MAX_VUS),
    };
  }
  if (EXECUTOR !== 'shared-iterations') {
    throw new Error(`EXECUTOR must be shared-iterations or constant-arrival-rate, got "${EXECUTOR}"`);
  }
  if (DURATION) {
    // A fixed time rather than a fixed count: every VU sends requests back to back.
    return { executor: 'constant-vus', exec: 'issue', vus: VUS, duration: DURATION };
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
  [`http_req_failed{scenario:${SCENARIO}}`]: [`rate<=${MAX_ERROR_RATIO}`],
};
// Never more coupons than stock: only checkable when this run created the coupon.
if (!COUPON_ID) thresholds.issue_accepted = [`count<=${STOCK}`];
// Latency objective for the race's own requests (setup() and teardown() requests excluded).
if (P99_MS > 0) thresholds[`http_req_duration{scenario:${SCENARIO}}`] = [`p(99)<=${P99_MS}`];

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

// How many of the requests before request i (k6's global iteration number) take a fresh user
// id under USER_PICK=share: ceil(i * (1 - REPEAT_SHARE)), and at least 1 from i = 1 on, so the
// very first request is always fresh (no id is used yet).
function freshBefore(i) {
  if (i === 0) return 0;
  return Math.max(1, Math.floor((i * FRESH_PPM + 999999) / 1e6));
}

// Warns when the fresh ids run out before the planned requests do (USER_PICK=share, by count).
function warnIfIdsRunOut() {
  if (USER_PICK !== 'share' || DURATION || EXECUTOR !== 'shared-iterations') return;
  if (freshBefore(REQUESTS) <= USER_ID_COUNT) return;
  let i = 0;
  while (freshBefore(i + 1) <= USER_ID_COUNT) i += 1;
  console.warn(
    `REPEAT_SHARE ${REPEAT_SHARE} wants ${freshBefore(REQUESTS)} fresh user ids but USER_ID_COUNT is ` +
      `${USER_ID_COUNT}: every request from number ${i + 1} on is a repeat (share sent ` +
      `${(1 - USER_ID_COUNT / REQUESTS).toFixed(3)})`,
  );
}

export function setup() {
  waitUntilReady();
  warnIfIdsRunOut();
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
    headers: adminHeaders(),
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
    exec.test.abort(`creating the coupon failed: HTTP ${res.status} ${res.body}${authHint(res.status)}`);
  }
  console.log(`created coupon ${couponId} with stock ${STOCK}`);
  return { couponId: String(couponId), stock: STOCK };
}

// The user id for this request, and whether it re-sends an id an earlier request already used
// (known for USER_PICK=share only; null otherwise).
function pickUserId() {
  const i = exec.scenario.iterationInTest;
  if (USER_PICK === 'cycle') {
    return { userId: USER_ID_START + (i % USER_ID_COUNT), repeat: null };
  }
  if (USER_PICK === 'random') {
    return { userId: USER_ID_START + Math.floor(Math.random() * USER_ID_COUNT), repeat: null };
  }
  const before = freshBefore(i);
  if (freshBefore(i + 1) > before && before < USER_ID_COUNT) {
    return { userId: USER_ID_START + before, repeat: false }; // the next unused id
  }
  // A repeat: any id an earlier request took (possibly still in flight).
  const used = Math.max(1, Math.min(before, USER_ID_COUNT));
  return { userId: USER_ID_START + Math.floor(Math.random() * used), repeat: true };
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
  const { userId, repeat } = pickUserId();
  if (repeat) repeats.add(1);
  // The user is the token's subject; no body (and so no Content-Type: with one, coupon-api
  // would parse the empty body as JSON and refuse it).
  const res = http.post(
    `${BASE_URL}/api/v1/coupons/${encodeURIComponent(data.couponId)}/issues`,
    null,
    {
      headers: {
        Accept: 'application/json',
        Authorization: `Bearer ${userTokens[userId - USER_ID_START]}`,
      },
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
  } else if (res.status === 429) {
    rateLimited.add(1);
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
  const headers = adminHeaders();
  let stats = null;
  let last = null;
  for (let i = 0; i < 120; i++) {
    last = http.get(url, { headers, tags: { name: 'GET /api/v1/coupons/{coupon_id}/stats' } });
    if (last.status === 200) {
      stats = last.json();
      if (stats.pending === 0) break;
    }
    sleep(0.5);
  }
  if (stats === null) {
    exec.test.abort(`exactness: ${url} never answered 200 (last HTTP ${last.status}${authHint(last.status)})`);
  }
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
    ['429 RATE_LIMITED', count(data, 'issue_rate_limited')],
    ['503 unavailable', count(data, 'issue_unavailable')],
    ['5xx other (bug)', count(data, 'issue_server_error')],
    ['other / timeout', count(data, 'issue_other')],
  ];
  const total = rows.reduce((sum, [, n]) => sum + n, 0);
  const lines = [];
  lines.push('');
  lines.push(`couponrush issue race against ${BASE_URL}`);
  const plan = DURATION ? `for ${DURATION}` : `${REQUESTS} requests planned`;
  const pick = USER_PICK === 'share' ? `repeat share ${REPEAT_SHARE}` : USER_PICK;
  lines.push(`  ${scenario().executor}, ${plan}, user ids ${USER_ID_START}..${USER_ID_START + USER_ID_COUNT - 1} (${pick})`);
  lines.push(`  ${COUPON_ID ? `coupon ${COUPON_ID}` : `stock ${STOCK}`}; thresholds: error ratio <= ${MAX_ERROR_RATIO}, p99 ${P99_MS > 0 ? `<= ${P99_MS}ms` : 'off'}`);
  lines.push('');
  for (const [label, n] of rows) lines.push(`  ${label.padEnd(20)} ${String(n).padStart(8)}`);
  lines.push(`  ${'total'.padEnd(20)} ${String(total).padStart(8)}`);
  if (USER_PICK === 'share' && total > 0) {
    const rep = count(data, 'issue_repeat_user');
    lines.push(`  ${'repeat user ids'.padEnd(20)} ${String(rep).padStart(8)}  (${(rep / total).toFixed(3)} of requests)`);
  }

  const dur = data.metrics[`http_req_duration{scenario:${SCENARIO}}`] || data.metrics.http_req_duration;
  if (dur && dur.values) {
    const v = dur.values;
    lines.push('');
    lines.push(`  latency  med ${ms(v.med)}  p95 ${ms(v['p(95)'])}  p99 ${ms(v['p(99)'])}  max ${ms(v.max)}`);
  }
  const secs = data.state && data.state.testRunDurationMs ? data.state.testRunDurationMs / 1000 : 0;
  if (secs > 0) lines.push(`  throughput ${(total / secs).toFixed(0)} req/s over the whole run (${secs.toFixed(1)}s, setup included)`);

  const limited = count(data, 'issue_rate_limited');
  if (limited > 0) {
    lines.push(`  ${limited} answers were 429 RATE_LIMITED: coupon-api's rate limits are on; start it with RATE_LIMITS=off`);
  }
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
