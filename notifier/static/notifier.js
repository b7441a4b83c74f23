/*! notifier.js — the browser client of notifier. Plain JavaScript, no dependency, no build.
 *
 *   <script src="/notifier.js"></script>
 *   const client = new Notifier({ topics: ["orders"], token: () => fetch("/token").then(r => r.text()) });
 *   client.on("notification", (n) => console.log(n.type, n.title, n.message));
 *   client.on("state", (state, info) => console.log(state, info.transport));
 *   client.connect();
 *
 * - WebSocket (/ws) first; when it cannot open, Server-Sent Events (/events, read with
 *   fetch so every notification type and HTTP errors are visible) in the same attempt.
 *   Every new round of attempts starts with WebSocket again.
 * - Reconnects after any close (1001 shutdown, 1008 expired token, 1012, 1013 too slow, a
 *   dropped network) with exponential backoff and jitter, calling the token function
 *   again each time, and resumes from the last id it saw (last_event_id): nothing lost,
 *   and an id at or below the last one is dropped, so nothing is seen twice.
 * - "notifier.reset" (the resume point left history) is not a notification: it moves the
 *   resume point on and fires "reset", so the page refetches its state.
 * - subscribe/unsubscribe: WebSocket actions; on SSE, a reconnect with the new topic list.
 * - Presence (topics in the server's NOTIFIER_PRESENCE_EVENTS): "join" / "leave" fire when a
 *   user's first connection to a topic opens and their last one closes; presence(topic)
 *   asks who is there now (a WebSocket action).
 * - Disconnected by the server (WebSocket close 4001, or SSE's last "notifier.disconnect"
 *   event: a logout, a revoked permission): fires "disconnect" and closes, no reconnect.
 * - The inbox (NOTIFIER_INBOX_URL): inbox.list/markRead/remove call GET /inbox, POST
 *   /inbox/read and DELETE /inbox/<id> with the client's token (else the page's cookies).
 *   "read" / "deleted" fire on the user's changes from any tab; "unread" gets the unread
 *   count, kept fresh only while someone listens: those events are not in history, so the
 *   count is fetched again on every (re)connect and after a notification for the user.
 */
(function (global) {
  "use strict";

  const TRANSPORTS = ["websocket", "sse"];
  const STABLE_MS = 10000; // a connection that lived this long starts the backoff over
  const RESET = "notifier.reset";
  const DISCONNECT = "notifier.disconnect";
  const DISCONNECTED = 4001; // WebSocket close code: the server ended this user's connections
  const PRESENCE_EVENTS = { "notifier.join": "join", "notifier.leave": "leave" };
  const INBOX_EVENTS = { "notifier.read": "read", "notifier.deleted": "deleted" };
  const UNREAD_DEBOUNCE_MS = 100; // a burst of notifications for the user: one count request

  // Where this script was loaded from is where notifier is mounted (also under a url_prefix).
  const script = typeof document !== "undefined" ? document.currentScript : null;
  const SCRIPT_BASE = script && script.src ? new URL(".", script.src).href : null;

  class Notifier {
    /** See notifier.d.ts for the options. Nothing happens before connect(). */
    constructor(options = {}) {
      const base = new URL(options.url ?? SCRIPT_BASE ?? "/", global.location ? global.location.href : undefined);
      if (!base.pathname.endsWith("/")) base.pathname += "/";
      this.url = base.href;
      this.token = options.token ?? null;
      this.transports = (options.transports ?? TRANSPORTS).filter((t) => TRANSPORTS.includes(t));
      if (this.transports.length === 0) throw new TypeError(`transports must list some of ${TRANSPORTS}`);
      this.minDelay = options.minDelay ?? 500;
      this.maxDelay = options.maxDelay ?? 30000;
      this.lastEventId = options.lastEventId ?? null;
      this.state = "idle";
      this.transport = null;
      this.stats = { received: 0, duplicates: 0, connects: 0 };
      this._topics = new Set(options.topics ?? []);
      this._handlers = new Map();
      this._conn = null; // the current connection: { transport, topics, close(), send?() }
      this._gen = 0; // bumped for each connection: callbacks of older ones are ignored
      this._round = 0; // index into transports within the current round of attempts
      this._attempt = 0; // failed rounds in a row: the backoff exponent
      this._timer = null;
      this._openedAt = 0;
      this._waiting = []; // topic changes the next connection confirms: { action, topic, resolve, reject }
      this._pending = []; // WebSocket actions sent, awaiting their ack, in order
      this._online = () => { if (this.state === "disconnected") this._openNow(); };
      this._lastToken = undefined; // what the token function gave last: the inbox requests reuse it
      this.unread = null; // the user's unread count, once known (see on("unread"))
      this._unreadVersion = 0; // bumped by each count applied: an answer to an older request is stale
      this._unreadTimer = null;
      this.inbox = new Inbox(this);
    }

    get topics() { return [...this._topics]; }

    /** Call fn(...) on "notification", "notification:<type>", "reset", "state", "error", "join",
     * "leave", "disconnect", "read", "deleted" or "unread". */
    on(event, fn) {
      if (!this._handlers.has(event)) this._handlers.set(event, new Set());
      const first = event === "unread" && !this._wantsUnread();
      this._handlers.get(event).add(fn);
      if (first && this.state === "connected") this._refreshUnread(0); // the count was not kept meanwhile
      return this;
    }

    off(event, fn) {
      const set = this._handlers.get(event);
      if (set) set.delete(fn);
      return this;
    }

    connect() {
      if (this.state !== "idle" && this.state !== "closed") return this;
      this._round = 0;
      this._attempt = 0;
      if (global.addEventListener) global.addEventListener("online", this._online);
      this._open();
      return this;
    }

    close(info = {}) {
      this._drop();
      clearTimeout(this._timer);
      clearTimeout(this._unreadTimer);
      this._unreadTimer = null;
      if (global.removeEventListener) global.removeEventListener("online", this._online);
      const error = new Error("notifier client closed");
      for (const entry of [...this._pending, ...this._waiting]) entry.reject(error);
      this._pending = [];
      this._waiting = [];
      this._setState("closed", info);
    }

    _disconnected(info) {
      this._emit("disconnect", info);
      this.close({ ...info, disconnected: true });
    }

    /** Resolves once the server has the subscription (WebSocket ack, or an SSE stream opened with it). */
    subscribe(topic) {
      if (this._topics.has(topic)) return Promise.resolve();
      this._topics.add(topic);
      return this._change("subscribe", topic);
    }

    unsubscribe(topic) {
      if (!this._topics.delete(topic)) return Promise.resolve();
      return this._change("unsubscribe", topic);
    }

    /** Who is on a subscribed topic with presence events now: resolves {topic, users, connections}. */
    presence(topic) {
      return this._change("presence", topic);
    }

    // -- connecting -------------------------------------------------------------------

    _change(action, topic) {
      return new Promise((resolve, reject) => {
        const entry = { action, topic, resolve, reject };
        const conn = this._conn;
        if (this.state === "connected" && conn.transport === "websocket") {
          this._send(conn, entry);
        } else if (action === "presence" && this.state === "connected") {
          reject(new Error("presence needs the WebSocket transport"));
        } else {
          this._waiting.push(entry);
          if (this.state === "connected") this._openNow(); // SSE: reconnect with the new topics
        }
      });
    }

    _send(conn, entry) {
      this._pending.push(entry);
      if (entry.action !== "presence") conn.topics[entry.action === "subscribe" ? "add" : "delete"](entry.topic);
      try {
        conn.send({ action: entry.action, topic: entry.topic });
      } catch (error) { /* closing: the close handler hands it to the next connection */ }
    }

    _drop() {
      this._gen++;
      const conn = this._conn;
      this._conn = null;
      if (conn) conn.close();
      // whatever was not acked is in the topic list the next connection asks for
      this._waiting = [...this._pending, ...this._waiting];
      this._pending = [];
    }

    _openNow() {
      clearTimeout(this._timer);
      this._drop();
      this._open();
    }

    async _open() {
      const gen = ++this._gen;
      const transport = this.transports[this._round];
      this._setState("connecting", { transport });
      let token = null;
      try {
        token = await this._currentToken(true);
      } catch (error) {
        if (gen !== this._gen) return;
        this._emit("error", { message: `token function failed: ${error}`, error });
        this._retry({ error }, false, true);
        return;
      }
      if (gen !== this._gen) return;
      const topics = new Set(this._topics);
      const url = new URL(transport === "websocket" ? "ws" : "events", this.url);
      for (const topic of topics) url.searchParams.append("topic", topic);
      if (token) url.searchParams.set("token", token);
      if (this.lastEventId) url.searchParams.set("last_event_id", this.lastEventId);
      if (transport === "websocket") {
        url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
        this._openWebSocket(gen, url.href, topics);
      } else {
        this._openSse(gen, url.href, topics);
      }
    }

    _openWebSocket(gen, url, topics) {
      let ws;
      try {
        ws = new global.WebSocket(url);
      } catch (error) { // no WebSocket here, or a policy forbids it
        this._lost({ transport: "websocket", error }, false);
        return;
      }
      let opened = false;
      this._conn = {
        transport: "websocket", topics,
        close: () => { try { ws.close(1000); } catch (e) { /* already closed */ } },
        send: (message) => ws.send(JSON.stringify(message)),
      };
      ws.onopen = () => { if (gen === this._gen) { opened = true; this._opened(); } };
      ws.onmessage = (e) => { if (gen === this._gen) this._frame(e.data); };
      ws.onclose = (e) => {
        if (gen !== this._gen) return;
        const info = { transport: "websocket", code: e.code, reason: e.reason };
        if (e.code === DISCONNECTED) this._disconnected(info);
        else this._lost(info, opened);
      };
    }

    async _openSse(gen, url, topics) {
      const abort = new AbortController();
      this._conn = { transport: "sse", topics, close: () => abort.abort() };
      let opened = false;
      try {
        const response = await fetch(url, { headers: { Accept: "text/event-stream" }, signal: abort.signal });
        if (gen !== this._gen) return;
        const type = response.headers.get("Content-Type") || "";
        if (!response.ok || !type.startsWith("text/event-stream")) {
          let message = `HTTP ${response.status}`;
          try { message = (await response.json()).error || message; } catch (e) { /* not JSON */ }
          if (gen !== this._gen) return;
          this._refused(response.status, message);
          this._lost({ transport: "sse", status: response.status, reason: message }, false);
          return;
        }
        opened = true;
        this._opened();
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        const parser = new SseParser((data) => this._frame(data));
        for (;;) {
          const { value, done } = await reader.read();
          if (gen !== this._gen) return;
          if (done) break;
          parser.push(decoder.decode(value, { stream: true }));
        }
        this._lost({ transport: "sse", reason: "stream ended" }, true);
      } catch (error) {
        if (gen === this._gen) this._lost({ transport: "sse", error }, opened);
      }
    }

    _refused(status, message) {
      // Said in the console too: a page without an "error" handler still shows why.
      if (typeof console !== "undefined") console.warn(`notifier: the server refused the stream (${status}): ${message}`);
      this._emit("error", { message, status, transport: "sse" });
      // The topics added since the last stream are what the server refuses (400, 403).
      if (status === 400 || status === 403) {
        const error = new Error(message);
        this._waiting = this._waiting.filter((entry) => {
          if (entry.action !== "subscribe") return true;
          this._topics.delete(entry.topic);
          entry.reject(error);
          return false;
        });
      }
    }

    _opened() {
      const conn = this._conn;
      this._openedAt = Date.now();
      this.stats.connects++;
      const waiting = this._waiting;
      this._waiting = [];
      if (conn.transport === "websocket") {
        // Changes made while connecting: what the URL already had is confirmed, the rest is sent.
        for (const entry of waiting) {
          if (entry.action !== "presence" && (entry.action === "subscribe") === conn.topics.has(entry.topic)) {
            entry.resolve();
          } else {
            this._send(conn, entry);
          }
        }
      } else if (!sameSet(conn.topics, this._topics)) {
        this._waiting = waiting; // the topics changed while this stream was opening
        this._openNow();
        return;
      } else {
        for (const entry of waiting) {
          if (entry.action === "presence") entry.reject(new Error("presence needs the WebSocket transport"));
          else entry.resolve();
        }
      }
      this._setState("connected", { transport: conn.transport });
    }

    _lost(info, opened) {
      this._conn = null;
      this._waiting = [...this._pending, ...this._waiting];
      this._pending = [];
      if (!opened && this._round + 1 < this.transports.length) {
        this._round++; // this transport could not open: try the next one at once
        this._open();
        return;
      }
      this._retry(info, opened, false);
    }

    _retry(info, opened, sameTransport) {
      if (opened) {
        this._attempt = Date.now() - this._openedAt >= STABLE_MS ? 0 : this._attempt + 1;
      } else {
        this._attempt++;
      }
      if (!sameTransport) this._round = 0;
      const full = Math.min(this.maxDelay, this.minDelay * 2 ** Math.max(this._attempt - 1, 0));
      const delay = Math.round(full / 2 + Math.random() * full / 2); // jitter: spread reconnects out
      this._setState("disconnected", { ...info, delay });
      this._timer = setTimeout(() => this._open(), delay);
    }

    // -- receiving --------------------------------------------------------------------

    _frame(text) {
      let message;
      try {
        message = JSON.parse(text);
      } catch (error) {
        this._emit("error", { message: "a frame that is not JSON", error });
        return;
      }
      if (message === null || typeof message !== "object") return;
      if (message.type === DISCONNECT && !("id" in message)) { // an event stream's last event
        this._disconnected({ transport: "sse", reason: message.message });
        return;
      }
      if (typeof message.id === "string" && typeof message.type === "string") {
        this._notification(message);
      } else if (message.type in PRESENCE_EVENTS && !("id" in message)) {
        this._emit(PRESENCE_EVENTS[message.type], { topic: message.topic, user_id: message.data.user_id, ts: message.ts });
      } else if (message.type in INBOX_EVENTS && !("id" in message)) {
        const { ids, unread } = message.data;
        this._emit(INBOX_EVENTS[message.type], { ids, unread, ts: message.ts });
        this._setUnread(unread, this._unreadVersion);
      } else if ("ack" in message) {
        const entry = this._pending.shift();
        if (entry && entry.action === "presence") {
          entry.resolve({ topic: message.topic, users: message.users, connections: message.connections });
        } else if (entry) {
          entry.resolve();
        }
      } else if ("error" in message) {
        const entry = this._pending.shift();
        if (entry) {
          if (entry.action === "subscribe") this._topics.delete(entry.topic);
          entry.reject(new Error(message.error));
        }
        this._emit("error", { message: message.error, transport: "websocket" });
      }
    }

    _notification(n) {
      if (n.type === RESET) {
        this.lastEventId = n.id;
        this._emit("reset", n);
        return;
      }
      if (this.lastEventId !== null && n.id <= this.lastEventId) { // ids sort in publish order
        this.stats.duplicates++;
        return;
      }
      this.lastEventId = n.id;
      this.stats.received++;
      // one for the user is in their inbox, unless published with "inbox": false: ask the server
      if (n.user_id !== undefined) this._refreshUnread(UNREAD_DEBOUNCE_MS);
      this._emit("notification", n);
      this._emit(`notification:${n.type}`, n);
    }

    _setState(state, info) {
      this.state = state;
      this.transport = state === "connected" ? info.transport : null;
      if (state === "connected") this._refreshUnread(0); // changes made while away are not replayed
      this._emit("state", state, info);
    }

    // -- the inbox over HTTP ----------------------------------------------------------

    /** The token for a request: a fresh one from the token function for a connection, else the last one. */
    async _currentToken(fresh) {
      if (typeof this.token !== "function") return this.token;
      if (fresh || this._lastToken === undefined) this._lastToken = await this.token();
      return this._lastToken;
    }

    /** A JSON request to the server, as the user: the token as a Bearer header, else the page's cookies.
     * Rejects with the server's {"error"} message (and error.status). */
    async _request(method, path, body) {
      const send = async (token) => {
        const headers = { Accept: "application/json" };
        if (token) headers.Authorization = `Bearer ${token}`;
        if (body !== undefined) headers["Content-Type"] = "application/json";
        return fetch(new URL(path, this.url), {
          method, headers, body: body === undefined ? undefined : JSON.stringify(body),
        });
      };
      let response = await send(await this._currentToken(false));
      if (response.status === 401 && typeof this.token === "function") {
        response = await send(await this._currentToken(true)); // the last token may have expired
      }
      if (response.status === 204) return null;
      let answer = null;
      try { answer = await response.json(); } catch (e) { /* not JSON */ }
      if (!response.ok) {
        const error = new Error((answer && answer.error) || `HTTP ${response.status}`);
        error.status = response.status;
        throw error;
      }
      return answer;
    }

    _wantsUnread() {
      const set = this._handlers.get("unread");
      return Boolean(set && set.size);
    }

    /** A count applied unless a newer one was since `version` was read (answers can cross events). */
    _setUnread(unread, version) {
      if (typeof unread !== "number" || version !== this._unreadVersion) return;
      this._unreadVersion++;
      this.unread = unread;
      this._emit("unread", unread);
    }

    /** Fetch the unread count in `delay` ms, once for however many asks meanwhile; only for listeners. */
    _refreshUnread(delay) {
      if (!this._wantsUnread() || this._unreadTimer !== null) return;
      this._unreadTimer = setTimeout(() => {
        this._unreadTimer = null;
        this.inbox.list({ limit: 1 }).catch((error) => {
          this._emit("error", { message: `unread count: ${error.message}`, status: error.status, error });
        });
      }, delay);
    }

    _emit(event, ...args) {
      const set = this._handlers.get(event);
      if (!set) return;
      for (const fn of [...set]) {
        try {
          fn.apply(this, args);
        } catch (error) { // one failing handler must not stop the others, nor the client
          setTimeout(() => { throw error; });
        }
      }
    }
  }

  /** notifier.inbox: the user's kept notifications (GET /inbox, POST /inbox/read, DELETE /inbox/<id>). */
  class Inbox {
    constructor(client) {
      this._client = client;
    }

    /** Newest first: resolves {notifications: [... each with "read"], unread, more}; `before`: an id, for the next page. */
    async list({ limit, before } = {}) {
      const client = this._client;
      const query = new URLSearchParams();
      if (limit !== undefined) query.set("limit", limit);
      if (before) query.set("before", before);
      const version = client._unreadVersion;
      const answer = await client._request("GET", `inbox${String(query) ? "?" + query : ""}`);
      client._setUnread(answer.unread, version);
      return answer;
    }

    /** Mark some ids read, or "all": resolves {unread}. */
    async markRead(ids) {
      const client = this._client;
      const body = ids === "all" ? { all: true } : { ids: typeof ids === "string" ? [ids] : [...ids] };
      const version = client._unreadVersion;
      const answer = await client._request("POST", "inbox/read", body);
      client._setUnread(answer.unread, version);
      return answer;
    }

    /** Delete one from the inbox; resolves once it is gone. */
    async remove(id) {
      await this._client._request("DELETE", `inbox/${encodeURIComponent(id)}`);
      this._client._refreshUnread(0); // the answer has no count
    }
  }

  function sameSet(a, b) {
    return a.size === b.size && [...a].every((x) => b.has(x));
  }

  /** The text/event-stream format, incrementally: calls onData(data) for each event. */
  class SseParser {
    constructor(onData) {
      this.onData = onData;
      this.buffer = "";
      this.data = [];
    }

    push(text) {
      let buffer = this.buffer + text;
      const held = buffer.endsWith("\r") ? "\r" : ""; // maybe the first half of a CRLF
      if (held) buffer = buffer.slice(0, -1);
      const lines = buffer.split(/\r\n|\r|\n/);
      this.buffer = lines.pop() + held;
      for (const line of lines) this.line(line);
    }

    line(line) {
      if (line === "") {
        if (this.data.length) this.onData(this.data.join("\n"));
        this.data = [];
        return;
      }
      if (line.startsWith(":")) return; // keepalive comment
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      // id and event are in the JSON data too; retry is ours to decide (backoff)
      if (field === "data") this.data.push(value);
    }
  }

  Notifier.SseParser = SseParser;
  if (typeof module === "object" && module.exports) module.exports = Notifier;
  else global.Notifier = Notifier;
})(typeof window !== "undefined" ? window : globalThis);
