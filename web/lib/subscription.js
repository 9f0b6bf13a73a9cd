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
 * A subscription to one channel, created by `client.subscribe()`. It lives until
 * `unsubscribe()` (or until the server refuses it): across reconnects it is resubscribed
 * with `since` and continues without gaps or duplicates where the server can recover.
 *
 * Iterate with `for await (const item of sub)`: items are publications and, when a
 * resubscription could not be recovered, an `{type: "unrecoverable"}` marker. Items are
 * buffered per iterator from the moment the iterator is created, without bound.
 */
export class Subscription {
    /** @internal */
    constructor(host, channel, options) {
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
        this.streams = new Set();
        this.channel = channel;
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
        this.call(this._handlers.onPublication, pub);
        for (const s of this.streams)
            s.push(pub);
    }
    /** @internal */
    _unrecoverable(event) {
        this.call(this._handlers.onUnrecoverable, event);
        for (const s of this.streams)
            s.push(event);
    }
    /** @internal */
    _presence(kind, client) {
        this.call(kind === "join" ? this._handlers.onJoin : this._handlers.onLeave, client);
    }
    /** @internal */
    _subscribed(event) {
        this._state = "subscribed";
        this._subscribedCount++;
        this.readyResolve(event);
        this.call(this._handlers.onSubscribed, event);
    }
    /** @internal The subscription is over: by unsubscribe() (no error) or a refusal. */
    _end(error) {
        if (this._state === "unsubscribed")
            return;
        this._state = "unsubscribed";
        this._active = false;
        this._pendingId = null;
        this._held = [];
        this.readyReject(error ?? new Error(`unsubscribed from ${JSON.stringify(this.channel)} before the subscription completed`));
        if (error)
            this.call(this._handlers.onError, error);
        for (const s of this.streams)
            s.end(error);
        this.streams.clear();
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
