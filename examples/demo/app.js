// sessionfanout demo page: plain JS, no build step. The protocol is in
// client.js (the reusable browser client): connecting, reconnecting,
// resuming with lastSeq/epoch or Last-Event-ID, late joining, answering
// permissions, on WebSocket or Server-Sent Events (the switch in the top
// bar). This file only renders.
import { SessionFanoutClient } from "./client.js";

const $ = (id) => document.getElementById(id);
const MAX_SESSIONS = 20;

const TRANSPORTS = ["websocket", "sse"];
const STATUS = {
  connecting: "Connecting…", connected: "Connected", reconnecting: "Reconnecting…", closed: "Closed",
};

const state = {
  transport: transportOf(new URLSearchParams(location.search).get("transport"))
    || transportOf(localStorage.getItem("sf.transport")) || "websocket",
  current: null,
  views: new Map(), // sessionId -> view
  frames: 0,
};
const client = new SessionFanoutClient({
  transport: state.transport,
  onStatus: (status) => setStatus(status, STATUS[status] + (state.transport === "sse" ? " (SSE)" : "")),
  onConnected: (id) => { $("conn-id").textContent = `${state.transport} connection ${id}`; },
  onGlobal: (frame) => { if (frame.changeType === "theme") toggleTheme(); },
  onClientError: (frame) => notice(`Server refused a frame: ${frame.code}: ${frame.message}`),
});
state.client = client;
window.sessionfanoutDemo = state; // handy in the console

function transportOf(name) {
  return TRANSPORTS.includes(name) ? name : null;
}

function saveSessions() {
  localStorage.setItem("sf.sessions", JSON.stringify([...state.views.keys()]));
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// -- views -------------------------------------------------------------------

function viewOf(sessionId) {
  let view = state.views.get(sessionId);
  if (!view) {
    view = {
      id: sessionId, running: false, session: null, watching: 0,
      root: el("div", "view"), turns: new Map(), tools: new Map(), permissions: new Map(),
    };
    view.root.style.display = "contents";
    state.views.set(sessionId, view);
    while (state.views.size > MAX_SESSIONS) {
      const oldest = state.views.keys().next().value;
      client.unsubscribe(oldest);
      state.views.delete(oldest);
    }
    saveSessions();
    view.session = client.subscribe(sessionId, {
      onEvent: (frame) => onEvent(view, frame),
      onSubscribed: () => renderMeta(),
      onPresence: (members) => {
        view.watching = members.length;
        renderMeta();
      },
      onReload: (gap) => {
        if (view.id === state.current) {
          notice(`Events ${gap.from}–${gap.to} are no longer available; showing new events from here.`);
        }
        append(view, el("div", "event-line", "— history gap: reloaded —"));
      },
    });
  }
  return view;
}

function select(sessionId) {
  const view = viewOf(sessionId);
  state.current = sessionId;
  location.hash = encodeURIComponent(sessionId);
  const transcript = $("transcript");
  transcript.replaceChildren(view.root);
  if (!view.root.childElementCount) transcript.append(emptyNote());
  $("session-title").textContent = sessionId;
  hideNotice();
  renderSidebar();
  renderMeta();
  $("message").focus();
}

function emptyNote() {
  return el("div", "empty", "Nothing here yet. Send a message and watch it stream back.");
}

function renderSidebar() {
  const list = $("sessions");
  list.replaceChildren();
  for (const view of [...state.views.values()].reverse()) {
    const item = el("li", view.id === state.current ? "active" : "");
    if (view.running) item.classList.add("running");
    item.append(el("span", "", view.id), el("span", "dot"));
    item.onclick = () => select(view.id);
    list.append(item);
  }
}

function renderMeta() {
  const view = state.views.get(state.current);
  $("abort").disabled = !view || !view.running;
  const session = view && view.session;
  $("session-meta").textContent = session && session.epoch
    ? `seq ${session.lastSeq ?? 0} · epoch ${session.epoch}` : "";
  $("watching").textContent = view && view.watching ? `${view.watching} watching` : "";
  $("counters").textContent = `${state.frames} frames received`;
}

function append(view, node) {
  const transcript = $("transcript");
  const empty = transcript.querySelector(".empty");
  if (empty && view.id === state.current) empty.remove();
  if (view.id === state.current && !transcript.contains(view.root)) transcript.append(view.root);
  view.root.append(node);
  if (view.id === state.current) transcript.scrollTop = transcript.scrollHeight;
  return node;
}

function setRunning(view, running) {
  view.running = running;
  renderSidebar();
  renderMeta();
}

function notice(text) {
  const box = $("notice");
  box.textContent = text;
  box.hidden = false;
}

function hideNotice() {
  $("notice").hidden = true;
}

// -- events ------------------------------------------------------------------

const handlers = {
  text_delta(view, f) {
    let bubble = view.turns.get(f.turnId || "");
    if (!bubble || !bubble.classList.contains("streaming")) {
      bubble = append(view, el("div", "msg agent streaming"));
      view.turns.set(f.turnId || "", bubble);
    }
    bubble.append(f.delta);
    if (!view.running) setRunning(view, true);
  },
  text_complete(view, f) {
    let bubble = view.turns.get(f.turnId || "");
    if (!bubble || !bubble.classList.contains("streaming")) {
      bubble = append(view, el("div", "msg agent"));
    }
    bubble.textContent = f.text;
    bubble.classList.remove("streaming");
    bubble.dataset.complete = "true";
    view.turns.delete(f.turnId || "");
  },
  tool_start(view, f) {
    const card = el("div", "card tool");
    const title = el("div", "title");
    title.append(el("span", "icon", "⚙"), f.toolDisplayName || f.toolName);
    const badge = el("span", "badge running", "running");
    title.append(badge);
    card.append(title);
    if (f.toolIntent) card.append(el("div", "sub", f.toolIntent));
    card.append(el("pre", "", JSON.stringify(f.toolInput, null, 2)));
    card.badge = badge;
    view.tools.set(f.toolUseId, append(view, card));
  },
  tool_result(view, f) {
    const card = view.tools.get(f.toolUseId) || append(view, el("div", "card tool"));
    const badge = card.badge || card.appendChild(el("span", "badge"));
    badge.className = `badge ${f.isError ? "err" : "ok"}`;
    badge.textContent = f.isError ? `failed: ${f.result}` : `done: ${f.result}`;
    card.dataset.result = f.result;
  },
  permission_request(view, f) {
    const request = f.request;
    const card = el("div", "card permission");
    card.dataset.testid = "permission";
    const title = el("div", "title");
    title.append(el("span", "icon warn", "!"), "Permission needed");
    card.append(title);
    card.append(el("div", "sub", request.description));
    card.append(el("pre", "", `${request.toolName}: ${request.command}`));
    const actions = el("div", "actions");
    const allow = el("button", "allow", "Allow");
    const deny = el("button", "deny", "Deny");
    allow.dataset.testid = "allow";
    deny.dataset.testid = "deny";
    const answer = async (allowed) => {
      const ok = await client.answerPermission(view.id, request.requestId, allowed);
      if (ok) decide(card, allowed ? "✓ You allowed it" : "✗ You denied it");
    };
    allow.onclick = () => answer(true);
    deny.onclick = () => answer(false);
    actions.append(allow, deny);
    card.append(actions);
    view.permissions.set(request.requestId, append(view, card));
  },
  permission_timeout(view, f) {
    const card = view.permissions.get(f.requestId);
    if (card) decide(card, "⏱ Timed out: denied");
  },
  complete(view) {
    for (const bubble of view.turns.values()) bubble.classList.remove("streaming");
    view.turns.clear();
    for (const card of view.permissions.values()) {
      if (!card.classList.contains("decided")) decide(card, "Answered elsewhere");
    }
    append(view, el("div", "event-line", "✓ complete"));
    setRunning(view, false);
  },
  error(view, f) {
    append(view, el("div", "event-line error", `⚠ ${f.error}`));
  },
};

function decide(card, text) {
  if (card.classList.contains("decided")) return;
  card.classList.add("decided");
  card.append(el("div", "sub", text));
}

function onEvent(view, frame) {
  state.frames += 1;
  const handler = handlers[frame.type];
  if (!handler) return;
  handler(view, frame);
  renderMeta();
}

function setStatus(kind, text) {
  const status = $("status");
  status.className = `status status-${kind}`;
  status.textContent = text;
}

// -- actions -----------------------------------------------------------------

async function post(path, body) {
  const response = await fetch(path, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  if (!response.ok) {
    const detail = await response.json().catch(() => ({ error: response.statusText }));
    notice(detail.error || `HTTP ${response.status}`);
  }
  return response.ok;
}

$("composer").onsubmit = async (event) => {
  event.preventDefault();
  const text = $("message").value.trim();
  if (!text) return;
  if (!state.current) select(newSessionId());
  const view = viewOf(state.current);
  hideNotice();
  const ok = await post(`/api/sessions/${encodeURIComponent(view.id)}/messages`, {
    message: text,
    deltas: Number($("deltas").value) || 20,
    deltaIntervalMs: Number($("interval").value) || 0,
    tool: $("tool").checked,
    permission: $("permission").checked,
  });
  if (ok) {
    append(view, el("div", "msg user", text));
    $("message").value = "";
    setRunning(view, true);
  }
};

$("message").onkeydown = (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
};

$("abort").onclick = () => {
  if (state.current) client.abort(state.current); // the protocol's abort frame on WebSocket
};

$("theme").onclick = () => post("/api/config/changed", { changeType: "theme" });

function toggleTheme() {
  const root = document.documentElement;
  const next = root.dataset.theme === "dark" ? "light" : "dark";
  root.dataset.theme = next;
  localStorage.setItem("sf.theme", next);
}

function newSessionId() {
  const words = ["amber", "brisk", "cedar", "delta", "ember", "fjord", "grove", "harbor", "indigo", "juniper"];
  const word = words[Math.floor(Math.random() * words.length)];
  return `${word}-${Math.random().toString(36).slice(2, 6)}`;
}

$("new-session").onclick = () => select(newSessionId());
$("join-form").onsubmit = (event) => {
  event.preventDefault();
  const id = $("join-id").value.trim();
  if (id) select(id);
  $("join-id").value = "";
};

$("transport").value = state.transport;
$("transport").onchange = () => {
  localStorage.setItem("sf.transport", $("transport").value);
  const url = new URL(location.href);
  url.searchParams.set("transport", $("transport").value);
  location.href = url.toString();
};

// -- start -------------------------------------------------------------------

document.documentElement.dataset.theme = localStorage.getItem("sf.theme") || "light";
client.connect();
for (const id of JSON.parse(localStorage.getItem("sf.sessions") || "[]")) viewOf(id);
const wanted = decodeURIComponent(location.hash.slice(1));
if (wanted) select(wanted);
else if (state.views.size) select([...state.views.keys()].pop());
renderSidebar();
