export { TidewireClient, PROTOCOL } from "./client.js";
export { Subscription } from "./subscription.js";
export { TidewireError, ErrorCode, CloseCode } from "./errors.js";
export { backoffDelay, backoffCeiling, closePolicy } from "./backoff.js";
