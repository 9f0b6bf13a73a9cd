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
};
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
};
export class TidewireError extends Error {
    constructor(code, message, closeCode) {
        super(message);
        this.name = "TidewireError";
        this.code = code;
        if (closeCode !== undefined)
            this.closeCode = closeCode;
    }
}
