/** Error codes of docs/protocol.md (`error.code` in replies). */
export const ErrorCode = {
  INTERNAL: 100,
  BAD_REQUEST: 101,
  UNKNOWN_OP: 102,
  UNKNOWN_CHANNEL: 103,
  PERMISSION_DENIED: 104,
  NOT_SUBSCRIBED: 105,
  ALREADY_SUBSCRIBED: 106,
  RATE_LIMITED: 107,
  /** Reserved, never sent: an oversized message is closed with 1009 instead. */
  MESSAGE_TOO_LARGE: 108,
  UNAUTHORIZED: 109,
  NOT_AVAILABLE: 110,
  LIMIT_REACHED: 111,
  UNAVAILABLE: 112,
} as const;

/**
 * The hub's close codes (docs/protocol.md, "Close codes"); `closePolicy` says what the
 * client does after these and any other code.
 */
export const CloseCode = {
  /** The client fell behind and was dropped: reconnect, resume with `since`. */
  SLOW_CONSUMER: 4000,
  /** The token expired: reconnect only with a new token. */
  TOKEN_EXPIRED: 4001,
  /** A binary frame on /ws: terminal. */
  UNSUPPORTED_DATA: 4003,
  /** Bad or missing token: terminal. */
  UNAUTHORIZED: 4008,
  /** (raw rooms) over the message rate limit: reconnect with backoff. */
  MESSAGE_RATE_LIMITED: 4029,
  /** Disconnected by the server (its API's `disconnect`, by default): terminal. */
  DISCONNECTED: 4500,
  /** The user is blocked (the server API's `block_user`): terminal. */
  BLOCKED: 4501,
} as const;

/**
 * Codes of errors raised by the client itself (not by a server reply):
 * - `disconnected`: the connection was lost while the request waited for its reply (it may
 *   or may not have been applied);
 * - `queue_full`: the send queue (option `queueSize`) is full while reconnecting;
 * - `closed`: the client is not running (`connect()` not called, `disconnect()` called, or
 *   it stopped for good: terminal close code, `maxAttempts` reached);
 * - `too_large`: the request is larger than the `maxMessageSize` option (not sent);
 * - `already_subscribed`: `subscribe()` on a channel this client already subscribes to;
 * - `protocol`: the server does not speak `tidewire.v1` or sent something unexpected;
 * - `token`: the token function failed;
 * - `transport`: the operation needs the WebSocket (presence, history, rpc) and the client
 *   is on its SSE fallback (option `fallback`).
 */
export type ClientErrorCode =
  | "disconnected"
  | "queue_full"
  | "too_large"
  | "closed"
  | "already_subscribed"
  | "protocol"
  | "token"
  | "transport";

export class TidewireError extends Error {
  /** A protocol error code (a number, see `ErrorCode`) or a client-side code (a string). */
  readonly code: number | ClientErrorCode;
  /** The WebSocket close code, when the error comes from a close. */
  readonly closeCode?: number;

  constructor(code: number | ClientErrorCode, message: string, closeCode?: number) {
    super(message);
    this.name = "TidewireError";
    this.code = code;
    if (closeCode !== undefined) this.closeCode = closeCode;
  }
}
