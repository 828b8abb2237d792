/* Parley web chat: one script tag, no framework on the host page.
 *
 *   <script src="https://parley.example/chat/widget.js"
 *           data-session-url="/your-site/parley-session"   (POST: your backend mints a session with its API key)
 *           data-title="Support" data-color="#3451b2" async></script>
 *
 * The session URL answers {token, ws_url, events_url, messages_url} (Parley's POST /api/v1/chat/sessions,
 * called by your backend with an X-API-Key of scope chat_sessions). The widget keeps the session in
 * localStorage, so a reload or a reconnect shows the history; it talks over a websocket, and over
 * server-sent events plus POST where websockets are blocked. Messages are sent with an id of their own,
 * so one sent again after a dropped connection is taken once.
 */
(function () {
  "use strict";
  var script = document.currentScript || document.querySelector("script[data-session-url]");
  if (!script || window.__parleyChat) return;
  window.__parleyChat = true;
  var origin = new URL(script.src, location.href).origin;
  var sessionUrl = script.getAttribute("data-session-url") || origin + "/chat/demo/session";
  var title = script.getAttribute("data-title") || "Chat with us";
  var color = script.getAttribute("data-color") || "#3451b2";
  var transport = script.getAttribute("data-transport") || "auto"; // auto | ws | sse
  var storeKey = "parley-chat:" + origin + ":" + sessionUrl;

  var host = document.createElement("div");
  host.setAttribute("data-parley-chat", "");
  var root = host.attachShadow ? host.attachShadow({ mode: "open" }) : host;
  root.innerHTML =
    "<style>" +
    ":host{all:initial}*{box-sizing:border-box;font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif}" +
    ".launcher{position:fixed;right:20px;bottom:20px;border:0;border-radius:28px;padding:14px 20px;color:#fff;background:" + color + ";font-size:15px;cursor:pointer;box-shadow:0 4px 14px rgba(0,0,0,.25);z-index:2147483646}" +
    ".panel{position:fixed;right:20px;bottom:80px;width:340px;max-width:calc(100vw - 40px);height:480px;max-height:calc(100vh - 100px);background:#fff;border-radius:12px;box-shadow:0 8px 30px rgba(0,0,0,.25);display:flex;flex-direction:column;overflow:hidden;z-index:2147483647}" +
    ".panel[hidden]{display:none}" +
    "header{background:" + color + ";color:#fff;padding:12px 14px;font-weight:600;font-size:15px;display:flex;justify-content:space-between;align-items:center}" +
    "header small{font-weight:400;opacity:.85;font-size:12px}" +
    ".log{flex:1;overflow-y:auto;padding:12px;display:flex;flex-direction:column;gap:8px;background:#f6f7f9}" +
    ".msg{max-width:80%;padding:8px 11px;border-radius:14px;font-size:14px;line-height:1.35;white-space:pre-wrap;word-wrap:break-word}" +
    ".customer{align-self:flex-end;background:" + color + ";color:#fff;border-bottom-right-radius:4px}" +
    ".agent,.human{align-self:flex-start;background:#fff;color:#1b1b1f;border:1px solid #e3e4e8;border-bottom-left-radius:4px}" +
    ".who{display:block;font-size:11px;color:#6b6f76;margin-bottom:2px}" +
    ".note{align-self:center;font-size:12px;color:#6b6f76}" +
    ".typing{align-self:flex-start;font-size:12px;color:#6b6f76;padding:2px 4px}" +
    "form{display:flex;border-top:1px solid #e3e4e8}" +
    "textarea{flex:1;border:0;resize:none;padding:10px;font-size:14px;height:46px;outline:none}" +
    "button.send{border:0;background:none;color:" + color + ";font-weight:600;padding:0 14px;cursor:pointer;font-size:14px}" +
    "</style>" +
    '<button class="launcher" type="button" aria-expanded="false">' + esc(title) + "</button>" +
    '<section class="panel" role="dialog" aria-label="' + esc(title) + '" hidden>' +
    "<header><span>" + esc(title) + '</span><small class="state">connecting…</small></header>' +
    '<div class="log" role="log" aria-live="polite" aria-label="Conversation"></div>' +
    '<div class="typing" hidden>Assistant is typing…</div>' +
    '<form><textarea aria-label="Your message" placeholder="Type a message…"></textarea>' +
    '<button class="send" type="submit">Send</button></form></section>';
  (document.body || document.documentElement).appendChild(host);

  var launcher = root.querySelector(".launcher");
  var panel = root.querySelector(".panel");
  var log = root.querySelector(".log");
  var typing = root.querySelector(".typing");
  var state = root.querySelector(".state");
  var form = root.querySelector("form");
  var input = root.querySelector("textarea");
  var shown = {};
  var outbox = [];
  var session = null;
  var socket = null;
  var events = null;
  var retry = 500;
  var live = false;

  function esc(text) {
    return String(text).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  }
  function newId() {
    return (crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) + Math.random()).replace(/[^A-Za-z0-9_-]/g, "");
  }
  function scroll() {
    log.scrollTop = log.scrollHeight;
  }
  function show(m) {
    if (!m.id || shown[m.id]) return;
    shown[m.id] = true;
    var div = document.createElement("div");
    div.className = "msg " + m.role;
    div.setAttribute("data-id", m.id);
    if (m.role === "human") {
      var who = document.createElement("span");
      who.className = "who";
      who.textContent = m.author || "Agent";
      div.appendChild(who);
    }
    div.appendChild(document.createTextNode(m.text || ""));
    log.appendChild(div);
    scroll();
  }
  function note(text) {
    var div = document.createElement("div");
    div.className = "note";
    div.textContent = text;
    log.appendChild(div);
    scroll();
  }
  function handle(frame) {
    switch (frame.type) {
      case "history":
        (frame.messages || []).forEach(show);
        if (frame.status === "waiting_for_agent") note("Waiting for an agent…");
        break;
      case "message":
        show(frame);
        if (frame.role !== "customer") typing.hidden = true;
        break;
      case "typing":
        typing.hidden = !frame.on;
        scroll();
        break;
      case "status":
        if (frame.status === "waiting_for_agent") note("Connecting you with an agent…");
        if (frame.status === "with_agent") note((frame.agent || "An agent") + " joined the chat");
        if (frame.status === "closed") note("This conversation was closed");
        break;
      case "ack":
        outbox = outbox.filter(function (m) { return m.id !== frame.id; });
        break;
      case "error":
        note("Not sent: " + frame.error);
        break;
    }
  }
  function saved() {
    try {
      var s = JSON.parse(localStorage.getItem(storeKey) || "null");
      if (s && Date.parse(s.expires_at) > Date.now() + 60000) return s;
    } catch (e) {}
    return null;
  }
  function getSession() {
    session = session || saved();
    if (session) return Promise.resolve(session);
    return fetch(sessionUrl, { method: "POST", headers: { "Content-Type": "application/json" }, body: "{}", credentials: "include" })
      .then(function (r) {
        if (!r.ok) throw new Error("session " + r.status);
        return r.json();
      })
      .then(function (s) {
        session = s;
        try { localStorage.setItem(storeKey, JSON.stringify(s)); } catch (e) {}
        return s;
      });
  }
  function connected() {
    live = true;
    retry = 500;
    state.textContent = "online";
    outbox.forEach(transmit);
  }
  function lost() {
    live = false;
    state.textContent = "reconnecting…";
    setTimeout(connect, retry);
    retry = Math.min(retry * 2, 10000);
  }
  function connect() {
    getSession().then(function (s) {
      if (transport !== "sse" && "WebSocket" in window) {
        var url = new URL(s.ws_url, origin);
        url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
        url.searchParams.set("token", s.token);
        var opened = false;
        socket = new WebSocket(url.toString());
        socket.onopen = function () { opened = true; connected(); };
        socket.onmessage = function (e) { handle(JSON.parse(e.data)); };
        socket.onclose = function (e) {
          socket = null;
          if (e.code === 4401) { session = null; localStorage.removeItem(storeKey); }
          if (!opened && transport === "auto") { transport = "sse"; }
          lost();
        };
      } else {
        var eurl = new URL(s.events_url, origin);
        eurl.searchParams.set("token", s.token);
        events = new EventSource(eurl.toString());
        events.onopen = connected;
        ["history", "message", "typing", "status"].forEach(function (kind) {
          events.addEventListener(kind, function (e) { handle(JSON.parse(e.data)); });
        });
        events.onerror = function () { events.close(); events = null; lost(); };
      }
    }).catch(function () { lost(); });
  }
  function transmit(m) {
    if (!live) return;
    if (socket) {
      socket.send(JSON.stringify({ type: "message", id: m.id, text: m.text }));
    } else {
      fetch(new URL(session.messages_url, origin).toString(), {
        method: "POST",
        headers: { "Content-Type": "application/json", Authorization: "Bearer " + session.token },
        body: JSON.stringify({ id: m.id, text: m.text }),
      }).then(function (r) { return r.json(); }).then(function (ack) { handle({ type: "ack", id: ack.id }); });
    }
  }
  launcher.addEventListener("click", function () {
    panel.hidden = !panel.hidden;
    launcher.setAttribute("aria-expanded", String(!panel.hidden));
    if (!panel.hidden) input.focus();
  });
  form.addEventListener("submit", function (e) {
    e.preventDefault();
    var text = input.value.trim();
    if (!text) return;
    input.value = "";
    var m = { id: newId(), text: text };
    outbox.push(m);
    show({ id: m.id, role: "customer", text: text });
    transmit(m);
  });
  input.addEventListener("keydown", function (e) {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); form.requestSubmit ? form.requestSubmit() : form.dispatchEvent(new Event("submit")); }
  });
  connect();
})();
