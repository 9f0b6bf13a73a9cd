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
    MESSAGE_TOO_LARGE: 108,
    UNAUTHORIZED: 109,
    NOT_AVAILABLE: 110,
    LIMIT_REACHED: 111,
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
