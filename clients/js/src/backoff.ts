import { CloseCode } from "./errors.js";

/**
 * Exponential backoff with full jitter: attempt n (1, 2, ...) waits a uniformly random time
 * in [0, min(maxDelay, initialDelay * 2^(n-1))), in whole milliseconds.
 */
export function backoffDelay(
  attempt: number,
  initialDelay: number,
  maxDelay: number,
  random: () => number = Math.random,
): number {
  const exp = Math.min(Math.max(attempt, 1) - 1, 52); // 2^52 keeps the product finite
  const ceiling = Math.min(maxDelay, initialDelay * 2 ** exp);
  const r = Math.min(Math.max(random(), 0), 1);
  return Math.max(0, Math.min(Math.floor(r * ceiling), ceiling));
}

/** The upper bound `backoffDelay` can return for this attempt. */
export function backoffCeiling(attempt: number, initialDelay: number, maxDelay: number): number {
  const exp = Math.min(Math.max(attempt, 1) - 1, 52);
  return Math.min(maxDelay, initialDelay * 2 ** exp);
}

/** What the client does after a close code (docs/protocol.md, "Close codes"). */
export type ClosePolicy = "retry" | "stop" | "new-token";

/**
 * The close-code table of docs/protocol.md, by range (the Rust `close_action` of
 * tidewire-hub-proto): 1000 and 1009 stop; the rest of 1000-2999 and 3000-3999 retry;
 * 4000-4499 retry, except the hub's 4001 (new token) and 4003, 4008 (stop); 4500-4999 stop.
 */
export function closePolicy(code: number | undefined): ClosePolicy {
  if (code === undefined) return "retry";
  if (code === 1000 || code === 1009) return "stop";
  // The hub's codes that predate the ranges.
  if (code === CloseCode.TOKEN_EXPIRED) return "new-token";
  if (code === CloseCode.UNSUPPORTED_DATA || code === CloseCode.UNAUTHORIZED) return "stop";
  if (code >= 4500 && code <= 4999) return "stop";
  // 1001, 1006, 1008, 1011, 1012, 1013, 4000, 4029, and any other code (1002, 1005, 1007,
  // 1010, 1015, 3xxx, other 4000-4499): transient.
  return "retry";
}
