/**
 * Exponential backoff with full jitter: attempt n (1, 2, ...) waits a uniformly random time
 * in [0, min(maxDelay, initialDelay * 2^(n-1))), in whole milliseconds.
 */
export function backoffDelay(attempt, initialDelay, maxDelay, random = Math.random) {
    const exp = Math.min(Math.max(attempt, 1) - 1, 52); // 2^52 keeps the product finite
    const ceiling = Math.min(maxDelay, initialDelay * 2 ** exp);
    const r = Math.min(Math.max(random(), 0), 1);
    return Math.max(0, Math.min(Math.floor(r * ceiling), ceiling));
}
/** The upper bound `backoffDelay` can return for this attempt. */
export function backoffCeiling(attempt, initialDelay, maxDelay) {
    const exp = Math.min(Math.max(attempt, 1) - 1, 52);
    return Math.min(maxDelay, initialDelay * 2 ** exp);
}
export function closePolicy(code) {
    if (code === undefined)
        return "retry";
    if (code === 1000 || code === 1009 || code === 4003 || code === 4008)
        return "stop";
    if (code >= 4500 && code <= 4999)
        return "stop";
    if (code === 4001)
        return "new-token";
    // 1001, 1006, 1008, 1011, 1012, 1013, 4000, 4029 per the document; codes it does not
    // list (1002, 1005, 1007, 1010, 1015, 3xxx, other 4xxx) are treated as transient too.
    return "retry";
}
