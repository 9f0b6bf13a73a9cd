// WebSocket over HTTP/2 (RFC 8441) with Node `node:http2` and Node `ws`, for the interop
// tests (../README.md, "Over HTTP/2").
//
// `ws` only knows HTTP/1.1 handshakes, but once a handshake is done it runs over any duplex
// stream: WebSocketServer.completeUpgrade does `new WebSocket(null, undefined, opts)` then
// `ws.setSocket(socket, head, opts)`. Here the handshake is an extended CONNECT on a stream
// of an HTTP/2 session (`:protocol websocket`, answered 200, no Sec-WebSocket-Key/Accept),
// and the stream (an Http2Stream, a Duplex) is handed to `setSocket` the same way, on the
// client's side (masking, `_isServer = false`) as on the server's.

import http2 from 'node:http2';
import { PerMessageDeflate, WebSocket, extension } from 'ws';

// The options a WebSocketServer gives the sockets it makes (ws 8 defaults).
const WS_DEFAULTS = {
  allowSynchronousEvents: true,
  autoPong: true,
  maxBufferedChunks: 256 * 1024,
  maxFragments: 16 * 1024,
  maxPendingAutoPongs: 60,
  skipUTF8Validation: false,
  closeTimeout: 30000,
};

/**
 * What ws expects of a net.Socket that an Http2Stream does not have. ws calls
 * `setTimeout(0)` and `setNoDelay()` when present: Http2Stream has its own setTimeout
 * (the stream's idle timer, 0 turns it off, which is what ws wants), and no setNoDelay,
 * which is the TCP connection's business: passed on to the session's socket so that
 * small frames (pings, close) are not held by Nagle's algorithm.
 */
function shim(stream, session) {
  if (typeof stream.setNoDelay !== 'function') {
    stream.setNoDelay = (noDelay = true) => {
      try {
        session.socket?.setNoDelay?.(noDelay);
      } catch {
        // A TLS session's proxy may refuse; the connection stays as it is.
      }
      return stream;
    };
  }
  return stream;
}

/**
 * Runs a ws WebSocket over `stream` (an Http2Stream whose extended CONNECT was accepted).
 * `beforeOpen(ws)` runs before the socket is attached (and 'open' emitted), so that
 * listeners miss nothing.
 */
export function wsOverStream(stream, session, { isServer, protocol = '', deflate = null, maxPayload, beforeOpen }) {
  const opts = { ...WS_DEFAULTS, maxPayload };
  const ws = new WebSocket(null, undefined, opts);
  // `null` address makes a server-side socket; a client masks what it sends and expects
  // unmasked frames (the Receiver takes `isServer` from here in setSocket).
  ws._isServer = isServer;
  ws._protocol = protocol;
  if (deflate) ws._extensions = { [PerMessageDeflate.extensionName]: deflate };
  beforeOpen?.(ws);
  ws.setSocket(shim(stream, session), Buffer.alloc(0), opts);
  return ws;
}

/** Resolves once the server's SETTINGS have arrived: with `enableConnectProtocol`, or rejects. */
export function connectAllowed(session, what) {
  return new Promise((resolve, reject) => {
    const check = () => {
      cleanup();
      if (session.remoteSettings.enableConnectProtocol === true) resolve(session);
      else reject(new Error(`${what}: the server's SETTINGS have no SETTINGS_ENABLE_CONNECT_PROTOCOL (RFC 8441 §3)`));
    };
    const fail = (err) => {
      cleanup();
      reject(err);
    };
    const closed = () => fail(new Error(`${what}: the HTTP/2 session closed before the server's SETTINGS`));
    const cleanup = () => {
      session.off('remoteSettings', check);
      session.off('error', fail);
      session.off('close', closed);
    };
    session.once('remoteSettings', check);
    session.once('error', fail);
    session.once('close', closed);
  });
}

/**
 * An HTTP/2 session to the server of a ws:// URL (h2c with prior knowledge) or wss:// URL
 * (TLS, ALPN h2; `ca` a PEM to trust), once extended CONNECT is known to be allowed.
 */
export async function openSession(url, { ca } = {}) {
  const u = new URL(url);
  const tls = u.protocol === 'wss:';
  const origin = `${tls ? 'https' : 'http'}://${u.host}`;
  const session = http2.connect(origin, tls ? { ca, ALPNProtocols: ['h2'] } : {});
  session.on('error', () => {}); // reported through the pending promise or the streams
  await connectAllowed(session, origin);
  if (tls && session.alpnProtocol !== 'h2') {
    session.destroy();
    throw new Error(`${origin}: ALPN selected ${session.alpnProtocol}, not h2`);
  }
  return session;
}

/** The `:path` of a ws:// or wss:// URL. */
export function pathOf(url) {
  const u = new URL(url);
  return `${u.pathname || '/'}${u.search}`;
}

/**
 * A client WebSocket (Node `ws`) as a stream of `session`: extended CONNECT to `path`,
 * offering `protocols` and, with `compression`, permessage-deflate (the same offer ws makes
 * over HTTP/1.1). Resolves with the open ws and the response headers; rejects on a
 * non-200 answer (with its body's first line) or a header that does not match the offer.
 */
export function connectWebSocket(session, path, { protocols = [], compression = false, maxPayload, beforeOpen, headers = {} } = {}) {
  return new Promise((resolve, reject) => {
    const req = {
      ':method': 'CONNECT',
      ':protocol': 'websocket',
      ':path': path,
      'sec-websocket-version': '13',
      ...headers,
    };
    let deflate = null;
    if (compression) {
      deflate = new PerMessageDeflate({ isServer: false, maxPayload });
      req['sec-websocket-extensions'] = extension.format({ [PerMessageDeflate.extensionName]: deflate.offer() });
    }
    if (protocols.length) req['sec-websocket-protocol'] = protocols.join(', ');
    let stream;
    try {
      stream = session.request(req, { endStream: false });
    } catch (err) {
      reject(err);
      return;
    }
    const fail = (msg) => {
      stream.close(http2.constants.NGHTTP2_CANCEL);
      reject(new Error(msg));
    };
    stream.once('error', reject);
    stream.once('response', (h) => {
      stream.off('error', reject);
      const status = h[':status'];
      if (status !== 200) {
        let body = '';
        stream.setEncoding('utf8');
        stream.on('data', (d) => { body += d; });
        stream.on('end', () => reject(new Error(`extended CONNECT ${path}: status ${status}: ${body.split('\n')[0]}`)));
        stream.on('error', () => reject(new Error(`extended CONNECT ${path}: status ${status}`)));
        return;
      }
      if (h['sec-websocket-accept'] !== undefined) return fail('the 200 carries sec-websocket-accept (RFC 8441 §5: not over HTTP/2)');
      const prot = h['sec-websocket-protocol'];
      if (prot !== undefined && !protocols.includes(prot)) return fail(`the server selected subprotocol ${prot}, not offered`);
      if (prot === undefined && protocols.length) return fail('the server selected no subprotocol');
      const ext = h['sec-websocket-extensions'];
      if (ext !== undefined) {
        if (!deflate) return fail(`the server sent sec-websocket-extensions: ${ext} although none were offered`);
        try {
          const parsed = extension.parse(ext);
          const names = Object.keys(parsed);
          if (names.length !== 1 || names[0] !== PerMessageDeflate.extensionName) throw new Error(`not offered: ${names}`);
          deflate.accept(parsed[PerMessageDeflate.extensionName]);
        } catch (err) {
          return fail(`invalid sec-websocket-extensions ${ext}: ${err.message}`);
        }
      } else {
        deflate = null;
      }
      const ws = wsOverStream(stream, session, { isServer: false, protocol: prot ?? '', deflate, maxPayload, beforeOpen });
      resolve({ ws, headers: h });
    });
  });
}

/**
 * Answers the extended CONNECT on a server stream with ws as the server: 200 with the
 * negotiated permessage-deflate (when `compression` and offered) and the first offered
 * subprotocol among `protocols`; a request that is not a WebSocket gets a 4xx with a
 * one-line reason. Returns the ws, or null when refused.
 */
export function acceptWebSocket(stream, session, headers, { compression = false, protocols = [], maxPayload, beforeOpen }) {
  const refuse = (status, reason, extra = {}) => {
    stream.respond({ ':status': status, 'content-type': 'text/plain; charset=utf-8', ...extra });
    stream.end(`${reason}\n`);
    return null;
  };
  if (headers[':method'] !== 'CONNECT' || headers[':protocol'] !== 'websocket') {
    return refuse(400, 'expected an extended CONNECT with :protocol websocket (RFC 8441)');
  }
  if (headers['sec-websocket-version'] !== '13') {
    return refuse(426, 'sec-websocket-version must be 13', { 'sec-websocket-version': '13' });
  }
  const response = { ':status': 200 };
  let protocol = '';
  const offered = (headers['sec-websocket-protocol'] ?? '').split(',').map((p) => p.trim()).filter(Boolean);
  const chosen = protocols.find((p) => offered.includes(p));
  if (chosen) {
    protocol = chosen;
    response['sec-websocket-protocol'] = chosen;
  }
  let deflate = null;
  const offer = headers['sec-websocket-extensions'];
  if (compression && offer !== undefined) {
    try {
      const offers = extension.parse(offer);
      if (offers[PerMessageDeflate.extensionName]) {
        deflate = new PerMessageDeflate({ isServer: true, maxPayload });
        deflate.accept(offers[PerMessageDeflate.extensionName]);
        response['sec-websocket-extensions'] = extension.format({ [PerMessageDeflate.extensionName]: [deflate.params] });
      }
    } catch (err) {
      return refuse(400, `invalid or unacceptable sec-websocket-extensions: ${err.message}`);
    }
  }
  stream.respond(response);
  return wsOverStream(stream, session, { isServer: true, protocol, deflate, maxPayload, beforeOpen });
}
