export { TidewireClient, PROTOCOL } from "./client.js";
export type { ClientOptions, ClientEvents, TokenSource } from "./client.js";
export { Subscription } from "./subscription.js";
export type { SubscribeOptions, SubscriptionEvents, SubscriptionHandlers, SubscriptionOrigin, SubscriptionState } from "./subscription.js";
export { TidewireError, ErrorCode, CloseCode } from "./errors.js";
export type { ClientErrorCode } from "./errors.js";
export { backoffDelay, backoffCeiling, closePolicy } from "./backoff.js";
export type { ClosePolicy } from "./backoff.js";
export type * from "./types.js";
