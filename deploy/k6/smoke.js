// The runbook's load smoke for people who have k6; `apgms smoke load` (apgms/load.py) runs the same checks and
// thresholds without it, and tests/unit/test_load_schedule.py holds the numbers below equal to its defaults.
//
//   k6 run -e BASE_URL=http://localhost:3000 -e TOKEN="$TOKEN" deploy/k6/smoke.js
//   k6 run -e BASE_URL=http://localhost:3000 -e RATE=20 -e DURATION=2m deploy/k6/smoke.js
//
// Open model: the constant-arrival-rate executor starts RATE iterations a second whatever the answers' latency,
// so a slow server cannot slow the load down and hide its latency. Each iteration sends GET /health, GET /ready
// and, with a TOKEN, GET /bank-lines?limit=50 at once (http.batch). A request passes its check when it answers
// 200 (and /bank-lines with a JSON body holding an `items` list). Thresholds: p95 under 500 ms, more than 99% of
// the checks passing; k6 exits non-zero when one fails.
import http from 'k6/http';
import { check } from 'k6';

const BASE_URL = (__ENV.BASE_URL || 'http://localhost:3000').replace(/\/+$/, '');
const TOKEN = __ENV.TOKEN || '';
const RATE = parseInt(__ENV.RATE || '10', 10);
const DURATION = __ENV.DURATION || '60s';
// A request still unanswered this long after it went out is a failed check.
const TIMEOUT = '10s';

export const options = {
  scenarios: {
    smoke: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: DURATION,
      // Enough virtual users for every iteration in flight at once: rate x the request deadline.
      preAllocatedVUs: 20,
      maxVUs: 200,
    },
  },
  thresholds: {
    http_req_duration: ['p(95)<500'],
    checks: ['rate>0.99'],
  },
};

function hasItems(response) {
  try {
    return Array.isArray(response.json('items'));
  } catch (error) {
    return false;
  }
}

export default function () {
  const params = { headers: { accept: 'application/json' }, timeout: TIMEOUT };
  const requests = [
    ['GET', `${BASE_URL}/health`, null, params],
    ['GET', `${BASE_URL}/ready`, null, params],
  ];
  if (TOKEN) {
    const authorized = { headers: { ...params.headers, authorization: `Bearer ${TOKEN}` }, timeout: TIMEOUT };
    requests.push(['GET', `${BASE_URL}/bank-lines?limit=50`, null, authorized]);
  }
  const [health, ready, bankLines] = http.batch(requests);
  check(health, { '/health status 200': (r) => r.status === 200 });
  check(ready, { '/ready status 200': (r) => r.status === 200 });
  if (bankLines) {
    // One check per request, as apgms smoke load counts them.
    check(bankLines, { '/bank-lines status 200 with items': (r) => r.status === 200 && hasItems(r) });
  }
}
