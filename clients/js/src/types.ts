/** Types of the `tidewire.v1` channel protocol (docs/protocol.md) as this library exposes them. */

import type { Subscription } from "./subscription.js";

/** A position in a channel's stream: the last offset seen and the channel's epoch. */
export interface StreamPosition {
  offset: number;
  epoch: string;
}

/** A publication on a channel (pushed, recovered, or from `history`). */
export interface Publication<T = unknown> {
  type: "publication";
  channel: string;
  offset: number;
  epoch: string;
  data: T;
}

/**
 * The server could not fill the gap after a reconnect (`recovered: false`): the channel's
 * history was recreated (new epoch, e.g. a server restart) or no longer reaches back far
 * enough. Publications between `since` and `position` may be missing: reload the state
 * (for example with `history`) and tell the user that older messages may be missing.
 */
export interface Unrecoverable {
  type: "unrecoverable";
  channel: string;
  /** The position the client asked to resume from. */
  since: StreamPosition;
  /** The channel's position now; live publications continue from `offset + 1`. */
  position: StreamPosition;
}

/** What iterating over a subscription (`for await (const item of sub)`) yields. */
export type SubscriptionItem<T = unknown> = Publication<T> | Unrecoverable;

/** A client in presence and in join/leave events. `user` and `info` are null when anonymous. */
export interface ClientInfo {
  client: string;
  user: string | null;
  info: unknown;
}

/**
 * How the client reaches the server: `"websocket"` (`/ws`), or `"sse"`, the fallback of the
 * `fallback: "sse"` option (an EventSource per subscription on `/sse`, publishing with
 * `POST /publish`) while the WebSocket cannot be opened.
 */
export type Transport = "websocket" | "sse";

/** `client.on("transport", ...)`: the transport in use changed. */
export interface TransportEvent {
  /** The transport now in use; null when the client stopped or went offline. */
  transport: Transport | null;
  /** Why it changed (the WebSocket failures that led to the fallback, for example). */
  reason: string;
}

/** Result of `connect` (also carried by the `connected` state event). */
export interface ConnectResult {
  /** The connection's client id; "" on the SSE fallback (each EventSource has its own). */
  client: string;
  /** The token's user; null when anonymous, and on the SSE fallback. */
  user: string | null;
  version: string;
  transport: Transport;
}

export interface PublishResult {
  offset: number;
  epoch: string;
}

export interface HistoryResult<T = unknown> {
  offset: number;
  epoch: string;
  /** Oldest first. */
  publications: Publication<T>[];
}

export interface PresenceResult {
  clients: ClientInfo[];
}

/** What a (re)subscription produced, passed to `onSubscribed`. */
export interface SubscribedEvent {
  channel: string;
  position: StreamPosition;
  /** False for the first subscription of this Subscription object, true after a reconnect. */
  resubscribed: boolean;
  /** Present when the subscribe request carried `since`. */
  recovered?: boolean;
  /** Number of recovered publications delivered (after dropping duplicates). */
  recoveredCount: number;
}

/**
 * How a subscription ended without an error, passed to `onUnsubscribed`: by its own
 * `unsubscribe()`, or by the server (its API's `unsubscribe`: the push
 * `{"channel": C, "unsubscribed": {}}`).
 */
export interface UnsubscribedEvent {
  channel: string;
  /** True when the server ended it, false after `unsubscribe()`. */
  byServer: boolean;
}

/**
 * The server subscribed this connection to a channel (its API's `subscribe`, on behalf of
 * the backend): `client.on("serverSubscribed", ...)`. The client made a `Subscription` for
 * it (`origin: "server"`) that delivers the channel's publications after `position`; the
 * client keeps it across reconnects (resubscribing with `since`) until the server ends it
 * or the application calls its `unsubscribe()`.
 */
export interface ServerSubscribedEvent {
  channel: string;
  /** Where the subscription starts: the next publication has `position.offset + 1`. */
  position: StreamPosition;
  /**
   * The subscription, already `subscribed`. Handlers attached in the listener
   * (`subscription.on("publication", ...)`, or `for await`) miss nothing.
   */
  subscription: Subscription<unknown>;
}

/**
 * The server ended this client's subscription to a channel (its API's `unsubscribe`):
 * `client.on("serverUnsubscribed", ...)`. Emitted for a subscription the server made and
 * for one the application made alike; the subscription has ended (state `unsubscribed`,
 * iterators finished) and is not resubscribed.
 */
export interface ServerUnsubscribedEvent {
  channel: string;
  subscription: Subscription<unknown>;
}

/** Connection states, as reported by `client.on("state", ...)`. */
export type ConnectionState = "connecting" | "connected" | "disconnected" | "reconnecting";

export type StateEvent =
  | { state: "connecting"; attempt: number }
  | {
      state: "connected";
      /** "" on the SSE fallback. */
      client: string;
      user: string | null;
      /** "sse" when connected through the fallback (presence, history and rpc unavailable). */
      transport: Transport;
    }
  | {
      state: "reconnecting";
      /** 1 for the first retry after a connection was lost (or failed), then 2, 3, ... */
      attempt: number;
      /** Milliseconds until this attempt starts. */
      delay: number;
      /** Close code of the connection that was lost, if a close event carried one. */
      code?: number;
      reason: string;
    }
  | {
      state: "disconnected";
      code?: number;
      reason: string;
      /** True when the client waits for the browser's `online` event. */
      offline?: boolean;
    };

/** The part of the WebSocket API this library uses (browsers, Node >= 22, the `ws` package). */
export interface WebSocketLike {
  readonly readyState: number;
  readonly protocol: string;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: any) => any) | null;
  onmessage: ((ev: { data: any }) => any) | null;
  onclose: ((ev: { code: number; reason: string }) => any) | null;
  onerror: ((ev: any) => any) | null;
}

export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

/** Something that dispatches the browser's `online` and `offline` events (normally `window`). */
export interface NetworkEventTarget {
  addEventListener(type: string, listener: () => void): void;
  removeEventListener(type: string, listener: () => void): void;
}

/**
 * The part of the browser's `EventSource` this library uses (the SSE fallback): events
 * `subscribed`, `message`, `join`, `leave` and `error`, `readyState` (2: closed for good).
 */
export interface EventSourceLike {
  readonly readyState: number;
  close(): void;
  addEventListener(type: string, listener: (ev: any) => void): void;
}

export type EventSourceConstructor = new (url: string) => EventSourceLike;

/** The part of a `fetch` response the SSE fallback uses. */
export interface FetchResponseLike {
  readonly ok: boolean;
  readonly status: number;
  text(): Promise<string>;
}

/** The part of `fetch` the SSE fallback uses (`POST /publish`, and the reason of a refused `/sse`). */
export type FetchLike = (
  url: string,
  init?: { method?: string; headers?: Record<string, string>; body?: string; signal?: AbortSignal },
) => Promise<FetchResponseLike>;
