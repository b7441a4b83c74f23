// Types for notifier.js, the browser client served at /notifier.js. The script defines the
// global `Notifier` (or module.exports under CommonJS).

declare namespace Notifier {
  type Transport = "websocket" | "sse";
  /** idle: before connect(); disconnected: waiting `info.delay` ms to reconnect; closed: after close(), or
   * after the server disconnected the user (`info.disconnected`). */
  type State = "idle" | "connecting" | "connected" | "disconnected" | "closed";

  /** A notification as delivered (see the server's API). `id`s sort as strings in publish order. */
  interface Notification {
    id: string;
    type: string;
    title: string;
    message: string;
    /** ISO 8601 UTC with milliseconds */
    ts: string;
    user_id?: string;
    topic?: string;
    data?: Record<string, unknown>;
  }

  /** A subscriber token, or a function that fetches a fresh one (called before every connection). */
  type Token = string | null | (() => string | null | Promise<string | null>);

  interface Options {
    /** Where notifier is mounted, e.g. "/notifier" or "https://push.example.com"; default: where notifier.js
     *  was loaded from by a <script> tag (else the page's origin). */
    url?: string;
    token?: Token;
    /** Topics to subscribe to from the start. */
    topics?: string[];
    /** Transports to try, in order, in each round of attempts. Default ["websocket", "sse"]. */
    transports?: Transport[];
    /** Backoff: the first retry waits minDelay/2..minDelay ms, doubling up to maxDelay. Defaults 500 and 30000. */
    minDelay?: number;
    maxDelay?: number;
    /** Resume after this id (e.g. one kept in sessionStorage). */
    lastEventId?: string | null;
  }

  interface StateInfo {
    transport?: Transport;
    /** disconnected: ms until the next attempt */
    delay?: number;
    /** WebSocket close code (1001 shutdown, 1008 policy/expired token, 1012, 1013 too slow, 1006 dropped,
     * 4001 disconnected by the server) */
    code?: number;
    /** closed: the server disconnected the user (it does not reconnect) */
    disconnected?: boolean;
    reason?: string;
    /** HTTP status of a refused SSE request */
    status?: number;
    error?: unknown;
  }

  interface PresenceEvent {
    topic: string;
    user_id: string;
    ts: string;
  }

  interface Presence {
    topic: string;
    /** sorted user ids */
    users: string[];
    /** identified connections, and anonymous ones on this topic */
    connections: number;
  }

  interface ErrorInfo {
    message: string;
    status?: number;
    transport?: Transport;
    error?: unknown;
  }

  /** A notification kept in the user's inbox (NOTIFIER_INBOX_URL). */
  interface InboxNotification extends Notification {
    read: boolean;
  }

  /** GET /inbox: newest first. */
  interface InboxPage {
    notifications: InboxNotification[];
    unread: number;
    /** older ones follow: list({before: the last id}) */
    more: boolean;
  }

  /** The user's inbox changed (from any tab or device): "read" or "deleted". */
  interface InboxChange {
    ids: string[] | "all";
    /** the user's unread count after the change */
    unread: number;
    ts: string;
  }

  /** A refused inbox request: `message` is the server's {"error"}; status 401 no user, 404 inbox off or not
   * in this user's inbox, 503 the inbox database is down. */
  interface RequestError extends Error {
    status?: number;
  }

  /** The user's kept notifications, as the client's token (Authorization: Bearer) or else the page's cookies
   * identify them. Rejects with a RequestError. */
  interface Inbox {
    list(options?: { limit?: number; before?: string }): Promise<InboxPage>;
    markRead(ids: string[] | string | "all"): Promise<{ unread: number }>;
    remove(id: string): Promise<void>;
  }
}

declare class Notifier {
  constructor(options?: Notifier.Options);
  readonly url: string;
  readonly state: Notifier.State;
  /** The transport of the open connection, null while not connected. */
  readonly transport: Notifier.Transport | null;
  /** The id of the last notification seen: where the next connection resumes. */
  readonly lastEventId: string | null;
  readonly topics: string[];
  readonly stats: { received: number; duplicates: number; connects: number };
  /** GET /inbox, POST /inbox/read, DELETE /inbox/<id> for this client's user. */
  readonly inbox: Notifier.Inbox;
  /** The user's unread count as last known (null before), kept fresh while someone listens to "unread". */
  readonly unread: number | null;

  connect(): this;
  close(info?: Notifier.StateInfo): void;
  /** Resolves when the server has the subscription; rejects if it refuses it (e.g. a private topic). */
  subscribe(topic: string): Promise<void>;
  unsubscribe(topic: string): Promise<void>;
  /** Who is on a subscribed topic with presence events now (a WebSocket action; rejects on SSE). */
  presence(topic: string): Promise<Notifier.Presence>;

  /** Every notification. */
  on(event: "notification", fn: (n: Notifier.Notification) => void): this;
  /** Notifications of one type, e.g. "notification:order.created". */
  on(event: `notification:${string}`, fn: (n: Notifier.Notification) => void): this;
  /** The resume point is no longer in history: refetch state (live notifications follow). */
  on(event: "reset", fn: (n: Notifier.Notification) => void): this;
  on(event: "state", fn: (state: Notifier.State, info: Notifier.StateInfo) => void): this;
  on(event: "error", fn: (error: Notifier.ErrorInfo) => void): this;
  /** A user's first connection to a topic with presence events opened (NOTIFIER_PRESENCE_EVENTS). */
  on(event: "join", fn: (e: Notifier.PresenceEvent) => void): this;
  /** A user's last connection to that topic closed, or expired after a crash. */
  on(event: "leave", fn: (e: Notifier.PresenceEvent) => void): this;
  /** The server disconnected this user (a logout, a revoked permission): the client closes and does not reconnect. */
  on(event: "disconnect", fn: (info: Notifier.StateInfo) => void): this;
  /** Some of the user's inbox was marked read, here or in another tab or device. */
  on(event: "read", fn: (change: Notifier.InboxChange) => void): this;
  /** One was deleted from the user's inbox, here or elsewhere. */
  on(event: "deleted", fn: (change: Notifier.InboxChange) => void): this;
  /** The user's unread count: on every (re)connect, after changes and new notifications for the user.
   * Requests are made only while something listens. */
  on(event: "unread", fn: (unread: number) => void): this;
  off(event: string, fn: (...args: any[]) => void): this;
}
