/* The agents' queue (admin console, loaded under a CSP that forbids inline scripts).
 * - follows /admin/queue/events (SSE) and redraws the queue and the open conversation from each
 *   "queue" event; every piece of text goes in through textContent (never parsed as HTML);
 * - counts the waiting times up every second (from the server's clock, so a skewed local clock
 *   does not matter);
 * - sends take / reply / hand back / resolve with fetch (X-CSRFToken); without JavaScript the
 *   same forms post and the page redirects back. */
(function () {
  "use strict";
  var root = document.getElementById("queue");
  if (!root || !window.EventSource) return;
  var csrf = document.querySelector('meta[name="csrf-token"]');
  var openId = root.getAttribute("data-open") || "";
  var base = root.getAttribute("data-base");
  var me = root.getAttribute("data-me");
  var skew = 0; // server clock minus local clock, ms
  var state = document.getElementById("live-state");

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text != null) node.textContent = text;
    return node;
  }

  function since(iso) {
    if (!iso) return "";
    var s = Math.max(0, Math.round((Date.now() + skew - Date.parse(iso)) / 1000));
    if (s < 60) return s + " s";
    var m = Math.floor(s / 60);
    return m < 60 ? m + " min " + (s % 60) + " s" : Math.floor(m / 60) + " h " + (m % 60) + " min";
  }

  function tick() {
    Array.prototype.forEach.call(root.querySelectorAll(".waited"), function (td) {
      td.textContent = since(td.getAttribute("data-since"));
    });
  }

  function sourcesText(sources) {
    return (sources || []).map(function (s) { return "[" + s.n + "] " + (s.title || s.doc_id || ""); }).join("; ");
  }

  function drawRows(conversations) {
    var body = document.getElementById("queue-rows");
    body.textContent = "";
    if (!conversations.length) {
      var tr = el("tr", "empty"), td = el("td", null, "Nobody is waiting.");
      td.colSpan = 7; tr.appendChild(td); body.appendChild(tr); return;
    }
    conversations.forEach(function (c) {
      var tr = el("tr", c.id === openId ? "selected" : "");
      tr.setAttribute("data-id", c.id);
      var status = c.status + (c.position ? " #" + c.position : "") + (c.visitor_typing ? " \u00b7 typing\u2026" : "");
      tr.appendChild(el("td", null, status));
      var waited = el("td", "waited", since(c.waiting_since));
      waited.setAttribute("data-since", c.waiting_since || "");
      tr.appendChild(waited);
      tr.appendChild(el("td", null, c.reason));
      tr.appendChild(el("td", null, c.question));
      tr.appendChild(el("td", null, sourcesText(c.sources)));
      tr.appendChild(el("td", null, c.assigned_to));
      var cell = el("td"), a = el("a", null, "Open");
      a.href = base + "?open=" + encodeURIComponent(c.id);
      cell.appendChild(a); tr.appendChild(cell);
      body.appendChild(tr);
    });
  }

  function drawOpen(o) {
    var panel = document.getElementById("open-panel");
    if (!o) { if (openId) panel.hidden = true; return; }
    panel.hidden = false;
    document.getElementById("open-id").textContent = o.id;
    var meta = document.getElementById("open-meta");
    meta.textContent = "Status ";
    meta.appendChild(el("strong", null, o.status));
    meta.appendChild(document.createTextNode(
      (o.assigned_to ? " \u00b7 " + o.assigned_to : "") + " \u00b7 reason " + (o.reason || "-") +
      (o.visitor_email ? " \u00b7 email " + o.visitor_email : "")));
    var list = document.getElementById("open-messages");
    list.textContent = "";
    o.messages.forEach(function (m) {
      var li = el("li", "msg " + m.role), who = el("div", "who", m.role + (m.decision ? " \u00b7 " + m.decision : ""));
      who.appendChild(el("span", "when", " " + (m.created_at || "")));
      li.appendChild(who); li.appendChild(el("div", "text", m.text));
      if (m.sources && m.sources.length) li.appendChild(el("div", "sources", sourcesText(m.sources)));
      list.appendChild(li);
    });
    document.getElementById("open-typing").hidden = !o.visitor_typing;
    var mine = o.status === "human" && o.assigned_to === me;
    var show = {
      "take": o.status === "waiting",
      "hand-back": mine,
      "resolve": o.status === "waiting" || mine,
      "reply": o.status === "waiting" || mine
    };
    Array.prototype.forEach.call(panel.querySelectorAll("form[data-action]"), function (f) {
      f.hidden = !show[f.getAttribute("data-action")];
    });
  }

  function connect() {
    var source = new EventSource(root.getAttribute("data-events"));
    source.addEventListener("open", function () { state.textContent = "live"; });
    source.addEventListener("error", function () { state.textContent = "reconnecting\u2026"; });
    source.addEventListener("queue", function (e) {
      var snap = JSON.parse(e.data);
      if (snap.server_time) skew = Date.parse(snap.server_time) - Date.now();
      document.getElementById("agents-online").textContent = String(snap.agents_online);
      drawRows(snap.conversations);
      drawOpen(snap.open);
      root.setAttribute("data-version", String((+root.getAttribute("data-version") || 0) + 1));
    });
  }

  document.addEventListener("submit", function (e) {
    var form = e.target;
    if (!form.getAttribute || !form.getAttribute("data-action") || !root.contains(form)) return;
    e.preventDefault();
    var error = document.getElementById("open-error");
    error.hidden = true;
    fetch(form.action, {
      method: "POST", body: new FormData(form), credentials: "same-origin",
      headers: { "X-CSRFToken": csrf ? csrf.content : "", "X-Requested-With": "fetch", "Accept": "application/json" }
    }).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (body) {
        if (!r.ok) throw new Error((body.error && body.error.message) || ("HTTP " + r.status));
        if (form.id === "reply-form") form.querySelector("textarea").value = "";
      });
    }).catch(function (err) { error.textContent = err.message; error.hidden = false; });
  });

  var reply = document.querySelector("#reply-form textarea");
  if (reply) reply.addEventListener("keydown", function (e) {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      if (reply.value.trim()) reply.form.requestSubmit();
    }
  });

  connect();
  setInterval(tick, 1000);
})();
