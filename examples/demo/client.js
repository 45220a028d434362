// sessionfanout browser client: a dependency-free ES module, typed with JSDoc
// (checked by `tsc --checkJs`; no build step for users).
//
//   import { SessionFanoutClient } from "./client.js";
//   const client = new SessionFanoutClient({ transport: "websocket" });
//   client.subscribe("session-1", {
//     onEvent: (frame) => render(frame),          // in seq order, each once
//     onReload: (info) => reloadFromServer(info),  // events were lost: resumed false
//   });
//   client.connect();
//
// It reconnects with exponential backoff and jitter, and resubscribes every
// session with lastSeq/epoch, so a dropped connection costs no event; a
// session it has no history of joins late ("from": "start"). On "sse" each
// session is one EventSource, which reconnects by itself with Last-Event-ID;
// permission answers then go as POST requests naming the stream's connection.
"use strict";

/**
 * A frame of the protocol (PROTOCOL.md).
 * @typedef {{type: string, sessionId?: string, seq?: number, firstSeq?: number,
 *   epoch?: string, resumed?: boolean, connectionId?: string, [field: string]: any}} Frame
 */

/**
 * What a session's subscriber is told.
 * @typedef {object} SessionHandlers
 * @property {(frame: Frame) => void} [onEvent] every session event, in seq order, once
 * @property {(info: {sessionId: string, from: number, to: number}) => void} [onReload]
 *   events from..to can no longer be replayed (resumed: false): reload by other means
 * @property {(frame: Frame) => void} [onSubscribed] the server's subscribed reply
 * @property {(members: PresenceMember[]) => void} [onPresence] who is subscribed, on
 *   every process, each time that changes (given, the client asks for presence)
 */

/**
 * A subscriber of a session, as presence tells it.
 * @typedef {{connectionId: string, info?: {[field: string]: any}}} PresenceMember
 */

/**
 * @typedef {object} ClientOptions
 * @property {"websocket" | "sse"} [transport] default "websocket"
 * @property {string} [base] the server's origin, default this page's
 * @property {(status: "connecting" | "connected" | "reconnecting" | "closed") => void} [onStatus]
 * @property {(frame: Frame) => void} [onGlobal] global events (config_changed)
 * @property {(frame: Frame) => void} [onClientError] a frame of ours was refused
 * @property {(connectionId: string) => void} [onConnected]
 * @property {number} [initialBackoffMs] default 250
 * @property {number} [maxBackoffMs] default 5000
 */

/**
 * @typedef {object} Session
 * @property {string} id
 * @property {number | null} lastSeq the last seq handed to onEvent
 * @property {string | null} epoch
 * @property {SessionHandlers} handlers
 * @property {EventSource | null} source its stream, on "sse"
 * @property {string | null} connectionId its stream's connection, on "sse"
 * @property {Map<string, PresenceMember>} members who is subscribed, by connection id
 */

const EVENT_TYPES = [
  "connected", "subscribed", "unsubscribed", "client_error", "config_changed",
  "text_delta", "text_complete", "tool_start", "tool_result", "complete", "error",
  "permission_request", "permission_timeout", "presence",
];

export class SessionFanoutClient {
  /** @param {ClientOptions} [options] */
  constructor(options = {}) {
    this.transport = options.transport || "websocket";
    this.base = options.base || `${location.protocol}//${location.host}`;
    this.options = options;
    /** @type {Map<string, Session>} */
    this.sessions = new Map();
    /** @type {WebSocket | null} */
    this.ws = null;
    /** @type {string | null} */
    this.connectionId = null;
    this.backoff = options.initialBackoffMs || 250;
    this.closed = false;
  }

  /** Open the connection (WebSocket) or every session's stream (SSE). */
  connect() {
    this.closed = false;
    if (this.transport === "sse") {
      this.status("connected");
      for (const session of this.sessions.values()) this.openStream(session);
      return;
    }
    this.status("connecting");
    const ws = new WebSocket(this.base.replace(/^http/, "ws") + "/ws");
    this.ws = ws;
    ws.onopen = () => {
      this.backoff = this.options.initialBackoffMs || 250;
      this.status("connected");
      for (const session of this.sessions.values()) this.sendSubscribe(session);
    };
    ws.onmessage = (message) => this.onFrame(JSON.parse(message.data), null);
    ws.onclose = () => {
      if (this.ws !== ws || this.closed) return;
      this.status("reconnecting");
      const delay = this.backoff * (0.5 + Math.random()); // jitter: no thundering herd
      this.backoff = Math.min(this.backoff * 2, this.options.maxBackoffMs || 5000);
      setTimeout(() => this.connect(), delay);
    };
  }

  /** Close everything, for good. */
  close() {
    this.closed = true;
    if (this.ws) this.ws.close();
    for (const session of this.sessions.values()) session.source?.close();
    this.status("closed");
  }

  /**
   * Follow a session; a session already followed keeps its place.
   * @param {string} sessionId
   * @param {SessionHandlers} handlers
   * @returns {Session}
   */
  subscribe(sessionId, handlers) {
    let session = this.sessions.get(sessionId);
    if (session) {
      session.handlers = handlers;
      return session;
    }
    session = {
      id: sessionId, lastSeq: null, epoch: null, handlers, source: null, connectionId: null,
      members: new Map(),
    };
    this.sessions.set(sessionId, session);
    if (this.transport === "sse") this.openStream(session);
    else this.sendSubscribe(session);
    return session;
  }

  /** @param {string} sessionId */
  unsubscribe(sessionId) {
    const session = this.sessions.get(sessionId);
    if (!session) return;
    this.sessions.delete(sessionId);
    if (session.source) session.source.close();
    else this.send({ type: "unsubscribe", sessionId });
  }

  /**
   * Answer a permission request; true when it was sent (on SSE: when it decided).
   * @param {string} sessionId
   * @param {string} requestId
   * @param {boolean} allowed
   * @param {boolean} [alwaysAllow]
   * @returns {Promise<boolean>}
   */
  async answerPermission(sessionId, requestId, allowed, alwaysAllow = false) {
    if (this.transport === "websocket") {
      return this.send({ type: "permission_response", requestId, allowed, alwaysAllow });
    }
    const session = this.sessions.get(sessionId);
    const path = `/api/sessions/${encodeURIComponent(sessionId)}/permissions/${encodeURIComponent(requestId)}`;
    const response = await fetch(this.base + path, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ connectionId: session?.connectionId, allowed, alwaysAllow }),
    });
    return response.ok;
  }

  /**
   * Stop the session's running agent, on whichever process runs it (the
   * session then gets error "aborted" and complete); on SSE, by a POST.
   * @param {string} sessionId
   * @returns {Promise<boolean>} whether it was asked
   */
  async abort(sessionId) {
    if (this.transport === "websocket") return this.send({ type: "abort", sessionId });
    const path = `/api/sessions/${encodeURIComponent(sessionId)}/abort`;
    const response = await fetch(this.base + path, { method: "POST" });
    return response.ok;
  }

  // -- inside ------------------------------------------------------------------

  /** @param {"connecting" | "connected" | "reconnecting" | "closed"} status */
  status(status) {
    this.options.onStatus?.(status);
  }

  /**
   * @param {Frame} frame
   * @returns {boolean}
   */
  send(frame) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  /** @param {Session} session */
  sendSubscribe(session) {
    /** @type {Frame} */
    const frame = { type: "subscribe", sessionId: session.id };
    if (session.lastSeq !== null && session.epoch) {
      frame.lastSeq = session.lastSeq;
      frame.epoch = session.epoch;
    } else {
      frame.from = "start"; // a late joiner: everything the server still holds
    }
    if (session.handlers.onPresence) frame.presence = true;
    this.send(frame);
  }

  /** @param {Session} session */
  openStream(session) {
    if (session.source) session.source.close();
    const path = `${this.base}/api/sessions/${encodeURIComponent(session.id)}/events`;
    const query = session.lastSeq !== null && session.epoch
      ? `?lastEventId=${encodeURIComponent(`${session.epoch}:${session.lastSeq}`)}` : "?from=start";
    const presence = session.handlers.onPresence ? "&presence=true" : "";
    const source = new EventSource(path + query + presence);
    session.source = source;
    source.onopen = () => this.status("connected");
    source.onerror = () => {
      if (!this.closed) this.status("reconnecting"); // EventSource retries by itself
    };
    for (const type of EVENT_TYPES) {
      source.addEventListener(type, (event) => {
        // EventSource fires "error" of its own (no data) when the stream breaks;
        // the protocol's error frames come under the same name, with data.
        const data = /** @type {MessageEvent} */ (event).data;
        if (data === undefined) return;
        this.onFrame(JSON.parse(data), session);
      });
    }
  }

  /**
   * @param {Frame} frame
   * @param {Session | null} stream the session whose stream it came on (SSE)
   */
  onFrame(frame, stream) {
    switch (frame.type) {
      case "connected":
        if (stream) stream.connectionId = frame.connectionId || null;
        else this.connectionId = frame.connectionId || null;
        this.options.onConnected?.(frame.connectionId || "");
        return;
      case "config_changed":
        // On SSE every stream carries global events: take them from one only.
        if (!stream || stream === this.sessions.values().next().value) {
          this.options.onGlobal?.(frame);
        }
        return;
      case "client_error":
        this.options.onClientError?.(frame);
        return;
    }
    const session = frame.sessionId === undefined ? undefined : this.sessions.get(frame.sessionId);
    if (!session) return;
    if (frame.type === "subscribed") {
      // What comes next: the replay from firstSeq, or live events after seq.
      const next = frame.firstSeq !== undefined ? frame.firstSeq : (frame.seq || 0) + 1;
      const newEpoch = session.epoch !== null && session.epoch !== frame.epoch;
      const behind = session.lastSeq !== null && session.lastSeq < next - 1;
      if (!frame.resumed && session.epoch !== null && (newEpoch || behind)) {
        // What this client has may not be what the server has now: reload.
        const from = newEpoch ? 1 : (session.lastSeq || 0) + 1;
        session.handlers.onReload?.({ sessionId: session.id, from, to: next - 1 });
      }
      if (!frame.resumed) session.lastSeq = next - 1;
      session.epoch = frame.epoch || null;
      session.handlers.onSubscribed?.(frame);
      return;
    }
    if (frame.type === "unsubscribed") return;
    if (frame.type === "presence") {
      this.onPresence(session, frame);
      return;
    }
    if (typeof frame.seq === "number") {
      if (session.lastSeq !== null && frame.seq <= session.lastSeq) return; // had it
      session.lastSeq = frame.seq;
    }
    session.handlers.onEvent?.(frame);
  }

  /**
   * A snapshot replaces the members; a diff applies to them.
   * @param {Session} session
   * @param {Frame} frame
   */
  onPresence(session, frame) {
    /** @type {(members: PresenceMember[] | undefined) => PresenceMember[]} */
    const list = (members) => members || [];
    if (frame.members) session.members = new Map();
    for (const member of list(frame.left)) session.members.delete(member.connectionId);
    for (const member of list(frame.members).concat(list(frame.joined))) {
      session.members.set(member.connectionId, member);
    }
    session.handlers.onPresence?.([...session.members.values()]);
  }
}
