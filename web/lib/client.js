import { backoffDelay, closePolicy } from "./backoff.js";
import { ErrorCode, TidewireError } from "./errors.js";
import { Subscription } from "./subscription.js";
/** The subprotocol of docs/protocol.md. */
export const PROTOCOL = "tidewire.v1";
/**
 * Refusals of a subscribe that may pass later with nothing changed on the client's side:
 * the engine unavailable, the server failing, over the subscribe rate.
 */
const TEMPORARY = new Set([ErrorCode.UNAVAILABLE, ErrorCode.INTERNAL, ErrorCode.RATE_LIMITED]);
const noop = () => { };
function describe(e) {
    return e instanceof Error ? e.message : String(e);
}
function isPosition(offset, epoch) {
    return typeof offset === "number" && Number.isInteger(offset) && offset >= 0 && typeof epoch === "string";
}
/** `ws://h/p/ws` → `http://h/p`, `wss:` → `https:` (the base of /sse and /publish). */
function httpBaseOf(wsUrl) {
    const base = globalThis.location?.href;
    const u = base ? new URL(wsUrl, base) : new URL(wsUrl);
    if (u.protocol === "ws:")
        u.protocol = "http:";
    else if (u.protocol === "wss:")
        u.protocol = "https:";
    u.pathname = u.pathname.replace(/\/ws\/?$/, "");
    u.search = "";
    u.hash = "";
    return u.toString().replace(/\/+$/, "");
}
/** The tidewire.v1 error code of an HTTP refusal of /sse (docs/protocol.md). */
function codeOfStatus(status) {
    if (status === 401)
        return ErrorCode.UNAUTHORIZED;
    if (status === 403)
        return ErrorCode.PERMISSION_DENIED;
    if (status === 400 || status === 404)
        return ErrorCode.BAD_REQUEST;
    if (status === 503)
        return ErrorCode.UNAVAILABLE;
    return ErrorCode.INTERNAL;
}
/**
 * A `tidewire.v1` client (docs/protocol.md): one WebSocket, reconnected with backoff,
 * subscriptions resumed with `since`, requests with promises, a heartbeat, and a bounded
 * queue for requests made while reconnecting.
 */
export class TidewireClient {
    constructor(url, options = {}) {
        this.phase = "idle";
        /** Consecutive WebSocket attempts that failed before the socket opened. */
        this.openFailures = 0;
        /** The SSE fallback: an EventSource per subscription. */
        this.sse = new Map();
        this.probeTimer = null;
        this.probeAttempts = 0;
        this.transportNow = null;
        this.httpTokenCache = null;
        /** POST /publish requests go one after the other, in the order of the publish calls. */
        this.publishChain = Promise.resolve();
        /** The SSE fallback could not start (reported once). */
        this.fallbackRefused = false;
        this.conn = null;
        /** Bumped whenever an attempt in progress must be abandoned (token fetch in flight). */
        this.seq = 0;
        this.attempts = 0;
        this.retryTimer = null;
        this.queue = [];
        this.subs = new Map();
        this.nextId = 1;
        this.info = null;
        this.lastState = { state: "disconnected", reason: "not connected yet" };
        this.waiters = [];
        this.listeners = {
            state: new Set(),
            error: new Set(),
            serverSubscribed: new Set(),
            serverUnsubscribed: new Set(),
            transport: new Set(),
        };
        this.listening = false;
        this.onOnline = () => this.online();
        this.onOffline = () => this.offline();
        this.host = {
            _unsubscribe: (sub) => this.unsubscribeSub(sub),
            _report: (e) => this.report(e instanceof Error ? e : new Error(String(e))),
        };
        this.url = url;
        this.token = options.token;
        this.presenceInfo = options.info;
        this.WS = options.WebSocket ?? globalThis.WebSocket;
        if (options.fallback != null && options.fallback !== "sse")
            throw new RangeError(`option fallback must be "sse" or null`);
        this.fallback = options.fallback ?? null;
        this.httpUrlOption = options.httpUrl;
        this.ES = options.EventSource ?? globalThis.EventSource;
        const f = options.fetch ?? globalThis.fetch;
        this.fetchFn = typeof f === "function" ? (options.fetch ?? f.bind(globalThis)) : undefined;
        const win = globalThis.window;
        this.network =
            options.networkEvents !== undefined
                ? options.networkEvents
                : win && typeof win.addEventListener === "function"
                    ? win
                    : null;
        const num = (v, d, name, min = 0) => {
            if (v === undefined)
                return d;
            if (typeof v !== "number" || Number.isNaN(v) || v < min)
                throw new RangeError(`option ${name} must be a number >= ${min}`);
            return v;
        };
        this.o = {
            initialDelay: num(options.initialDelay, 500, "initialDelay"),
            maxDelay: num(options.maxDelay, 20000, "maxDelay"),
            maxAttempts: num(options.maxAttempts, Infinity, "maxAttempts"),
            pingInterval: num(options.pingInterval, 25000, "pingInterval"),
            pingTimeout: num(options.pingTimeout, 10000, "pingTimeout", 1),
            connectTimeout: num(options.connectTimeout, 10000, "connectTimeout", 1),
            queueSize: num(options.queueSize, 1000, "queueSize"),
            maxMessageSize: num(options.maxMessageSize, 1 << 20, "maxMessageSize"),
            random: options.random ?? Math.random,
            fallbackAfter: num(options.fallbackAfter, 3, "fallbackAfter", 1),
            fallbackProbeDelay: num(options.fallbackProbeDelay, 5000, "fallbackProbeDelay"),
            fallbackProbeMaxDelay: num(options.fallbackProbeMaxDelay, 60000, "fallbackProbeMaxDelay"),
        };
    }
    // ------------------------------------------------------------------ public API
    /** The current connection state. */
    get state() {
        return this.lastState.state;
    }
    /**
     * This connection's client id and user (from the connect reply), while connected; on the
     * SSE fallback, `{client: "", user: null, transport: "sse"}`.
     */
    get connection() {
        return this.phase === "connected" || this.phase === "sse" ? this.info : null;
    }
    /**
     * The transport in use: `"websocket"` while connected over WebSocket, `"sse"` on the SSE
     * fallback (option `fallback`), null otherwise. Changes are `transport` events.
     */
    get transport() {
        return this.transportNow;
    }
    /** Requests waiting in the send queue for the connection. */
    get queued() {
        return this.queue.length;
    }
    /**
     * Starts connecting (and keeps reconnecting). Resolves once connected; rejects if the
     * client stops first (terminal close code, `maxAttempts`, `disconnect()`). Ignoring the
     * promise is safe: failures are also reported as `error` and `state` events.
     */
    connect() {
        if ((this.phase === "connected" || this.phase === "sse") && this.info)
            return Promise.resolve(this.info);
        const p = new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
        p.catch(noop);
        if (this.phase === "idle" || this.phase === "stopped") {
            if (!this.WS) {
                this.stop(new TidewireError("closed", "no WebSocket implementation: pass the WebSocket option"), undefined, "no WebSocket");
                return p;
            }
            this.attempts = 0;
            this.openFailures = 0;
            this.listen(true);
            this.open();
        }
        return p;
    }
    /**
     * Closes the connection (code 1000) and stops reconnecting. Requests waiting for a reply
     * or in the queue are rejected; subscriptions are kept and resume on the next `connect()`.
     */
    disconnect() {
        if (this.phase === "idle" || this.phase === "stopped")
            return;
        this.stop(new TidewireError("closed", "disconnect() was called"), undefined, "disconnect() was called", false);
    }
    /**
     * Listens to `state`, `error`, `transport`, `serverSubscribed` or `serverUnsubscribed`
     * events; returns a function that removes the listener.
     */
    on(event, fn) {
        this.listeners[event].add(fn);
        return () => this.off(event, fn);
    }
    off(event, fn) {
        this.listeners[event].delete(fn);
    }
    /**
     * Subscribes to a channel (now if connected, else as soon as it is). See `Subscription`.
     * Throws a TidewireError `already_subscribed` if this client already has a subscription
     * to the channel.
     */
    subscribe(channel, options = {}) {
        if (typeof channel !== "string" || channel.length === 0)
            throw new TypeError("channel must be a non-empty string");
        const existing = this.subs.get(channel);
        if (existing) {
            throw new TidewireError("already_subscribed", existing.origin === "server"
                ? `already subscribed to ${JSON.stringify(channel)} by the server (its API): use getSubscription(), ` +
                    `or unsubscribe() that Subscription first`
                : `already subscribed to ${JSON.stringify(channel)}: unsubscribe() the existing Subscription first`);
        }
        const sub = new Subscription(this.host, channel, options);
        this.subs.set(channel, sub);
        if (this.conn?.open)
            this.sendSubscribe(this.conn, sub);
        else if (this.phase === "sse")
            this.sseOpen(sub);
        return sub;
    }
    /** The subscription to a channel, if any (the application's or the server's). */
    getSubscription(channel) {
        return this.subs.get(channel);
    }
    /** Every live subscription of this client, the application's and the server's. */
    get subscriptions() {
        return [...this.subs.values()];
    }
    /**
     * Publishes `data` (any JSON value). Queued while reconnecting; on the SSE fallback, sent
     * as `POST /publish` (in order).
     */
    publish(channel, data) {
        return this.request("publish", channel, { data });
    }
    /**
     * The newest `limit` publications (default 100, at most 10,000), oldest first. Needs the
     * WebSocket (code `transport` on the SSE fallback).
     */
    async history(channel, options = {}) {
        const fields = options.limit === undefined ? {} : { limit: options.limit };
        const r = await this.request("history", channel, fields);
        const pubs = Array.isArray(r?.publications) ? r.publications : [];
        return {
            offset: r.offset,
            epoch: r.epoch,
            publications: pubs.map((p) => ({ type: "publication", channel: p.channel ?? channel, offset: p.offset, epoch: p.epoch, data: p.data })),
        };
    }
    /**
     * Calls `method` of the application's backend through the hub (`op: rpc`; the method's
     * namespace needs `rpc_proxy`) and resolves to the backend's answer. A refusal rejects with
     * the backend's code (1000 or more) or 104; 112 when the backend is down or slow.
     * Needs the WebSocket (code `transport` on the SSE fallback).
     */
    async rpc(method, data = null) {
        if (typeof method !== "string" || method === "")
            return Promise.reject(new TypeError("method must be a non-empty string"));
        // The method stands where a channel would in messages; it is sent as `method`.
        const r = await this.request("rpc", method, { method, data });
        return r?.data;
    }
    /**
     * The clients subscribed to a channel (namespaces with presence on; else error 110).
     * Needs the WebSocket (code `transport` on the SSE fallback).
     */
    presence(channel) {
        return this.request("presence", channel, {});
    }
    // ------------------------------------------------------------------ requests
    request(op, channel, fields) {
        if (this.phase === "idle" || this.phase === "stopped") {
            return Promise.reject(new TidewireError("closed", `${op}: the client is not running (call connect() first)`));
        }
        if (typeof channel !== "string")
            return Promise.reject(new TypeError("channel must be a string"));
        const id = this.nextId++;
        let text;
        try {
            text = JSON.stringify(op === "rpc" ? { id, op, ...fields } : { id, op, channel, ...fields });
        }
        catch (e) {
            return Promise.reject(e);
        }
        const max = this.o.maxMessageSize;
        // UTF-8 needs at most 3 bytes per UTF-16 code unit: short strings need no encoding.
        if (max > 0 && text.length * 3 > max) {
            const bytes = new TextEncoder().encode(text).length;
            if (bytes > max) {
                return Promise.reject(new TidewireError("too_large", `${op} on ${JSON.stringify(channel)} not sent: ${bytes} bytes, more than maxMessageSize (${max}); ` +
                    `the server would close the connection with 1009`));
            }
        }
        if (this.phase === "sse") {
            if (op === "publish")
                return this.httpPublish(channel, fields.data);
            return Promise.reject(this.transportError(op, channel));
        }
        return new Promise((resolve, reject) => {
            const req = { id, op, channel, text, resolve, reject };
            if (op === "publish")
                req.data = fields.data;
            if (this.phase === "connected" && this.conn?.open) {
                this.sendRequest(this.conn, req);
            }
            else if (this.queue.length >= this.o.queueSize) {
                reject(new TidewireError("queue_full", `${op} on ${JSON.stringify(channel)} refused: the send queue is full ` +
                    `(${this.queue.length} requests wait for the connection to come back; option queueSize)`));
            }
            else {
                this.queue.push(req);
            }
        });
    }
    sendRequest(conn, req) {
        conn.pending.set(req.id, { kind: "request", req });
        this.send(conn, req.text);
    }
    send(conn, text) {
        try {
            conn.ws.send(text);
        }
        catch {
            // The socket is closing; its close event follows and fails the pending requests.
        }
    }
    // ------------------------------------------------------------------ connection
    /** A connection attempt; `probe`: a silent one in the background of the SSE fallback. */
    open(probe = false) {
        const seq = ++this.seq;
        if (!probe) {
            this.phase = "connecting";
            this.emitState({ state: "connecting", attempt: this.attempts });
            if (this.seq !== seq || this.phase !== "connecting")
                return; // a listener stopped us
        }
        if (typeof this.token === "function") {
            let got;
            try {
                got = this.token();
            }
            catch (e) {
                this.tokenFailed(seq, e);
                return;
            }
            Promise.resolve(got).then((t) => {
                if (this.seq !== seq)
                    return;
                if (typeof t !== "string")
                    this.tokenFailed(seq, new TypeError("the token function must return a string"));
                else
                    this.openSocket(t, probe);
            }, (e) => this.tokenFailed(seq, e));
        }
        else {
            this.openSocket(this.token, probe);
        }
    }
    tokenFailed(seq, e) {
        if (this.seq !== seq)
            return;
        this.report(new TidewireError("token", `the token function failed: ${describe(e)}`));
        if (this.phase === "sse")
            this.scheduleProbe();
        else
            this.retry(undefined, "the token function failed");
    }
    openSocket(token, probe = false) {
        let ws;
        try {
            ws = new this.WS(this.url, [PROTOCOL]);
        }
        catch (e) {
            // An invalid URL: retrying cannot help.
            this.stop(new TidewireError("closed", `cannot open ${this.url}: ${describe(e)}`), undefined, "invalid URL");
            return;
        }
        const conn = {
            ws,
            pending: new Map(),
            open: false,
            connectError: null,
            connectTimer: null,
            pingTimer: null,
            pingDeadline: null,
            opened: false,
            errorTimer: null,
            probe,
        };
        this.conn = conn;
        conn.connectTimer = setTimeout(() => this.lost(conn, undefined, `not connected within ${this.o.connectTimeout} ms (connectTimeout)`, true), this.o.connectTimeout);
        ws.onopen = () => {
            if (this.conn !== conn)
                return;
            conn.opened = true;
            this.openFailures = 0;
            if (ws.protocol !== PROTOCOL) {
                this.teardown(conn, "close", "not tidewire.v1");
                this.stop(new TidewireError("protocol", `the server did not select the ${PROTOCOL} subprotocol (got ${JSON.stringify(ws.protocol)}): not a tidewire.v1 endpoint`), undefined, "wrong subprotocol");
                return;
            }
            const id = this.nextId++;
            conn.pending.set(id, { kind: "connect" });
            const msg = { id, op: "connect" };
            if (token !== undefined)
                msg.token = token;
            if (this.presenceInfo !== undefined)
                msg.info = this.presenceInfo;
            this.send(conn, JSON.stringify(msg));
        };
        ws.onmessage = (ev) => {
            if (this.conn === conn)
                this.message(conn, ev.data);
        };
        ws.onclose = (ev) => {
            if (this.conn === conn)
                this.lost(conn, ev.code, ev.reason || "", false);
        };
        ws.onerror = () => {
            if (this.conn !== conn)
                return;
            // Browsers follow an error with a close event (1006 when the connection failed).
            // Some implementations (Node 20's experimental WebSocket) fire no close event after a
            // failed handshake, so a failure before `open` counts as the close; after `open`, the
            // close event gets a moment to arrive with its code.
            if (!conn.opened) {
                this.lost(conn, 1006, "connection failed", true);
            }
            else if (!conn.errorTimer) {
                conn.errorTimer = setTimeout(() => this.lost(conn, 1006, "WebSocket error", true), 1000);
            }
        };
    }
    established(conn, result) {
        if (conn.connectTimer)
            clearTimeout(conn.connectTimer);
        conn.connectTimer = null;
        if (conn.probe) {
            // Back from the SSE fallback: the EventSources close, and every subscription is
            // resubscribed below with `since`, from the position SSE delivered up to.
            conn.probe = false;
            this.leaveSse();
        }
        conn.open = true;
        this.phase = "connected";
        this.attempts = 0;
        this.info = {
            client: String(result?.client ?? ""),
            user: result?.user ?? null,
            version: String(result?.version ?? PROTOCOL),
            transport: "websocket",
        };
        for (const sub of this.subs.values())
            this.sendSubscribe(conn, sub);
        const queued = this.queue;
        this.queue = [];
        for (const req of queued)
            this.sendRequest(conn, req);
        this.startHeartbeat(conn);
        const waiters = this.waiters;
        this.waiters = [];
        for (const w of waiters)
            w.resolve(this.info);
        this.setTransport("websocket", "the WebSocket is connected");
        if (this.conn !== conn)
            return; // a listener stopped us
        this.emitState({ state: "connected", client: this.info.client, user: this.info.user, transport: "websocket" });
    }
    startHeartbeat(conn) {
        if (this.o.pingInterval <= 0)
            return;
        conn.pingTimer = setInterval(() => {
            if (this.conn !== conn || conn.pingDeadline)
                return;
            const id = this.nextId++;
            conn.pending.set(id, { kind: "ping" });
            this.send(conn, JSON.stringify({ id, op: "ping" }));
            conn.pingDeadline = setTimeout(() => this.lost(conn, undefined, `nothing received within ${this.o.pingTimeout} ms of a ping`, true), this.o.pingTimeout);
        }, this.o.pingInterval);
    }
    /** Forgets a connection: timers, handlers, replies it still owed. */
    teardown(conn, how, closeReason = "client closing") {
        if (conn.connectTimer)
            clearTimeout(conn.connectTimer);
        if (conn.pingTimer)
            clearInterval(conn.pingTimer);
        if (conn.pingDeadline)
            clearTimeout(conn.pingDeadline);
        if (conn.errorTimer)
            clearTimeout(conn.errorTimer);
        conn.connectTimer = conn.pingTimer = conn.pingDeadline = conn.errorTimer = null;
        const ws = conn.ws;
        ws.onopen = noop;
        ws.onmessage = noop;
        ws.onclose = noop;
        ws.onerror = noop;
        if (how !== "none") {
            try {
                // A dead connection cannot complete a closing handshake: the `ws` package can drop
                // it at once; the standard API only has close().
                const terminate = ws.terminate;
                if (how === "abort" && typeof terminate === "function")
                    terminate.call(ws);
                else
                    ws.close(1000, closeReason);
            }
            catch {
                // already closed
            }
        }
        if (this.conn === conn)
            this.conn = null;
        const pending = [...conn.pending.values()];
        conn.pending.clear();
        conn.open = false;
        // A background attempt of the SSE fallback never carried the subscriptions.
        if (!conn.probe)
            for (const sub of this.subs.values()) {
                sub._active = false;
                sub._pendingId = null;
                sub._held = [];
                sub._serverPush = null;
                // The next connection resubscribes it anyway.
                if (sub._retryTimer !== null)
                    clearTimeout(sub._retryTimer);
                sub._retryTimer = null;
                if (sub._state === "subscribed")
                    sub._state = "subscribing";
            }
        for (const p of pending) {
            if (p.kind === "request") {
                p.req.reject(new TidewireError("disconnected", `${p.req.op} on ${JSON.stringify(p.req.channel)}: the connection was lost before the reply ` +
                    `(the request may or may not have been applied)`));
            }
        }
    }
    /** The connection ended (close event, or dropped by a timeout). */
    lost(conn, code, reason, abort) {
        if (this.conn !== conn)
            return;
        const wasConnected = conn.open;
        this.teardown(conn, abort ? "abort" : "none");
        if (!conn.opened)
            this.openFailures++;
        const why = reason || (code !== undefined ? `closed with ${code}` : "connection lost");
        if (wasConnected)
            this.setTransport(null, `the WebSocket was lost: ${why}`);
        const policy = closePolicy(code);
        if (conn.probe && (policy === "retry" || (policy === "new-token" && typeof this.token === "function"))) {
            // A background attempt of the SSE fallback failed: stay on SSE, try again later.
            this.scheduleProbe();
            return;
        }
        switch (policy) {
            case "stop": {
                const detail = conn.connectError ? ` (${conn.connectError.message})` : "";
                this.stop(new TidewireError("closed", `connection closed with ${code}${reason ? `: ${reason}` : ""}${detail}; not reconnecting`, code), code, why);
                return;
            }
            case "new-token":
                if (typeof this.token !== "function") {
                    this.stop(new TidewireError("closed", `token expired (close 4001) and no token function to get a new one; not reconnecting`, code), code, why);
                    return;
                }
                break;
            case "retry":
                break;
        }
        this.retry(code, why);
    }
    retry(code, reason) {
        if (this.fallback === "sse" && this.openFailures >= this.o.fallbackAfter && this.enterSse(reason))
            return;
        if (this.attempts >= this.o.maxAttempts) {
            this.stop(new TidewireError("closed", `gave up after ${this.attempts} reconnection attempts (maxAttempts); last: ${reason}`, code), code, `gave up after ${this.attempts} attempts: ${reason}`);
            return;
        }
        this.attempts++;
        // setTimeout fires at once beyond 2^31-1 ms.
        const delay = Math.min(backoffDelay(this.attempts, this.o.initialDelay, this.o.maxDelay, this.o.random), 2 ** 31 - 1);
        this.phase = "waiting";
        this.seq++;
        this.retryTimer = setTimeout(() => {
            this.retryTimer = null;
            if (this.phase === "waiting")
                this.open();
        }, delay);
        const ev = { state: "reconnecting", attempt: this.attempts, delay, reason };
        if (code !== undefined)
            ev.code = code;
        this.emitState(ev);
    }
    /** Stops for good (until the next connect()). */
    stop(error, code, reason, report = true) {
        this.seq++;
        this.phase = "stopped";
        if (this.retryTimer)
            clearTimeout(this.retryTimer);
        this.retryTimer = null;
        if (this.conn)
            this.teardown(this.conn, "close", "client stopped");
        this.leaveSse();
        this.setTransport(null, reason);
        this.listen(false);
        const queued = this.queue;
        this.queue = [];
        for (const req of queued) {
            req.reject(new TidewireError("closed", `${req.op} on ${JSON.stringify(req.channel)} not sent: ${error.message}`, error.closeCode));
        }
        const waiters = this.waiters;
        this.waiters = [];
        for (const w of waiters)
            w.reject(error);
        const ev = { state: "disconnected", reason };
        if (code !== undefined)
            ev.code = code;
        this.emitState(ev);
        if (report)
            this.report(error);
    }
    listen(on) {
        if (!this.network || on === this.listening)
            return;
        this.listening = on;
        if (on) {
            this.network.addEventListener("offline", this.onOffline);
            this.network.addEventListener("online", this.onOnline);
        }
        else {
            this.network.removeEventListener("offline", this.onOffline);
            this.network.removeEventListener("online", this.onOnline);
        }
    }
    /** The browser went offline: close now and wait for `online`. */
    offline() {
        if (this.phase === "idle" || this.phase === "stopped" || this.phase === "offline")
            return;
        this.seq++;
        if (this.retryTimer)
            clearTimeout(this.retryTimer);
        this.retryTimer = null;
        if (this.conn)
            this.teardown(this.conn, "close", "offline");
        this.leaveSse();
        this.setTransport(null, "the browser is offline");
        this.phase = "offline";
        this.emitState({ state: "disconnected", reason: "the browser is offline", offline: true });
    }
    /** The browser is back online: reconnect at once. */
    online() {
        if (this.phase !== "offline" && this.phase !== "waiting")
            return;
        if (this.retryTimer)
            clearTimeout(this.retryTimer);
        this.retryTimer = null;
        this.attempts = 0;
        this.openFailures = 0;
        this.open();
    }
    // ------------------------------------------------------------------ incoming
    message(conn, data) {
        if (conn.pingDeadline) {
            clearTimeout(conn.pingDeadline);
            conn.pingDeadline = null;
        }
        if (typeof data !== "string") {
            this.report(new TidewireError("protocol", "the server sent a binary frame (tidewire.v1 uses text frames only)"));
            return;
        }
        let msg;
        try {
            msg = JSON.parse(data);
        }
        catch {
            this.report(new TidewireError("protocol", `the server sent something that is not JSON: ${data.slice(0, 100)}`));
            return;
        }
        if (msg === null || typeof msg !== "object" || Array.isArray(msg)) {
            this.report(new TidewireError("protocol", `the server sent a message that is not a JSON object: ${data.slice(0, 100)}`));
            return;
        }
        if ("id" in msg && ("ok" in msg || "error" in msg)) {
            this.reply(conn, msg);
            return;
        }
        if (typeof msg.channel === "string") {
            if ("subscribed" in msg) {
                this.serverSubscribed(conn, msg.channel, msg.subscribed, data);
                return;
            }
            if ("unsubscribed" in msg) {
                this.serverUnsubscribed(conn, msg.channel);
                return;
            }
            const sub = this.subs.get(msg.channel);
            if (!sub)
                return; // unsubscribed meanwhile
            if ("offset" in msg) {
                if (!isPosition(msg.offset, msg.epoch)) {
                    this.report(new TidewireError("protocol", `publication without a valid offset/epoch: ${data.slice(0, 100)}`));
                    return;
                }
                this.publication(conn, sub, {
                    type: "publication",
                    channel: msg.channel,
                    offset: msg.offset,
                    epoch: msg.epoch,
                    data: msg.data,
                });
            }
            else if (msg.join && typeof msg.join === "object") {
                sub._presence("join", msg.join);
            }
            else if (msg.leave && typeof msg.leave === "object") {
                sub._presence("leave", msg.leave);
            }
            return;
        }
        this.report(new TidewireError("protocol", `unexpected message from the server: ${data.slice(0, 100)}`));
    }
    reply(conn, msg) {
        const err = msg.error != null
            ? new TidewireError(typeof msg.error.code === "number" ? msg.error.code : ErrorCode.INTERNAL, typeof msg.error.message === "string" ? msg.error.message : JSON.stringify(msg.error))
            : null;
        const entry = typeof msg.id === "number" ? conn.pending.get(msg.id) : undefined;
        if (!entry) {
            // `"id": null`: the server could not read a request of ours.
            if (err)
                this.report(err);
            return;
        }
        conn.pending.delete(msg.id);
        switch (entry.kind) {
            case "request":
                if (err)
                    entry.req.reject(err);
                else
                    entry.req.resolve(msg.result ?? {});
                return;
            case "connect":
                if (err) {
                    // The server closes next (4001 or 4008); the close decides what happens.
                    conn.connectError = err;
                    this.report(new TidewireError(err.code, `connect refused: ${err.message}`));
                }
                else {
                    this.established(conn, msg.result);
                }
                return;
            case "subscribe":
                this.subscribeReply(conn, msg.id, entry.sub, entry.since, err, msg.result);
                return;
            case "history-first":
                this.historyFirstReply(conn, msg.id, entry.sub, err, msg.result);
                return;
            case "ping":
            case "ignore":
                return;
        }
    }
    sendSubscribe(conn, sub) {
        if (sub._historyFirst > 0 && !sub._position) {
            // History on join: load the newest publications first, then subscribe from them.
            const id = this.nextId++;
            sub._pendingId = id;
            sub._active = false;
            sub._held = [];
            conn.pending.set(id, { kind: "history-first", sub });
            this.send(conn, JSON.stringify({ id, op: "history", channel: sub.channel, limit: sub._historyFirst }));
            return;
        }
        const id = this.nextId++;
        const since = sub._position ? { offset: sub._position.offset, epoch: sub._position.epoch } : null;
        const msg = { id, op: "subscribe", channel: sub.channel };
        if (since)
            msg.since = since;
        sub._pendingId = id;
        sub._active = false;
        sub._held = [];
        conn.pending.set(id, { kind: "subscribe", sub, since });
        this.send(conn, JSON.stringify(msg));
    }
    subscribeReply(conn, id, sub, since, err, result) {
        if (sub._state === "unsubscribed" || this.subs.get(sub.channel) !== sub || sub._pendingId !== id)
            return;
        sub._pendingId = null;
        const pushed = sub._serverPush;
        sub._serverPush = null;
        if (err && pushed) {
            // The server subscribed this connection to the channel itself (its API, or the backend
            // at connect) while this subscribe was on its way, so it was refused (106, or 104 for a
            // channel only the server may subscribe us to): the subscription goes on from the
            // push's position. Resumed without loss if that is where it stood; otherwise the
            // publications in between are reported as unrecoverable.
            err = null;
            result = { offset: pushed.offset, epoch: pushed.epoch };
            if (since) {
                result.recovered = since.epoch === pushed.epoch && since.offset === pushed.offset;
                result.publications = [];
            }
        }
        if (!err && !isPosition(result?.offset, result?.epoch)) {
            err = new TidewireError("protocol", `subscribe reply without offset/epoch: ${JSON.stringify(result)}`);
        }
        if (err && TEMPORARY.has(err.code) && sub._subscribedCount > 0) {
            // A subscription the application holds, refused for a while (the engine down, say):
            // kept, and tried again from where it stands after a delay. A first subscribe is
            // refused for its caller instead (`ready` rejects).
            sub._refusals++;
            const delay = backoffDelay(sub._refusals, 100, 5000, this.o.random);
            this.report(new TidewireError(err.code, `resubscribe to ${JSON.stringify(sub.channel)} refused for now (${err.message}); again in ${Math.round(delay)} ms`));
            sub._retryTimer = setTimeout(() => {
                sub._retryTimer = null;
                if (sub._state === "unsubscribed" || this.subs.get(sub.channel) !== sub || sub._pendingId !== null)
                    return;
                if (this.conn !== conn || !conn.open)
                    return; // the next connection resubscribes
                this.sendSubscribe(conn, sub);
            }, delay);
            return;
        }
        if (err) {
            this.subs.delete(sub.channel);
            const e = new TidewireError(err.code, `subscribe to ${JSON.stringify(sub.channel)} refused: ${err.message}`);
            sub._end(e);
            this.report(e);
            return;
        }
        const position = { offset: result.offset, epoch: result.epoch };
        sub._active = true;
        sub._refusals = 0;
        let recoveredCount = 0;
        let recovered;
        if (since && result.recovered === true) {
            recovered = true;
            sub._position = { ...since };
            const pubs = Array.isArray(result.publications) ? result.publications : [];
            for (const p of pubs) {
                const outcome = this.publication(conn, sub, {
                    type: "publication",
                    channel: sub.channel,
                    offset: p.offset,
                    epoch: p.epoch,
                    data: p.data,
                });
                if (outcome === "resync")
                    return;
                if (outcome === "delivered")
                    recoveredCount++;
            }
            if (sub._position.epoch !== position.epoch || sub._position.offset < position.offset) {
                this.resync(conn, sub, `the recovered publications end at ${sub._position.offset}, before the reply's offset ${position.offset}`);
                return;
            }
        }
        else if (since) {
            // recovered: false (or absent, which this client treats the same way).
            recovered = false;
            sub._position = { ...position };
            sub._unrecoverable({ type: "unrecoverable", channel: sub.channel, since, position: { ...position } });
        }
        else {
            sub._position = { ...position };
        }
        const ev = {
            channel: sub.channel,
            position: { ...sub._position },
            resubscribed: sub._subscribedCount > 0,
            recoveredCount,
            ...(recovered === undefined ? {} : { recovered }),
        };
        sub._subscribed(ev);
        const held = sub._held;
        sub._held = [];
        for (const p of held) {
            if (this.publication(conn, sub, p) === "resync")
                break;
        }
    }
    /** The history loaded before a first subscribe: delivered, then subscribe with `since`. */
    historyFirstReply(conn, id, sub, err, result) {
        if (sub._state === "unsubscribed" || this.subs.get(sub.channel) !== sub || sub._pendingId !== id)
            return;
        if (err || !isPosition(result?.offset, result?.epoch)) {
            // Report it as the subscription's failure, as a refused subscribe would be.
            this.subscribeReply(conn, id, sub, null, err ?? new TidewireError("protocol", `history reply without offset/epoch: ${JSON.stringify(result)}`), result);
            return;
        }
        sub._historyFirst = 0;
        const pubs = Array.isArray(result.publications) ? result.publications : [];
        // An empty epoch: the channel does not exist yet, so there is nothing to resume from.
        if (result.epoch !== "") {
            sub._position = { offset: pubs.length ? pubs[0].offset - 1 : result.offset, epoch: result.epoch };
            sub._active = true;
            for (const p of pubs) {
                this.publication(conn, sub, { type: "publication", channel: sub.channel, offset: p.offset, epoch: p.epoch, data: p.data });
            }
            sub._active = false;
        }
        if (this.conn === conn && conn.open)
            this.sendSubscribe(conn, sub);
    }
    /** Delivers a publication once, in order; a gap or a new epoch resubscribes with `since`. */
    publication(conn, sub, p) {
        if (!sub._active) {
            if (sub._pendingId !== null) {
                sub._held.push(p);
                return "held";
            }
            return "duplicate";
        }
        const pos = sub._position;
        if (p.epoch !== pos.epoch) {
            this.resync(conn, sub, `a publication with epoch ${p.epoch} (expected ${pos.epoch})`);
            return "resync";
        }
        if (p.offset <= pos.offset)
            return "duplicate";
        if (p.offset !== pos.offset + 1) {
            this.resync(conn, sub, `a gap: offset ${p.offset} after ${pos.offset}`);
            return "resync";
        }
        pos.offset = p.offset;
        sub._deliver(p);
        return "delivered";
    }
    /**
     * Unsubscribe and subscribe again with `since` on the same connection (`conn` null: on the
     * SSE fallback, a new EventSource from the position).
     */
    resync(conn, sub, why) {
        this.report(new TidewireError("protocol", `channel ${JSON.stringify(sub.channel)}: ${why}; resubscribing with since`));
        sub._active = false;
        if (conn === null) {
            if (this.phase === "sse" && this.sse.has(sub))
                this.sseOpen(sub);
            return;
        }
        if (this.conn !== conn || !conn.open)
            return; // the next connection resubscribes
        const id = this.nextId++;
        conn.pending.set(id, { kind: "ignore" });
        this.send(conn, JSON.stringify({ id, op: "unsubscribe", channel: sub.channel }));
        this.sendSubscribe(conn, sub);
    }
    // ------------------------------------------------------------------ the SSE fallback
    httpBase() {
        return this.httpUrlOption !== undefined ? this.httpUrlOption.replace(/\/+$/, "") : httpBaseOf(this.url);
    }
    /**
     * The WebSocket failed to open `fallbackAfter` times in a row: go on over SSE. False when
     * it cannot (no EventSource or fetch, or no HTTP URL), after saying why once.
     */
    enterSse(reason) {
        let problem = "";
        if (!this.ES)
            problem = "no EventSource implementation (pass the EventSource option)";
        else if (!this.fetchFn)
            problem = "no fetch implementation (pass the fetch option)";
        else {
            try {
                this.httpBase();
            }
            catch (e) {
                problem = `no HTTP URL for ${this.url}: ${describe(e)} (pass the httpUrl option)`;
            }
        }
        if (problem) {
            if (!this.fallbackRefused) {
                this.fallbackRefused = true;
                this.report(new TidewireError("transport", `cannot fall back to SSE: ${problem}`));
            }
            return false;
        }
        const failures = this.openFailures;
        this.seq++;
        this.phase = "sse";
        this.probeAttempts = 0;
        this.httpTokenCache = null;
        this.info = { client: "", user: null, version: PROTOCOL, transport: "sse" };
        for (const sub of this.subs.values())
            this.sseOpen(sub);
        // What waited for the WebSocket: publishes go over POST /publish, in order; the rest
        // needs the WebSocket.
        const queued = this.queue;
        this.queue = [];
        for (const req of queued) {
            if (req.op === "publish")
                this.httpPublish(req.channel, req.data).then(req.resolve, req.reject);
            else
                req.reject(this.transportError(req.op, req.channel));
        }
        this.scheduleProbe();
        const waiters = this.waiters;
        this.waiters = [];
        for (const w of waiters)
            w.resolve(this.info);
        this.setTransport("sse", `the WebSocket failed to open ${failures} times in a row (last: ${reason})`);
        if (this.phase !== "sse")
            return true; // a listener stopped us
        this.emitState({ state: "connected", client: "", user: null, transport: "sse" });
        return true;
    }
    /** Closes every EventSource and the background attempts (back on WebSocket, or stopped). */
    leaveSse() {
        if (this.probeTimer)
            clearTimeout(this.probeTimer);
        this.probeTimer = null;
        for (const [sub, st] of this.sse) {
            this.closeStream(st);
            sub._active = false;
            if (sub._state === "subscribed")
                sub._state = "subscribing";
        }
        this.sse.clear();
    }
    closeStream(st) {
        if (st.timer)
            clearTimeout(st.timer);
        st.timer = null;
        st.until = null;
        if (st.es) {
            const es = st.es;
            st.es = null;
            try {
                es.close();
            }
            catch {
                // already closed
            }
        }
    }
    /** The next background WebSocket attempt, between half and all of the doubling delay. */
    scheduleProbe() {
        if (this.phase !== "sse")
            return;
        if (this.probeTimer)
            clearTimeout(this.probeTimer);
        this.probeAttempts++;
        const exp = Math.min(this.probeAttempts - 1, 52);
        const ceiling = Math.min(this.o.fallbackProbeMaxDelay, this.o.fallbackProbeDelay * 2 ** exp);
        const r = Math.min(Math.max(this.o.random(), 0), 1);
        const delay = Math.min(Math.floor(ceiling / 2 + (r * ceiling) / 2), 2 ** 31 - 1);
        this.probeTimer = setTimeout(() => {
            this.probeTimer = null;
            if (this.phase === "sse" && !this.conn)
                this.open(true);
        }, delay);
    }
    setTransport(transport, reason) {
        if (this.transportNow === transport)
            return;
        this.transportNow = transport;
        for (const fn of [...this.listeners.transport]) {
            try {
                fn({ transport, reason });
            }
            catch (e) {
                this.host._report(e);
            }
        }
    }
    transportError(op, channel) {
        const what = op === "rpc" ? `rpc ${JSON.stringify(channel)}` : `${op} on ${JSON.stringify(channel)}`;
        return new TidewireError("transport", `${what} needs the WebSocket, and the client is on its SSE fallback (the WebSocket cannot be opened); ` +
            `it works again once the client is back on WebSocket`);
    }
    /** The token for /sse and POST /publish (the token function's answer is kept until refused). */
    httpToken() {
        if (typeof this.token !== "function")
            return Promise.resolve(this.token);
        if (!this.httpTokenCache) {
            const fn = this.token;
            const p = new Promise((resolve) => resolve(fn())).then((t) => {
                if (typeof t !== "string")
                    throw new TypeError("the token function must return a string");
                return t;
            });
            p.catch(() => {
                if (this.httpTokenCache === p)
                    this.httpTokenCache = null;
            });
            this.httpTokenCache = p;
        }
        return this.httpTokenCache.catch((e) => {
            throw new TidewireError("token", `the token function failed: ${describe(e)}`);
        });
    }
    /** `publish` as `POST /publish`, after the publishes before it (so in order). */
    httpPublish(channel, data) {
        const run = async () => {
            const url = `${this.httpBase()}/publish`;
            const body = JSON.stringify({ channel, data });
            let token = await this.httpToken();
            for (let fresh = false;; fresh = true) {
                const headers = { "content-type": "application/json" };
                if (token !== undefined)
                    headers.authorization = `Bearer ${token}`;
                let status;
                let text;
                try {
                    const resp = await this.fetchFn(url, { method: "POST", headers, body });
                    status = resp.status;
                    text = await resp.text();
                }
                catch (e) {
                    throw new TidewireError("disconnected", `publish on ${JSON.stringify(channel)} (POST /publish): ${describe(e)} (it may or may not have been applied)`);
                }
                let json = null;
                try {
                    json = JSON.parse(text);
                }
                catch {
                    // not JSON: reported below
                }
                if (status >= 200 && status < 300) {
                    if (!isPosition(json?.offset, json?.epoch)) {
                        throw new TidewireError("protocol", `POST /publish answered without offset/epoch: ${text.slice(0, 100)}`);
                    }
                    return { offset: json.offset, epoch: json.epoch };
                }
                if (status === 401 && !fresh && typeof this.token === "function") {
                    this.httpTokenCache = null;
                    token = await this.httpToken();
                    continue;
                }
                const err = json?.error;
                if (err && typeof err.code === "number") {
                    throw new TidewireError(err.code, typeof err.message === "string" ? err.message : JSON.stringify(err));
                }
                throw new TidewireError(codeOfStatus(status), `POST /publish: HTTP ${status}: ${text.trim().slice(0, 200)}`);
            }
        };
        const p = this.publishChain.then(run, run);
        this.publishChain = p.catch(noop);
        return p;
    }
    /** (Re)opens a subscription's EventSource, from its position when it has one. */
    sseOpen(sub) {
        let st = this.sse.get(sub);
        if (!st) {
            st = { es: null, attempts: 0, timer: null, until: null, since: null, recoveredCount: 0, retriedToken: false };
            this.sse.set(sub, st);
        }
        this.closeStream(st);
        sub._active = false;
        sub._pendingId = null;
        sub._held = [];
        if (sub._historyFirst > 0 && !sub._position) {
            sub._historyFirst = 0;
            this.report(new TidewireError("transport", `${JSON.stringify(sub.channel)}: history on join needs the WebSocket; over the SSE fallback the subscription starts from now`));
        }
        const mine = st;
        this.httpToken().then((token) => {
            if (this.sse.get(sub) !== mine || mine.es || mine.timer || this.phase !== "sse")
                return;
            let url = `${this.httpBase()}/sse?channel=${encodeURIComponent(sub.channel)}`;
            if (token !== undefined)
                url += `&token=${encodeURIComponent(token)}`;
            if (sub._position)
                url += `&since=${sub._position.offset}:${encodeURIComponent(sub._position.epoch)}`;
            let es;
            try {
                es = new this.ES(url);
            }
            catch (e) {
                this.report(new TidewireError("transport", `cannot open ${url}: ${describe(e)}`));
                this.sseRetryLater(sub, mine);
                return;
            }
            mine.es = es;
            const live = () => this.sse.get(sub) === mine && mine.es === es;
            es.addEventListener("subscribed", (ev) => {
                if (live())
                    this.sseSubscribed(sub, mine, ev.data);
            });
            es.addEventListener("message", (ev) => {
                if (live())
                    this.sseMessage(sub, mine, ev.data);
            });
            for (const kind of ["join", "leave"]) {
                es.addEventListener(kind, (ev) => {
                    if (!live() || !sub._active)
                        return;
                    let msg;
                    try {
                        msg = JSON.parse(ev.data);
                    }
                    catch {
                        return;
                    }
                    if (msg?.[kind] && typeof msg[kind] === "object")
                        sub._presence(kind, msg[kind]);
                });
            }
            es.addEventListener("error", () => {
                if (live())
                    this.sseError(sub, mine, url);
            });
        }, (e) => {
            if (this.sse.get(sub) !== mine || this.phase !== "sse")
                return;
            this.report(e instanceof Error ? e : new Error(String(e)));
            this.sseRetryLater(sub, mine);
        });
    }
    sseRetryLater(sub, st) {
        st.attempts++;
        const delay = Math.min(backoffDelay(st.attempts, this.o.initialDelay, this.o.maxDelay, this.o.random), 2 ** 31 - 1);
        st.timer = setTimeout(() => {
            st.timer = null;
            if (this.sse.get(sub) === st && this.phase === "sse")
                this.sseOpen(sub);
        }, delay);
    }
    /** The stream's first event: where it starts, and whether it resumed from our position. */
    sseSubscribed(sub, st, data) {
        let msg;
        try {
            msg = JSON.parse(data);
        }
        catch {
            msg = null;
        }
        if (!isPosition(msg?.offset, msg?.epoch)) {
            this.report(new TidewireError("protocol", `SSE subscribed event without offset/epoch: ${String(data).slice(0, 100)}`));
            return;
        }
        st.attempts = 0;
        st.retriedToken = false;
        const position = { offset: msg.offset, epoch: msg.epoch };
        const since = sub._position ? { ...sub._position } : null;
        sub._active = true;
        st.until = null;
        if (since && msg.recovered === true && since.epoch === position.epoch) {
            // The publications after `since` follow as events; `subscribed` once they are in.
            if (position.offset > since.offset) {
                st.until = position.offset;
                st.since = since;
                st.recoveredCount = 0;
                return;
            }
            this.sseDone(sub, since, position, true, 0);
            return;
        }
        sub._position = { ...position };
        if (since) {
            sub._unrecoverable({ type: "unrecoverable", channel: sub.channel, since, position: { ...position } });
            this.sseDone(sub, since, position, false, 0);
        }
        else {
            this.sseDone(sub, null, position, undefined, 0);
        }
    }
    sseDone(sub, since, position, recovered, recoveredCount) {
        sub._subscribed({
            channel: sub.channel,
            position: { ...(sub._position ?? position) },
            resubscribed: sub._subscribedCount > 0,
            recoveredCount,
            ...(since && recovered !== undefined ? { recovered } : {}),
        });
    }
    sseMessage(sub, st, data) {
        let msg;
        try {
            msg = JSON.parse(data);
        }
        catch {
            this.report(new TidewireError("protocol", `the SSE stream sent something that is not JSON: ${String(data).slice(0, 100)}`));
            return;
        }
        if (!isPosition(msg?.offset, msg?.epoch)) {
            this.report(new TidewireError("protocol", `publication without a valid offset/epoch: ${String(data).slice(0, 100)}`));
            return;
        }
        const outcome = this.publication(null, sub, {
            type: "publication",
            channel: sub.channel,
            offset: msg.offset,
            epoch: msg.epoch,
            data: msg.data,
        });
        if (st.until !== null && this.sse.get(sub) === st) {
            if (outcome === "delivered")
                st.recoveredCount++;
            if (sub._position && sub._position.offset >= st.until) {
                const until = st.until;
                st.until = null;
                this.sseDone(sub, st.since, { offset: until, epoch: sub._position.epoch }, true, st.recoveredCount);
            }
        }
    }
    /**
     * An EventSource error: while it reconnects by itself (with Last-Event-ID) the
     * subscription waits for the next `subscribed`; closed for good (the server answered
     * other than 200), the reason decides: a refusal (400, 401, 403) ends the subscription,
     * anything else is tried again with backoff.
     */
    sseError(sub, st, url) {
        sub._active = false;
        st.until = null;
        if (sub._state === "subscribed")
            sub._state = "subscribing";
        if (st.es && st.es.readyState !== 2)
            return; // CONNECTING: the EventSource retries itself
        if (st.es) {
            try {
                st.es.close();
            }
            catch {
                // closed
            }
        }
        st.es = null;
        // EventSource does not say why: ask the same URL once, and read only the status.
        const ctl = typeof AbortController === "function" ? new AbortController() : null;
        const asked = this.fetchFn(url, { method: "GET", headers: { accept: "text/event-stream" }, ...(ctl ? { signal: ctl.signal } : {}) });
        asked
            .then(async (resp) => {
            let text = "";
            if (!resp.ok)
                text = await resp.text().catch(() => "");
            ctl?.abort();
            return { status: resp.status, text };
        }, () => ({ status: 0, text: "" }))
            .then(({ status, text }) => {
            if (this.sse.get(sub) !== st || st.es || st.timer || this.phase !== "sse")
                return;
            if (status === 401 && typeof this.token === "function" && !st.retriedToken) {
                st.retriedToken = true;
                this.httpTokenCache = null;
                this.sseOpen(sub);
                return;
            }
            if (status === 400 || status === 401 || status === 403 || status === 404) {
                this.sse.delete(sub);
                if (this.subs.get(sub.channel) === sub)
                    this.subs.delete(sub.channel);
                const e = new TidewireError(codeOfStatus(status), `subscribe to ${JSON.stringify(sub.channel)} refused (GET /sse: HTTP ${status}): ${text.trim().slice(0, 200)}`);
                sub._end(e);
                this.report(e);
                return;
            }
            if (status !== 0 && status !== 200) {
                this.report(new TidewireError(codeOfStatus(status), `GET /sse for ${JSON.stringify(sub.channel)}: HTTP ${status}: ${text.trim().slice(0, 200)}`));
            }
            this.sseRetryLater(sub, st);
        });
    }
    // ------------------------------------------------------------------ server-side subscriptions
    /** `{"channel": C, "subscribed": POSITION}`: the server subscribed this connection. */
    serverSubscribed(conn, channel, pos, data) {
        if (!isPosition(pos?.offset, pos?.epoch)) {
            this.report(new TidewireError("protocol", `subscribed push without a valid offset/epoch: ${data.slice(0, 100)}`));
            return;
        }
        const position = { offset: pos.offset, epoch: pos.epoch };
        const existing = this.subs.get(channel);
        if (existing) {
            // The server does not push `subscribed` for a channel the connection already has. Ours
            // is on its way (a first subscribe, or a resubscribe after a reconnect): its reply
            // will be an error, and the subscription continues from here (subscribeReply).
            if (!existing._active)
                existing._serverPush = position;
            return;
        }
        const sub = new Subscription(this.host, channel, {}, "server");
        sub._position = { ...position };
        sub._active = conn.open;
        this.subs.set(channel, sub);
        sub._subscribed({ channel, position: { ...position }, resubscribed: false, recoveredCount: 0 });
        this.emit("serverSubscribed", { channel, position: { ...position }, subscription: sub });
    }
    /**
     * `{"channel": C, "unsubscribed": {}}`: the server ended this connection's subscription to
     * the channel, whoever made it. The subscription ends and is not resubscribed.
     */
    serverUnsubscribed(conn, channel) {
        const sub = this.subs.get(channel);
        if (!sub)
            return; // unsubscribed by the application meanwhile
        const inFlight = sub._pendingId !== null;
        this.subs.delete(channel);
        sub._end(undefined, true);
        if (inFlight && this.conn === conn && conn.open) {
            // A subscribe of ours is still on its way and would subscribe the connection again
            // after the server's unsubscribe: take it back (an error reply is as good).
            const id = this.nextId++;
            conn.pending.set(id, { kind: "ignore" });
            this.send(conn, JSON.stringify({ id, op: "unsubscribe", channel }));
        }
        this.emit("serverUnsubscribed", { channel, subscription: sub });
    }
    // ------------------------------------------------------------------ subscriptions
    unsubscribeSub(sub) {
        if (sub._state === "unsubscribed")
            return Promise.resolve();
        const st = this.sse.get(sub);
        if (st) {
            // Closing its EventSource ends the subscription on the server.
            this.closeStream(st);
            this.sse.delete(sub);
        }
        const onServer = sub._active || sub._pendingId !== null;
        if (this.subs.get(sub.channel) === sub)
            this.subs.delete(sub.channel);
        sub._end();
        const conn = this.conn;
        if (!onServer || !conn?.open)
            return Promise.resolve();
        return new Promise((resolve) => {
            const id = this.nextId++;
            const done = () => resolve();
            // Errors (105 not subscribed) and a lost connection both leave it unsubscribed.
            this.sendRequest(conn, {
                id,
                op: "unsubscribe",
                channel: sub.channel,
                text: JSON.stringify({ id, op: "unsubscribe", channel: sub.channel }),
                resolve: done,
                reject: done,
            });
        });
    }
    // ------------------------------------------------------------------ events
    emitState(ev) {
        this.lastState = ev;
        for (const fn of [...this.listeners.state]) {
            try {
                fn(ev);
            }
            catch (e) {
                this.host._report(e);
            }
        }
    }
    emit(event, arg) {
        for (const fn of [...this.listeners[event]]) {
            try {
                fn(arg);
            }
            catch (e) {
                this.host._report(e);
            }
        }
    }
    report(error) {
        for (const fn of [...this.listeners.error]) {
            try {
                fn(error);
            }
            catch {
                // an error listener failing has nowhere left to go
            }
        }
    }
}
