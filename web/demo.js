// Shared by the demo pages that use tidewire.v1 (/chat, /live, /board): the /ws URL, the
// page's `?token=JWT`, and what to show when the server wants a token (auth on) instead of
// a reconnecting banner.
//
// With auth on, `/ws` answers a `connect` without a token (or with a bad one) with error 109
// and closes with 4008; an expired token closes with 4001. The client stops after either,
// and the page says why and how to get in. The backend may also end a user's connections
// through the server API (docs/api.md): `disconnect` closes with 4500 by default (any code
// from 4500 to 4999 means "do not reconnect"), `block_user` with 4501, and a blocked user's
// next `connect` is refused (error 109, close 4501). The page then says so, with the code
// and the server's reason, instead of promising a reconnect.

export const params = new URLSearchParams(location.search);

/** The token from the page's URL (`?token=JWT`), if any. */
export const token = params.get("token") || undefined;

export const wsUrl = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws";

/** Close codes of docs/protocol.md that mean "no valid token". */
const AUTH_CODES = new Set([4001, 4008]);

/** Whether a client `state` event means the server refused us for want of a valid token. */
export function isAuthRefusal(s) {
  return s.state === "disconnected" && AUTH_CODES.has(s.code);
}

/** Whether a client `state` event is the server ending the connection for good (4500-4999). */
export function isServerStop(s) {
  return s.state === "disconnected" && typeof s.code === "number" && s.code >= 4500 && s.code <= 4999;
}

/** What the banner says after a close of 4500-4999: who closed, the reason, the code. */
export function serverStopText(s) {
  const why = s.reason ? ": " + s.reason : "";
  if (s.code === 4501) return "Blocked by the server" + why + " (close code 4501). Not reconnecting.";
  return "Disconnected by the server" + why + " (close code " + s.code + "). Not reconnecting: reload the page to connect again.";
}

/** This page's URL with `changes` applied to its query (null removes a parameter). */
export function pageUrl(changes) {
  const p = new URLSearchParams(location.search);
  for (const [k, v] of Object.entries(changes)) {
    if (v === null || v === undefined || v === "") p.delete(k); else p.set(k, v);
  }
  const q = p.toString();
  return location.pathname + (q ? "?" + q : "");
}

let box = null;

/**
 * Shows (or, with `s` null, hides) the "this server requires a token" notice for a refusal
 * state event: what the server said, how to make a token, and a field to paste one.
 */
export function showAuthNotice(s) {
  if (!s) {
    if (box) box.classList.remove("show");
    return;
  }
  if (!box) {
    box = document.createElement("div");
    box.id = "auth";
    box.className = "banner auth";
    const main = document.querySelector("main") || document.body;
    main.prepend(box);
  }
  const reason = s.reason || "";
  let head;
  if (s.code === 4001) head = "Your token has expired.";
  else if (token) head = "This server refused the token in the page's URL" + (reason ? " (" + reason + ")." : ".");
  else head = "This server requires a token: authentication is on.";
  const example = location.origin + pageUrl({ token: "TOKEN" }).replace("TOKEN", "…");
  box.textContent = "";
  const h = document.createElement("strong"); h.textContent = head;
  const p = document.createElement("p");
  p.append(
    "Create one on the server with ",
    code("tidewire gentoken --user NAME"),
    " (it signs with the server's --auth-hmac-secret) and open ",
    code(example),
    ", or paste it here:",
  );
  const form = document.createElement("form");
  form.className = "row";
  const input = document.createElement("input");
  input.type = "text"; input.id = "token-input"; input.placeholder = "paste a token (JWT)"; input.autocomplete = "off";
  const button = document.createElement("button"); button.textContent = "Use this token";
  form.append(input, button);
  form.onsubmit = (e) => {
    e.preventDefault();
    const t = input.value.trim();
    if (t) location.href = pageUrl({ token: t });
  };
  box.append(h, p, form);
  box.classList.add("show");
}

function code(text) {
  const c = document.createElement("code");
  c.textContent = text;
  return c;
}

/**
 * The state badge and the reconnect banner for a client `state` event; an auth refusal
 * shows the token notice instead of the banner, and a close of 4500-4999 (disconnected or
 * blocked by the server) says so in the banner, with the server's reason.
 */
export function showState(s, stateEl, bannerEl) {
  const auth = isAuthRefusal(s);
  const stop = isServerStop(s);
  stateEl.textContent = auth ? "token needed" : stop ? (s.code === 4501 ? "blocked" : "disconnected by the server") : s.state;
  stateEl.className = "state " + (auth || stop ? "disconnected" : s.state);
  if (bannerEl.dataset.text === undefined) bannerEl.dataset.text = bannerEl.textContent;
  bannerEl.textContent = stop ? serverStopText(s) : bannerEl.dataset.text;
  bannerEl.classList.toggle("stopped", stop);
  bannerEl.classList.toggle("show", !auth && (s.state === "reconnecting" || s.state === "disconnected"));
  showAuthNotice(auth ? s : null);
}
