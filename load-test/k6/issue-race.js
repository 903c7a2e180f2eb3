// k6: many users race for one first-come-first-served coupon (load-test/README.md).
//
//   load-test/run-k6.sh [-e NAME=value ...]   pinned k6, then `coupon-demo verify` on the result
//   k6 run [-e NAME=value ...] load-test/k6/issue-race.js
//
// setup() waits for GET /ready, creates a coupon with STOCK units (or takes COUPON_ID), and the
// race sends REQUESTS issue requests (or runs for DURATION), each as one user of
// USER_ID_START .. USER_ID_START+USER_ID_COUNT-1 with that user's token and no body. A share
// REPEAT_SHARE of them re-sends an id an earlier request used; the others take the next unused
// id. handleSummary() prints the answers and writes RACE_JSON (coupon id, 202 count, requests
// left without an answer), from which run-k6.sh runs `coupon-demo verify`.
//
// Variables (-e): BASE_URL (http://127.0.0.1:8080), COUPON_ID, STOCK (500), USER_ID_COUNT
// (5000), USER_ID_START (1), REPEAT_SHARE (0.5), REQUESTS (10000), DURATION (e.g. 30s), VUS
// (200), EXECUTOR (shared-iterations, or constant-arrival-rate at RATE/s, default 2000),
// MAX_ERROR_RATIO (0.01), P99_MS (1000; 0 = off), JWT_SECRET (the local stack's), RACE_JSON,
// SUMMARY_JSON (k6's full summary).

import http from 'k6/http';
import { sleep } from 'k6';
import crypto from 'k6/crypto';
import { SharedArray } from 'k6/data';
import encoding from 'k6/encoding';
import exec from 'k6/execution';
import { Counter } from 'k6/metrics';

const env = (name, fallback) => (__ENV[name] ? __ENV[name] : fallback);
const num = (name, fallback, ok) => {
  const n = Number(env(name, fallback));
  if (!Number.isFinite(n) || !ok(n)) throw new Error(`${name}: invalid value "${__ENV[name]}"`);
  return n;
};
const positive = (n) => Number.isInteger(n) && n > 0;
const BASE_URL = env('BASE_URL', 'http://127.0.0.1:8080').replace(/\/+$/, '');
const COUPON_ID = env('COUPON_ID', '');
const STOCK = num('STOCK', 500, positive);
const USERS = num('USER_ID_COUNT', 5000, positive);
const FIRST_USER = num('USER_ID_START', 1, positive);
const REPEAT_SHARE = num('REPEAT_SHARE', 0.5, (n) => n >= 0 && n <= 1);
const REQUESTS = num('REQUESTS', 10000, positive);
const DURATION = env('DURATION', '');
const VUS = num('VUS', 200, positive);
const RATE = num('RATE', 2000, positive);
const EXECUTOR = env('EXECUTOR', 'shared-iterations');
if (!['shared-iterations', 'constant-arrival-rate'].includes(EXECUTOR)) throw new Error(`EXECUTOR: "${EXECUTOR}"`);
const MAX_ERROR_RATIO = num('MAX_ERROR_RATIO', 0.01, (n) => n >= 0 && n <= 1);
const P99_MS = num('P99_MS', 1000, (n) => n >= 0);
const JWT_SECRET = env('JWT_SECRET', 'couponrush-local-development-secret'); // scripts/services.sh's
const FRESH_PPM = Math.round((1 - REPEAT_SHARE) * 1e6); // integer arithmetic: exact shares

// An HS256 JWT with the claims coupon-api reads; valid for the run and more (3 hours).
const JWT_HEADER = encoding.b64encode(JSON.stringify({ alg: 'HS256', typ: 'JWT' }), 'rawurl');
function jwt(sub, role) {
  const iat = Math.floor(Date.now() / 1000);
  const claims = { sub: String(sub), role, exp: iat + 3 * 3600, iat };
  const unsigned = `${JWT_HEADER}.${encoding.b64encode(JSON.stringify(claims), 'rawurl')}`;
  return `${unsigned}.${crypto.hmac('sha256', JWT_SECRET, unsigned, 'base64rawurl')}`;
}
// One token per user, minted once and shared read-only by every VU.
const userTokens = new SharedArray('user tokens', () =>
  Array.from({ length: USERS }, (_, i) => jwt(FIRST_USER + i, 'user')));

const sent = new Counter('issue_sent');
const OUTCOMES = {
  accepted: '202 accepted', already_issued: '409 ALREADY_ISSUED', sold_out: '409 SOLD_OUT',
  in_progress: '409 ISSUE_IN_PROGRESS', conflict_other: '409 other code', rate_limited: '429 RATE_LIMITED (RATE_LIMITS=off?)',
  unavailable: '503 unavailable', server_error: '5xx other (bug)', other: 'other status',
  no_answer: 'timeout / no answer',
};
const counters = Object.fromEntries(Object.keys(OUTCOMES).map((k) => [k, new Counter(`issue_${k}`)]));

const SCENARIO = 'issue_race';
const scenario = EXECUTOR === 'constant-arrival-rate'
  ? { executor: EXECUTOR, rate: RATE, timeUnit: '1s', duration: DURATION || `${Math.ceil(REQUESTS / RATE)}s`,
    preAllocatedVUs: VUS, maxVUs: 2 * VUS }
  : DURATION
    ? { executor: 'constant-vus', vus: VUS, duration: DURATION }
    : { executor: 'shared-iterations', vus: Math.min(VUS, REQUESTS), iterations: REQUESTS,
      maxDuration: '5m' };
const thresholds = {
  issue_server_error: ['count==0'], // a 503 is failing closed on purpose; any other 5xx is a bug
  [`http_req_failed{scenario:${SCENARIO}}`]: [`rate<=${MAX_ERROR_RATIO}`], // 202 and 409 are expected
};
if (!COUPON_ID) thresholds.issue_accepted = [`count<=${STOCK}`]; // never more than stock
if (P99_MS > 0) thresholds[`http_req_duration{scenario:${SCENARIO}}`] = [`p(99)<=${P99_MS}`];
export const options = {
  scenarios: { [SCENARIO]: Object.assign({ exec: 'issue' }, scenario) },
  thresholds,
  setupTimeout: '60s',
  summaryTrendStats: ['med', 'p(95)', 'p(99)', 'max'],
};

export function setup() {
  for (let i = 0; http.get(`${BASE_URL}/ready`, { timeout: '5s' }).status !== 200; i++) {
    if (i >= 30) exec.test.abort(`${BASE_URL}/ready did not answer 200 within 30 s`);
    sleep(1);
  }
  if (COUPON_ID) return { couponId: COUPON_ID, created: false };
  const now = Date.now();
  const res = http.post(`${BASE_URL}/api/v1/coupons`, JSON.stringify({
    title: 'k6 race', coupon_type: 'FIRST_COME_FIRST_SERVED', total_quantity: STOCK,
    discount_type: 'FIXED', discount_value: 1000, min_order_amount: 0, valid_days: 30,
    issue_starts_at: new Date(now - 60e3).toISOString(), // open already
    issue_ends_at: new Date(now + 3600e3).toISOString(),
  }), { headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${jwt('load-test', 'admin')}` } });
  if (res.status !== 201) {
    const hint = res.status === 401 ? ' (is JWT_SECRET the secret coupon-api runs with?)' : '';
    exec.test.abort(`creating the coupon answered ${res.status} ${res.body}${hint}`);
  }
  return { couponId: String(res.json('id')), created: true };
}

// Request i takes a fresh id when ceil((i+1)(1-share)) grows past ceil(i(1-share)); the first
// request is always fresh. Once the ids are used up every request is a repeat.
const freshBefore = (i) => (i === 0 ? 0 : Math.max(1, Math.floor((i * FRESH_PPM + 999999) / 1e6)));
function userId(i) {
  const before = freshBefore(i);
  if (freshBefore(i + 1) > before && before < USERS) return FIRST_USER + before;
  return FIRST_USER + Math.floor(Math.random() * Math.max(1, Math.min(before, USERS)));
}

export function issue(data) {
  const user = userId(exec.scenario.iterationInTest);
  sent.add(1);
  const res = http.post(`${BASE_URL}/api/v1/coupons/${data.couponId}/issues`, null, {
    headers: { Authorization: `Bearer ${userTokens[user - FIRST_USER]}` },
    tags: { name: 'POST /api/v1/coupons/{coupon_id}/issues' },
    responseCallback: http.expectedStatuses(202, 409),
    timeout: '10s',
  });
  counters[outcome(res)].add(1);
}

function outcome(res) {
  const byStatus = { 202: 'accepted', 429: 'rate_limited', 503: 'unavailable', 0: 'no_answer' };
  if (byStatus[res.status]) return byStatus[res.status];
  if (res.status >= 500) return 'server_error';
  if (res.status !== 409) return 'other';
  let code = '';
  try { code = res.json('code'); } catch (_) { /* not JSON */ }
  const known = { ALREADY_ISSUED: 'already_issued', ISSUE_IN_PROGRESS: 'in_progress', SOLD_OUT: 'sold_out' };
  return known[code] || 'conflict_other';
}

export function handleSummary(data) {
  const count = (name) => (data.metrics[name] ? data.metrics[name].values.count : 0);
  const outcomes = Object.fromEntries(Object.keys(OUTCOMES).map((key) => [key, count(`issue_${key}`)]));
  const answered = Object.values(outcomes).reduce((a, b) => a + b, 0);
  const setup = data.setup_data || {};
  const race = {
    coupon_id: setup.couponId || null, created: Boolean(setup.created), accepted: outcomes.accepted,
    unanswered: outcomes.no_answer + count('issue_sent') - answered, outcomes,
  };
  // The race's own requests; without a p99 threshold k6 keeps no such series: all requests.
  const dur = (data.metrics[`http_req_duration{scenario:${SCENARIO}}`] || data.metrics.http_req_duration).values;
  const ms = (v) => (typeof v === 'number' ? `${v.toFixed(1)} ms` : '-');
  const created = race.created ? ` (created, stock ${STOCK})` : '';
  const lines = ['', `issue race against ${BASE_URL}, coupon ${race.coupon_id}${created}`];
  for (const [key, label] of Object.entries(OUTCOMES)) {
    lines.push(`  ${label.padEnd(38)} ${String(outcomes[key]).padStart(7)}`);
  }
  lines.push(`  latency med ${ms(dur.med)}, p95 ${ms(dur['p(95)'])}, p99 ${ms(dur['p(99)'])}, max ${ms(dur.max)}`);
  for (const [name, metric] of Object.entries(data.metrics)) {
    for (const [expr, { ok }] of Object.entries(metric.thresholds || {})) {
      lines.push(`  ${ok ? 'ok  ' : 'FAIL'} ${name}: ${expr}`);
    }
  }
  // What run-k6.sh runs next (load-test/verify.sh); a bare `k6 run` leaves it to you.
  const accepted = race.created && !race.unanswered ? ` --accepted ${race.accepted}` : '';
  if (race.coupon_id) lines.push(`  verify: coupon-demo verify --coupon ${race.coupon_id}${accepted}`);
  const out = { stdout: `${lines.join('\n')}\n\n` };
  if (__ENV.RACE_JSON) out[__ENV.RACE_JSON] = JSON.stringify(race, null, 2);
  if (__ENV.SUMMARY_JSON) out[__ENV.SUMMARY_JSON] = JSON.stringify(data, null, 2);
  return out;
}
