/** One `for await` consumer of a subscription. */
class ItemStream {
    constructor(detach) {
        this.detach = detach;
        this.buf = [];
        this.head = 0;
        this.waiter = null;
        this.ended = false;
        this.error = null;
    }
    push(item) {
        if (this.ended)
            return;
        if (this.waiter) {
            const w = this.waiter;
            this.waiter = null;
            w.resolve({ value: item, done: false });
        }
        else {
            this.buf.push(item);
        }
    }
    end(error) {
        if (this.ended)
            return;
        this.ended = true;
        if (error !== undefined)
            this.error = error;
        if (this.waiter) {
            const w = this.waiter;
            this.waiter = null;
            this.finish(w.resolve, w.reject);
        }
    }
    finish(resolve, reject) {
        if (this.error !== null) {
            const e = this.error;
            this.error = null; // thrown once, then the iterator is done
            reject(e);
        }
        else {
            resolve({ value: undefined, done: true });
        }
    }
    next() {
        if (this.head < this.buf.length) {
            const value = this.buf[this.head++];
            if (this.head > 1024 && this.head * 2 > this.buf.length) {
                this.buf = this.buf.slice(this.head);
                this.head = 0;
            }
            return Promise.resolve({ value, done: false });
        }
        return new Promise((resolve, reject) => {
            if (this.ended)
                this.finish(resolve, reject);
            else
                this.waiter = { resolve, reject };
        });
    }
    return() {
        this.buf = [];
        this.head = 0;
        this.ended = true;
        this.error = null;
        this.detach(this);
        if (this.waiter) {
            const w = this.waiter;
            this.waiter = null;
            w.resolve({ value: undefined, done: true });
        }
        return Promise.resolve({ value: undefined, done: true });
    }
    [Symbol.asyncIterator]() {
        return this;
    }
}
/**
 * A subscription to one channel, created by `client.subscribe()` (or by the server: see
 * `origin`). It lives until `unsubscribe()` (or until the server refuses or ends it): across
 * reconnects it is resubscribed with `since` and continues without gaps or duplicates where
 * the server can recover.
 *
 * Iterate with `for await (const item of sub)`: items are publications and, when a
 * resubscription could not be recovered, an `{type: "unrecoverable"}` marker. Items are
 * buffered per iterator from the moment the iterator is created, without bound.
 */
export class Subscription {
    /** @internal */
    constructor(host, channel, options, origin = "client") {
        this.host = host;
        /** @internal */ this._state = "subscribing";
        /** @internal Id of the subscribe request in flight on the current connection. */
        this._pendingId = null;
        /** @internal Subscribed on the current connection (live publications are processed). */
        this._active = false;
        /** @internal Live publications that arrived while a subscribe request was in flight. */
        this._held = [];
        /** @internal Successful subscriptions so far. */
        this._subscribedCount = 0;
        /** @internal Resubscribes refused in a row for a while (112, 100, 107). */
        this._refusals = 0;
        /** @internal The timer of the next resubscribe after such a refusal. */
        this._retryTimer = null;
        /**
         * @internal The position of a `subscribed` push for this channel that arrived on the
         * current connection while this subscription's own subscribe was on its way: the server
         * subscribed the connection itself, so that subscribe gets an error (106) and the
         * subscription continues from this position instead.
         */
        this._serverPush = null;
        this.streams = new Set();
        this.listeners = {};
        this.channel = channel;
        this.origin = origin;
        this._handlers = options;
        this._position = options.since ? { offset: options.since.offset, epoch: options.since.epoch } : null;
        this._historyFirst = !options.since && options.history && options.history > 0 ? Math.min(options.history, 10000) : 0;
        this.ready = new Promise((resolve, reject) => {
            this.readyResolve = resolve;
            this.readyReject = reject;
        });
        this.ready.catch(() => { });
    }
    get state() {
        return this._state;
    }
    /** The last position delivered (offset of the last publication and the epoch), or null. */
    get position() {
        return this._position ? { ...this._position } : null;
    }
    /** Ends the subscription (iterators finish) and tells the server if connected. */
    unsubscribe() {
        return this.host._unsubscribe(this);
    }
    /**
     * Listens to one of the subscription's events (the handlers of `SubscribeOptions`, as
     * events: `publication`, `join`, `leave`, `unrecoverable`, `subscribed`, `unsubscribed`,
     * `error`); returns a function that removes the listener. Handlers given to `subscribe()`
     * run first. This is how an application follows a subscription the server made.
     */
    on(event, fn) {
        let set = this.listeners[event];
        if (!set) {
            set = new Set();
            this.listeners[event] = set;
        }
        set.add(fn);
        return () => this.off(event, fn);
    }
    off(event, fn) {
        this.listeners[event]?.delete(fn);
    }
    [Symbol.asyncIterator]() {
        const s = new ItemStream((x) => this.streams.delete(x));
        if (this._state === "unsubscribed")
            s.end();
        else
            this.streams.add(s);
        return s;
    }
    /** @internal */
    _deliver(pub) {
        this.emit("publication", this._handlers.onPublication, pub);
        for (const s of this.streams)
            s.push(pub);
    }
    /** @internal */
    _unrecoverable(event) {
        this.emit("unrecoverable", this._handlers.onUnrecoverable, event);
        for (const s of this.streams)
            s.push(event);
    }
    /** @internal */
    _presence(kind, client) {
        if (kind === "join")
            this.emit("join", this._handlers.onJoin, client);
        else
            this.emit("leave", this._handlers.onLeave, client);
    }
    /** @internal */
    _subscribed(event) {
        this._state = "subscribed";
        this._subscribedCount++;
        this.readyResolve(event);
        this.emit("subscribed", this._handlers.onSubscribed, event);
    }
    /**
     * @internal The subscription is over: by unsubscribe() or the server's `unsubscribed`
     * push (no error; `byServer` tells which), or a refusal (error).
     */
    _end(error, byServer = false) {
        if (this._state === "unsubscribed")
            return;
        this._state = "unsubscribed";
        this._active = false;
        this._pendingId = null;
        this._held = [];
        this._serverPush = null;
        if (this._retryTimer !== null)
            clearTimeout(this._retryTimer);
        this._retryTimer = null;
        this.readyReject(error ??
            new Error(`${byServer ? "the server ended the subscription to" : "unsubscribed from"} ${JSON.stringify(this.channel)} ` +
                `before the subscription completed`));
        if (error)
            this.emit("error", this._handlers.onError, error);
        else
            this.emit("unsubscribed", this._handlers.onUnsubscribed, { channel: this.channel, byServer });
        for (const s of this.streams)
            s.end(error);
        this.streams.clear();
    }
    /** The handler given to subscribe(), then the listeners added with on(). */
    emit(event, handler, arg) {
        this.call(handler, arg);
        const set = this.listeners[event];
        if (set)
            for (const fn of [...set])
                this.call(fn, arg);
    }
    call(fn, arg) {
        if (!fn)
            return;
        try {
            fn(arg);
        }
        catch (e) {
            this.host._report(e);
        }
    }
}
