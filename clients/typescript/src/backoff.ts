// Reconnect delays: exponential backoff with (by default full) jitter.
//
// The ceiling doubles with each failed attempt, from `initialMs` up to
// `maxMs`; the delay is drawn at random below the ceiling, so that many
// clients dropped at once (a gateway restart) do not all come back in the
// same instant.

export interface ReconnectOptions {
  /** The ceiling of the first delay, ms. Default 200. */
  initialMs?: number;
  /** The largest ceiling, ms. Default 5000. */
  maxMs?: number;
  /**
   * How much of the ceiling is random, 0 to 1: 1 (the default) is "full
   * jitter", a delay uniform in (0, ceiling]; 0 waits exactly the ceiling.
   */
  jitter?: number;
  /** Attempts before giving up; default unlimited. */
  maxAttempts?: number;
}

export interface BackoffSchedule {
  initialMs: number;
  maxMs: number;
  jitter: number;
  maxAttempts: number;
}

export const defaultReconnect: BackoffSchedule = {
  initialMs: 200,
  maxMs: 5000,
  jitter: 1,
  maxAttempts: Number.POSITIVE_INFINITY,
};

/** Fills in defaults and clamps nonsense (negative times, jitter outside [0, 1]). */
export function backoffSchedule(options: ReconnectOptions = {}): BackoffSchedule {
  const initialMs = Math.max(0, options.initialMs ?? defaultReconnect.initialMs);
  const maxMs = Math.max(initialMs, options.maxMs ?? Math.max(defaultReconnect.maxMs, initialMs));
  const jitter = Math.min(1, Math.max(0, options.jitter ?? defaultReconnect.jitter));
  const maxAttempts = Math.max(0, options.maxAttempts ?? defaultReconnect.maxAttempts);
  return { initialMs, maxMs, jitter, maxAttempts };
}

/** The ceiling for attempt `attempt` (0 for the first retry). */
export function backoffCeiling(attempt: number, schedule: BackoffSchedule): number {
  // 2 ** attempt overflows to Infinity for large attempts; min() caps it.
  return Math.min(schedule.maxMs, schedule.initialMs * 2 ** Math.max(0, attempt));
}

/**
 * The delay before attempt `attempt`: in [ceiling * (1 - jitter), ceiling].
 * `random` returns values in [0, 1), like Math.random (injectable for tests).
 */
export function backoffDelay(attempt: number, schedule: BackoffSchedule, random: () => number = Math.random): number {
  const ceiling = backoffCeiling(attempt, schedule);
  return ceiling - schedule.jitter * ceiling * random();
}
