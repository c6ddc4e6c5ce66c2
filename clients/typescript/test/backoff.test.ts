import { test } from "node:test";
import assert from "node:assert/strict";
import { backoffCeiling, backoffDelay, backoffSchedule, defaultReconnect } from "@rumor/client";

test("the ceiling doubles from initialMs up to maxMs", () => {
  const s = backoffSchedule({ initialMs: 100, maxMs: 1000 });
  assert.deepEqual(
    [0, 1, 2, 3, 4, 5, 10].map((a) => backoffCeiling(a, s)),
    [100, 200, 400, 800, 1000, 1000, 1000],
  );
  // No overflow for absurd attempt counts.
  assert.equal(backoffCeiling(5000, s), 1000);
});

test("full jitter draws from (0, ceiling]", () => {
  const s = backoffSchedule({ initialMs: 100, maxMs: 1000, jitter: 1 });
  assert.equal(backoffDelay(3, s, () => 0), 800);
  assert.ok(Math.abs(backoffDelay(3, s, () => 0.999999) - 0.0008) < 1e-6);
  for (let attempt = 0; attempt < 20; attempt++) {
    for (let i = 0; i < 50; i++) {
      const d = backoffDelay(attempt, s);
      assert.ok(d > 0 && d <= backoffCeiling(attempt, s), `attempt ${attempt}: ${d}`);
    }
  }
});

test("partial and no jitter keep the delay near the ceiling", () => {
  const half = backoffSchedule({ initialMs: 100, maxMs: 1000, jitter: 0.5 });
  for (let i = 0; i < 100; i++) {
    const d = backoffDelay(2, half);
    assert.ok(d > 200 && d <= 400, String(d));
  }
  const none = backoffSchedule({ initialMs: 100, maxMs: 1000, jitter: 0 });
  assert.equal(backoffDelay(2, none), 400);
});

test("the delays are spread: full jitter averages about half the ceiling", () => {
  const s = backoffSchedule({ initialMs: 1000, maxMs: 1000 });
  let sum = 0;
  const n = 2000;
  for (let i = 0; i < n; i++) sum += backoffDelay(0, s);
  const mean = sum / n;
  assert.ok(mean > 400 && mean < 600, `mean ${mean}`);
});

test("defaults and clamping", () => {
  assert.deepEqual(backoffSchedule(), defaultReconnect);
  const s = backoffSchedule({ initialMs: -5, maxMs: -1, jitter: 7 });
  assert.equal(s.initialMs, 0);
  assert.equal(s.maxMs, 0);
  assert.equal(s.jitter, 1);
  // maxMs below initialMs is raised to it.
  assert.equal(backoffSchedule({ initialMs: 500, maxMs: 100 }).maxMs, 500);
  // initialMs above the default max raises the default max.
  assert.equal(backoffSchedule({ initialMs: 8000 }).maxMs, 8000);
});
