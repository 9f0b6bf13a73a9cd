import type { TidewireError } from "./errors.js";
import type {
  ClientInfo,
  Publication,
  StreamPosition,
  SubscribedEvent,
  SubscriptionItem,
  UnsubscribedEvent,
  Unrecoverable,
} from "./types.js";

/** Callbacks of a subscription. Exceptions they throw are reported as client `error` events. */
export interface SubscriptionHandlers<T = unknown> {
  /** Every publication exactly once, in offset order: recovered ones first, then live ones. */
  onPublication?: (pub: Publication<T>) => void;
  /** Presence: a client subscribed (namespaces with presence on). */
  onJoin?: (client: ClientInfo) => void;
  /** Presence: a client unsubscribed or disconnected. */
  onLeave?: (client: ClientInfo) => void;
  /** A resubscription got `recovered: false`: older publications may be missing. */
  onUnrecoverable?: (event: Unrecoverable) => void;
  /** Every successful (re)subscription. */
  onSubscribed?: (event: SubscribedEvent) => void;
  /** The server refused the subscription (e.g. 103 unknown namespace, 104 private channel); it has ended. */
  onError?: (error: TidewireError) => void;
  /** The subscription ended without an error: `unsubscribe()`, or the server ended it (`byServer`). */
  onUnsubscribed?: (event: UnsubscribedEvent) => void;
}

/** Events of `subscription.on(...)`: the same as the handlers, for listeners added later. */
export interface SubscriptionEvents<T = unknown> {
  publication: Publication<T>;
  join: ClientInfo;
  leave: ClientInfo;
  unrecoverable: Unrecoverable;
  subscribed: SubscribedEvent;
  unsubscribed: UnsubscribedEvent;
  error: TidewireError;
}

/**
 * Who made a subscription: the application (`client.subscribe()`), or the server (its API's
 * `subscribe`, announced by the client's `serverSubscribed` event).
 */
export type SubscriptionOrigin = "client" | "server";

export interface SubscribeOptions<T = unknown> extends SubscriptionHandlers<T> {
  /** Resume from a position saved earlier (for example in sessionStorage). */
  since?: StreamPosition;
  /**
   * Start with the newest `history` publications (history on join): they are delivered
   * first, oldest first, then everything published after them, without gap or duplicate.
   * Ignored when `since` is given. Default 0.
   */
  history?: number;
}

export type SubscriptionState = "subscribing" | "subscribed" | "unsubscribed";

/** @internal What a Subscription needs from its client. */
export interface SubscriptionHost {
  _unsubscribe(sub: Subscription<any>): Promise<void>;
  _report(error: unknown): void;
}

/** One `for await` consumer of a subscription. */
class ItemStream<T> implements AsyncIterableIterator<SubscriptionItem<T>> {
  private buf: SubscriptionItem<T>[] = [];
  private head = 0;
  private waiter: {
    resolve: (r: IteratorResult<SubscriptionItem<T>>) => void;
    reject: (e: unknown) => void;
  } | null = null;
  private ended = false;
  private error: unknown = null;

  constructor(private readonly detach: (s: ItemStream<T>) => void) {}

  push(item: SubscriptionItem<T>): void {
    if (this.ended) return;
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = null;
      w.resolve({ value: item, done: false });
    } else {
      this.buf.push(item);
    }
  }

  end(error?: unknown): void {
    if (this.ended) return;
    this.ended = true;
    if (error !== undefined) this.error = error;
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = null;
      this.finish(w.resolve, w.reject);
    }
  }

  private finish(
    resolve: (r: IteratorResult<SubscriptionItem<T>>) => void,
    reject: (e: unknown) => void,
  ): void {
    if (this.error !== null) {
      const e = this.error;
      this.error = null; // thrown once, then the iterator is done
      reject(e);
    } else {
      resolve({ value: undefined, done: true });
    }
  }

  next(): Promise<IteratorResult<SubscriptionItem<T>>> {
    if (this.head < this.buf.length) {
      const value = this.buf[this.head++]!;
      if (this.head > 1024 && this.head * 2 > this.buf.length) {
        this.buf = this.buf.slice(this.head);
        this.head = 0;
      }
      return Promise.resolve({ value, done: false });
    }
    return new Promise((resolve, reject) => {
      if (this.ended) this.finish(resolve, reject);
      else this.waiter = { resolve, reject };
    });
  }

  return(): Promise<IteratorResult<SubscriptionItem<T>>> {
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

  [Symbol.asyncIterator](): AsyncIterableIterator<SubscriptionItem<T>> {
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
export class Subscription<T = unknown> implements AsyncIterable<SubscriptionItem<T>> {
  readonly channel: string;
  /**
   * `"client"` for `client.subscribe()`; `"server"` for a subscription the server made
   * (its API's `subscribe`), which the client keeps and resubscribes like its own.
   */
  readonly origin: SubscriptionOrigin;
  /** @internal */ _state: SubscriptionState = "subscribing";
  /** @internal */ _position: StreamPosition | null;
  /** @internal Publications to load with `history` before the first subscribe (0: none). */ _historyFirst: number;
  /** @internal Id of the subscribe request in flight on the current connection. */
  _pendingId: number | null = null;
  /** @internal Subscribed on the current connection (live publications are processed). */
  _active = false;
  /** @internal Live publications that arrived while a subscribe request was in flight. */
  _held: Publication<T>[] = [];
  /** @internal Successful subscriptions so far. */
  _subscribedCount = 0;
  /** @internal Resubscribes refused in a row for a while (112, 100, 107). */
  _refusals = 0;
  /** @internal The timer of the next resubscribe after such a refusal. */
  _retryTimer: ReturnType<typeof setTimeout> | null = null;
  /**
   * @internal The position of a `subscribed` push for this channel that arrived on the
   * current connection while this subscription's own subscribe was on its way: the server
   * subscribed the connection itself, so that subscribe gets an error (106) and the
   * subscription continues from this position instead.
   */
  _serverPush: StreamPosition | null = null;
  /** @internal */ readonly _handlers: SubscriptionHandlers<T>;
  private readonly streams = new Set<ItemStream<T>>();
  private readonly listeners: { [E in keyof SubscriptionEvents<T>]?: Set<(arg: SubscriptionEvents<T>[E]) => void> } = {};
  private readyResolve!: (e: SubscribedEvent) => void;
  private readyReject!: (e: unknown) => void;
  /**
   * Resolves after the first successful subscribe reply; rejects if the server refuses
   * the subscription or it is unsubscribed first. Ignoring it is safe (no unhandled rejection).
   */
  readonly ready: Promise<SubscribedEvent>;

  /** @internal */
  constructor(
    private readonly host: SubscriptionHost,
    channel: string,
    options: SubscribeOptions<T>,
    origin: SubscriptionOrigin = "client",
  ) {
    this.channel = channel;
    this.origin = origin;
    this._handlers = options;
    this._position = options.since ? { offset: options.since.offset, epoch: options.since.epoch } : null;
    this._historyFirst = !options.since && options.history && options.history > 0 ? Math.min(options.history, 10_000) : 0;
    this.ready = new Promise<SubscribedEvent>((resolve, reject) => {
      this.readyResolve = resolve;
      this.readyReject = reject;
    });
    this.ready.catch(() => {});
  }

  get state(): SubscriptionState {
    return this._state;
  }

  /** The last position delivered (offset of the last publication and the epoch), or null. */
  get position(): StreamPosition | null {
    return this._position ? { ...this._position } : null;
  }

  /** Ends the subscription (iterators finish) and tells the server if connected. */
  unsubscribe(): Promise<void> {
    return this.host._unsubscribe(this);
  }

  /**
   * Listens to one of the subscription's events (the handlers of `SubscribeOptions`, as
   * events: `publication`, `join`, `leave`, `unrecoverable`, `subscribed`, `unsubscribed`,
   * `error`); returns a function that removes the listener. Handlers given to `subscribe()`
   * run first. This is how an application follows a subscription the server made.
   */
  on<E extends keyof SubscriptionEvents<T>>(event: E, fn: (arg: SubscriptionEvents<T>[E]) => void): () => void {
    let set = this.listeners[event] as Set<(a: SubscriptionEvents<T>[E]) => void> | undefined;
    if (!set) {
      set = new Set();
      (this.listeners as Record<string, unknown>)[event] = set;
    }
    set.add(fn);
    return () => this.off(event, fn);
  }

  off<E extends keyof SubscriptionEvents<T>>(event: E, fn: (arg: SubscriptionEvents<T>[E]) => void): void {
    (this.listeners[event] as Set<(a: SubscriptionEvents<T>[E]) => void> | undefined)?.delete(fn);
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<SubscriptionItem<T>> {
    const s = new ItemStream<T>((x) => this.streams.delete(x));
    if (this._state === "unsubscribed") s.end();
    else this.streams.add(s);
    return s;
  }

  /** @internal */
  _deliver(pub: Publication<T>): void {
    this.emit("publication", this._handlers.onPublication, pub);
    for (const s of this.streams) s.push(pub);
  }

  /** @internal */
  _unrecoverable(event: Unrecoverable): void {
    this.emit("unrecoverable", this._handlers.onUnrecoverable, event);
    for (const s of this.streams) s.push(event);
  }

  /** @internal */
  _presence(kind: "join" | "leave", client: ClientInfo): void {
    if (kind === "join") this.emit("join", this._handlers.onJoin, client);
    else this.emit("leave", this._handlers.onLeave, client);
  }

  /** @internal */
  _subscribed(event: SubscribedEvent): void {
    this._state = "subscribed";
    this._subscribedCount++;
    this.readyResolve(event);
    this.emit("subscribed", this._handlers.onSubscribed, event);
  }

  /**
   * @internal The subscription is over: by unsubscribe() or the server's `unsubscribed`
   * push (no error; `byServer` tells which), or a refusal (error).
   */
  _end(error?: TidewireError, byServer = false): void {
    if (this._state === "unsubscribed") return;
    this._state = "unsubscribed";
    this._active = false;
    this._pendingId = null;
    this._held = [];
    this._serverPush = null;
    if (this._retryTimer !== null) clearTimeout(this._retryTimer);
    this._retryTimer = null;
    this.readyReject(
      error ??
        new Error(
          `${byServer ? "the server ended the subscription to" : "unsubscribed from"} ${JSON.stringify(this.channel)} ` +
            `before the subscription completed`,
        ),
    );
    if (error) this.emit("error", this._handlers.onError, error);
    else this.emit("unsubscribed", this._handlers.onUnsubscribed, { channel: this.channel, byServer });
    for (const s of this.streams) s.end(error);
    this.streams.clear();
  }

  /** The handler given to subscribe(), then the listeners added with on(). */
  private emit<E extends keyof SubscriptionEvents<T>>(
    event: E,
    handler: ((a: SubscriptionEvents<T>[E]) => void) | undefined,
    arg: SubscriptionEvents<T>[E],
  ): void {
    this.call(handler, arg);
    const set = this.listeners[event] as Set<(a: SubscriptionEvents<T>[E]) => void> | undefined;
    if (set) for (const fn of [...set]) this.call(fn, arg);
  }

  private call<A>(fn: ((a: A) => void) | undefined, arg: A): void {
    if (!fn) return;
    try {
      fn(arg);
    } catch (e) {
      this.host._report(e);
    }
  }
}
