/*
 * supportbot chat widget.
 *
 *   <script src="https://HOST/widget.js" data-site-key="sk_..." async></script>
 *
 * Optional attributes: data-title, data-greeting, data-color, data-position ("right" | "left"),
 * data-placeholder, data-open ("true" opens the panel at load). CSS variables set on the
 * <supportbot-chat> element (or any ancestor) theme it too: --supportbot-color,
 * --supportbot-text-color, --supportbot-font, --supportbot-radius, --supportbot-z-index.
 *
 * Everything lives in the shadow root of a <supportbot-chat> custom element, so the page's CSS
 * cannot reach in and the widget's CSS cannot leak out. Text from the model or the knowledge base
 * is only ever inserted as text nodes / textContent; the small Markdown subset of replies (bold,
 * italics, lists, http(s) links) is built with createElement, and links get their href through a
 * scheme allow-list. Nothing here parses a string as HTML: no innerHTML, outerHTML,
 * insertAdjacentHTML or document.write (tests/test_widget_markdown.py fails on any of them).
 * Icons are inline SVG built with createElementNS, not emoji (which need an emoji font).
 */
(function () {
  "use strict";
  if (window.customElements && window.customElements.get("supportbot-chat")) return;

  var script = document.currentScript ||
    document.querySelector('script[data-site-key][src*="widget.js"]');
  if (!script) return;
  var SITE_KEY = script.getAttribute("data-site-key") || "";
  var API = (script.getAttribute("data-api") || new URL(script.src, location.href).origin).replace(/\/$/, "");
  var STORE = "supportbot:" + API + ":" + SITE_KEY;

  var CSS = [
    ":host{all:initial;position:fixed;bottom:20px;right:20px;z-index:var(--supportbot-z-index,2147483000);",
    "font-family:var(--supportbot-font,system-ui,-apple-system,'Segoe UI',Roboto,sans-serif);font-size:15px;line-height:1.45;color:#1d2329}",
    ":host([position=left]){right:auto;left:20px}",
    "*{box-sizing:border-box}",
    ".bubble{width:60px;height:60px;border-radius:50%;border:0;cursor:pointer;background:var(--supportbot-color,#2f6f4f);",
    "color:var(--supportbot-text-color,#fff);box-shadow:0 4px 14px rgba(0,0,0,.25);display:flex;align-items:center;justify-content:center}",
    ".bubble svg{width:28px;height:28px;fill:currentColor}",
    "button:focus-visible,textarea:focus-visible,a:focus-visible,input:focus-visible{outline:3px solid #f5b700;outline-offset:2px}",
    ".panel{position:absolute;bottom:76px;right:0;width:370px;max-width:calc(100vw - 40px);height:560px;max-height:calc(100vh - 120px);",
    "background:#fff;border-radius:var(--supportbot-radius,14px);box-shadow:0 10px 40px rgba(0,0,0,.28);display:flex;flex-direction:column;overflow:hidden}",
    ":host([position=left]) .panel{right:auto;left:0}",
    ".panel[hidden]{display:none}",
    "header{background:var(--supportbot-color,#2f6f4f);color:var(--supportbot-text-color,#fff);padding:12px 14px;display:flex;align-items:center;gap:8px}",
    "header h2{font-size:16px;margin:0;flex:1;font-weight:600}",
    "header button{background:transparent;border:0;color:inherit;font-size:22px;cursor:pointer;line-height:1;padding:2px 6px}",
    "header button svg{display:block;width:20px;height:20px}",
    ".log{flex:1;overflow-y:auto;padding:12px;display:flex;flex-direction:column;gap:10px;background:#f6f7f8}",
    ".msg{max-width:88%;padding:8px 12px;border-radius:12px;white-space:normal;overflow-wrap:anywhere}",
    ".msg.user{align-self:flex-end;background:var(--supportbot-color,#2f6f4f);color:var(--supportbot-text-color,#fff)}",
    ".msg.agent{align-self:flex-start;background:#fff;border:1px solid #dde1e4}",
    ".msg.note{align-self:center;background:#fff7e0;border:1px solid #f0d890;font-size:13px}",
    ".msg.error{align-self:center;background:#fdecec;border:1px solid #f3b9b9;font-size:13px}",
    ".msg p{margin:0 0 6px}.msg p:last-child{margin-bottom:0}.msg ul,.msg ol{margin:4px 0;padding-left:20px}",
    ".msg code{background:#eef0f2;padding:0 3px;border-radius:3px;font-size:13px}",
    ".msg a{color:inherit}",
    ".typing:empty::after,.typing > :last-child::after{content:' \\2026';opacity:.6}",
    ".sources{margin:8px 0 0;padding:6px 0 0;border-top:1px solid #e6e9eb;list-style:none;font-size:13px}",
    ".sources li{margin:2px 0}.sources a{color:#245a8a}",
    ".topics{display:flex;flex-wrap:wrap;gap:6px;margin:8px 0 0}",
    ".topics button{font:inherit;font-size:13px;text-align:left;padding:5px 10px;border-radius:14px;border:1px solid var(--supportbot-color,#1f6feb);background:#fff;color:var(--supportbot-color,#1f6feb);cursor:pointer}",
    ".rate{display:flex;gap:6px;margin-top:6px;align-items:center;font-size:12px;color:#5b6670}",
    ".rate button{border:1px solid #cfd5da;background:#fff;border-radius:6px;cursor:pointer;padding:3px 8px;font-size:14px;color:#4a5660;line-height:0}",
    ".rate button svg{display:block;width:16px;height:16px}",
    ".rate button[aria-pressed=true]{background:#e3f1e8;border-color:#2f6f4f;color:#2f6f4f}",
    ".comment{display:flex;gap:6px;margin-top:6px}.comment input{flex:1;font:inherit;font-size:13px;padding:4px 6px;border:1px solid #cfd5da;border-radius:6px}",
    ".comment button{font-size:12px}",
    "form.compose{display:flex;gap:8px;padding:10px;border-top:1px solid #e1e4e7;background:#fff}",
    "textarea{flex:1;resize:none;font:inherit;padding:8px 10px;border:1px solid #cfd5da;border-radius:10px;min-height:42px;max-height:120px}",
    ".send{background:var(--supportbot-color,#2f6f4f);color:var(--supportbot-text-color,#fff);border:0;border-radius:10px;padding:0 14px;cursor:pointer;font:inherit;font-weight:600}",
    ".send:disabled{opacity:.5;cursor:default}",
    ".human{background:transparent;border:0;color:#245a8a;text-decoration:underline;cursor:pointer;font:inherit;font-size:13px;padding:4px 12px 8px;text-align:left}",
    ".human[hidden]{display:none}",
    ".msg.team{background:#eef5fd;border:1px solid #b9d3ee}",
    ".msg .who{font-size:12px;color:#5b6670;margin-bottom:2px;font-weight:600}",
    ".queue form{display:flex;gap:6px;margin-top:6px}.queue input{flex:1;font:inherit;font-size:13px;padding:4px 6px;border:1px solid #cfd5da;border-radius:6px;min-width:0}",
    ".queue button,.offer button{font:inherit;font-size:13px;border:1px solid #cfd5da;background:#fff;border-radius:6px;cursor:pointer;padding:3px 8px}",
    ".queue .err{color:#a4262c;margin-top:4px}",
    ".sr{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0);white-space:nowrap}",
    "@media (max-width:480px){:host{bottom:12px;right:12px}:host([position=left]){left:12px}",
    ".panel.open{position:fixed;inset:0;width:100vw;max-width:100vw;height:100%;max-height:100%;border-radius:0}}"
  ].join("\n");

  /* -- icons ------------------------------------------------------------------------------- */
  /* Inline SVG, built with createElementNS: emoji depend on the visitor's fonts (headless and
     many Linux browsers have no emoji font and draw empty boxes) and glyphs like "x" shift with
     the host page's font. Each icon is a 24x24 drawing in currentColor, so it follows the
     button's colour; aria-hidden because every button carries its own aria-label. */
  var SVG_NS = "http://www.w3.org/2000/svg";
  var THUMB = [
    "M7 11l4-8a2.5 2.5 0 0 1 2.5 2.5V9h5a2 2 0 0 1 2 2.3l-1.3 7.9A2 2 0 0 1 17.2 21H7z",
    "M7 11H4a1 1 0 0 0-1 1v8a1 1 0 0 0 1 1h3z"
  ];
  var ICONS = {
    chat: { filled: true, paths: ["M4 4h16a2 2 0 0 1 2 2v10a2 2 0 0 1-2 2H8l-4 4V6a2 2 0 0 1 2-2z"] },
    close: { paths: ["M6 6l12 12", "M18 6L6 18"] },
    thumbUp: { paths: THUMB },
    // The same hand turned over, as thumbs-down icons usually are (cuff top right).
    thumbDown: { paths: THUMB, transform: "rotate(180 12 12)" }
  };

  function icon(name) {
    var spec = ICONS[name], svg = document.createElementNS(SVG_NS, "svg");
    var group = document.createElementNS(SVG_NS, "g");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("width", "24"); svg.setAttribute("height", "24"); // until CSS sizes it
    svg.setAttribute("aria-hidden", "true"); svg.setAttribute("focusable", "false");
    svg.setAttribute("class", "icon icon-" + name);
    if (spec.filled) {
      svg.setAttribute("fill", "currentColor");
    } else {
      svg.setAttribute("fill", "none"); svg.setAttribute("stroke", "currentColor");
      svg.setAttribute("stroke-width", "2"); svg.setAttribute("stroke-linecap", "round");
      svg.setAttribute("stroke-linejoin", "round");
    }
    if (spec.transform) group.setAttribute("transform", spec.transform);
    spec.paths.forEach(function (d) {
      var path = document.createElementNS(SVG_NS, "path");
      path.setAttribute("d", d);
      group.appendChild(path);
    });
    svg.appendChild(group);
    return svg;
  }

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    if (attrs) for (var k in attrs) if (attrs[k] != null) node.setAttribute(k, attrs[k]);
    if (text != null) node.textContent = text;
    return node;
  }

  /* For URLs the server gives (sources): relative ones are this server's pages. */
  function safeUrl(href) {
    try {
      var u = new URL(href, API + "/");
      return (u.protocol === "https:" || u.protocol === "http:") ? u.href : null;
    } catch (e) { return null; }
  }

  /* For URLs in model text: absolute http(s) only. Anything else (javascript:, data:, vbscript:,
     a relative path the model made up) is not a link and stays literal text. The scheme is
     checked both on the raw text and on what the URL parser makes of it. */
  function modelUrl(raw) {
    if (!/^https?:\/\//i.test(raw)) return null;
    try {
      var u = new URL(raw);
      return (u.protocol === "https:" || u.protocol === "http:") ? u.href : null;
    } catch (e) { return null; }
  }

  function link(href, text) {
    // nofollow: the words are the model's, not an endorsement the site makes.
    var a = el("a", { href: href, target: "_blank", rel: "noopener noreferrer nofollow" });
    if (typeof text === "string") a.textContent = text;
    return a;
  }

  /* A bare URL ends before trailing punctuation ("see https://x.com/a." links x.com/a) and before
     a ")" that closes a parenthesis opened outside it ("(https://x.com/a)"). */
  function trimUrl(url) {
    for (;;) {
      var c = url.charAt(url.length - 1);
      if (".,;:!?_'\"".indexOf(c) >= 0) url = url.slice(0, -1);
      else if (c === ")" && (url.split("(").length < url.split(")").length)) url = url.slice(0, -1);
      else return url;
    }
  }

  var WORD = /[0-9A-Za-z_\u00c0-\u024f]/;  // what an "_" of emphasis may not touch outside

  /* Markdown inline subset -> DOM, within one line: `code`, **bold**, *italic* and _italic_
     (nesting allowed), [text](https://...) links and bare http(s) URLs. Every piece of model text
     goes in as a text node, so markup in it (<script>, <img onerror>) is shown, never parsed.
     Citations such as [1] or [1, 2] match nothing here and stay as they are written. */
  function inline(parent, text, inLink) {
    // A fresh RegExp per call: a global regex keeps its position in lastIndex, and inline()
    // recurses into bold/italic/link text. "i" so that HTTPS://... is a link too.
    var re = new RegExp([
      "`([^`]+)`",                                          // 1 code
      "\\*\\*(?=\\S)(.*?\\S)\\*\\*(?!\\*)",                  // 2 bold
      "\\*(?=[^\\s*])([^*]*?[^\\s*])\\*(?!\\*)",            // 3 italic
      "_(?=[^\\s_])([^_]*?[^\\s_])_",                       // 4 italic
      "\\[([^\\[\\]]+)\\]\\(\\s*([^()\\s]+)\\s*\\)",        // 5 text, 6 url: a link
      "\\b(https?:\\/\\/[^\\s<>\"'`\\[\\]*]+)"             // 7 a bare URL (ends at "*": **https://x**)
    ].join("|"), "gi");
    var last = 0, m;
    function flush(upTo) {
      if (upTo > last) parent.appendChild(document.createTextNode(text.slice(last, upTo)));
    }
    while ((m = re.exec(text))) {
      var start = m.index, end = re.lastIndex, node = null;
      if (m[1] != null) {
        node = el("code", null, m[1]);
      } else if (m[2] != null) {
        node = el("strong"); inline(node, m[2], inLink);
      } else if (m[3] != null) {
        node = el("em"); inline(node, m[3], inLink);
      } else if (m[4] != null) {
        // snake_case_words and __dunder__ are not emphasis: the "_" pair must not touch a
        // letter, digit or another "_" on the outside.
        if (WORD.test(text.charAt(start - 1)) || WORD.test(text.charAt(end))) {
          re.lastIndex = start + 1; continue;
        }
        node = el("em"); inline(node, m[4], inLink);
      } else if (m[5] != null) {
        var href = inLink ? null : modelUrl(m[6]);
        // Not a link we make (wrong scheme, or inside a link): all of it stays text, and is not
        // searched again, so "[x](javascript:a_b_c)" cannot turn into anything else.
        if (!href) continue;
        node = link(href); inline(node, m[5], true);
      } else {
        var url = trimUrl(m[7]), safe = inLink ? null : modelUrl(url);
        if (!safe) continue;
        end = start + url.length; re.lastIndex = end;
        node = link(safe, url);
      }
      flush(start);
      parent.appendChild(node);
      last = end;
    }
    flush(text.length);
  }

  /* Markdown blocks -> DOM: paragraphs (a blank line between), line breaks within them, "- " or
     "* " bullet lists and "1. " / "1) " numbered lists, which may start right under a line of
     text. An indented line under a list item continues it. Called again with the whole text each
     time a streamed piece arrives, so a "**" split across two pieces renders once it is whole. */
  function renderMarkdown(node, text) {
    while (node.firstChild) node.removeChild(node.firstChild);
    var bullet = /^\s*[-*]\s+(.*)$/, number = /^\s*(\d{1,9})[.)]\s+(.*)$/;
    var para = null, list = null, item = null;
    text.replace(/\r\n?/g, "\n").split("\n").forEach(function (line) {
      if (!line.trim()) { para = list = item = null; return; }
      var b = bullet.exec(line), n = b ? null : number.exec(line);
      if (b || n) {
        var kind = b ? "ul" : "ol";
        if (!list || list.tagName.toLowerCase() !== kind) {
          list = el(kind);
          if (n && +n[1] !== 1) list.setAttribute("start", String(+n[1]));
          node.appendChild(list);
        }
        item = el("li");
        inline(item, b ? b[1] : n[2]);
        list.appendChild(item);
        para = null;
        return;
      }
      if (item && /^\s/.test(line)) { item.appendChild(el("br")); inline(item, line.trim()); return; }
      list = item = null;
      if (para) para.appendChild(el("br"));
      else { para = el("p"); node.appendChild(para); }
      inline(para, line);
    });
  }

  /* Reads a text/event-stream body; calls onEvent(type, data, id) per event. */
  function readEvents(response, onEvent) {
    var reader = response.body.getReader(), decoder = new TextDecoder(), buffer = "";
    function dispatch(block) {
      var type = "message", data = [], id = null;
      block.split(/\r?\n/).forEach(function (line) {
        if (!line || line.charAt(0) === ":") return;
        var i = line.indexOf(":"), name = i < 0 ? line : line.slice(0, i);
        var value = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
        if (name === "event") type = value; else if (name === "data") data.push(value); else if (name === "id") id = value;
      });
      if (data.length) onEvent(type, JSON.parse(data.join("\n")), id);
    }
    function pump() {
      return reader.read().then(function (r) {
        if (r.done) { if (buffer.trim()) dispatch(buffer); return; }
        buffer += decoder.decode(r.value, { stream: true });
        var parts = buffer.split(/\r?\n\r?\n/);
        buffer = parts.pop();
        parts.forEach(dispatch);
        return pump();
      });
    }
    return pump();
  }

  function load() { try { return JSON.parse(localStorage.getItem(STORE)) || {}; } catch (e) { return {}; } }
  function save(state) { try { localStorage.setItem(STORE, JSON.stringify(state)); } catch (e) { /* private mode */ } }

  function ApiError(status, message, retryAfter) { this.status = status; this.message = message; this.retryAfter = retryAfter; }

  class SupportbotChat extends HTMLElement {}

  SupportbotChat.prototype.connectedCallback = function () {
    if (this._ready) return;
    this._ready = true;
    this.state = load();
    this.busy = false;
    var root = this.attachShadow({ mode: "open" });
    if (root.adoptedStyleSheets !== undefined && window.CSSStyleSheet && "replaceSync" in CSSStyleSheet.prototype) {
      var sheet = new CSSStyleSheet(); sheet.replaceSync(CSS); root.adoptedStyleSheets = [sheet];
    } else {
      root.appendChild(el("style", null, CSS));
    }
    var title = script.getAttribute("data-title") || "Help";
    var color = script.getAttribute("data-color");
    if (color) this.style.setProperty("--supportbot-color", color);
    this.setAttribute("position", script.getAttribute("data-position") === "left" ? "left" : "right");

    this.bubble = el("button", { "class": "bubble", type: "button", "aria-label": "Open chat: " + title, "aria-expanded": "false", "aria-controls": "sb-panel" });
    this.bubble.appendChild(icon("chat"));
    this.panel = el("section", { "class": "panel", id: "sb-panel", role: "dialog", "aria-label": title, hidden: "" });
    var header = el("header");
    header.appendChild(el("h2", null, title));
    this.closeBtn = el("button", { "class": "close", type: "button", "aria-label": "Close chat" });
    this.closeBtn.appendChild(icon("close"));
    header.appendChild(this.closeBtn);
    this.log = el("div", { "class": "log", role: "log", "aria-live": "polite", "aria-label": "Conversation" });
    this.humanBtn = el("button", { "class": "human", type: "button" }, "Talk to a person");
    this.form = el("form", { "class": "compose" });
    var label = el("label", { "for": "sb-input", "class": "sr" }, "Your message");
    this.input = el("textarea", { id: "sb-input", rows: "1", placeholder: script.getAttribute("data-placeholder") || "Ask a question\u2026", maxlength: "2000" });
    this.sendBtn = el("button", { "class": "send", type: "submit" }, "Send");
    this.form.appendChild(label); this.form.appendChild(this.input); this.form.appendChild(this.sendBtn);
    this.panel.appendChild(header); this.panel.appendChild(this.log); this.panel.appendChild(this.humanBtn); this.panel.appendChild(this.form);
    root.appendChild(this.panel); root.appendChild(this.bubble);

    var self = this;
    this.bubble.addEventListener("click", function () { self.toggle(); });
    this.closeBtn.addEventListener("click", function () { self.toggle(false); });
    this.panel.addEventListener("keydown", function (e) { if (e.key === "Escape") self.toggle(false); });
    this.form.addEventListener("submit", function (e) { e.preventDefault(); self.send(); });
    this.input.addEventListener("keydown", function (e) {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); self.send(); }
    });
    this.humanBtn.addEventListener("click", function () { self.askHuman(); });
    this.input.addEventListener("input", function () { self.typingPing(); });

    var greeting = script.getAttribute("data-greeting");
    if (greeting) this.addNote(greeting, "agent");
    this.restore();
    if (this.state.open || script.getAttribute("data-open") === "true") this.toggle(true);
  };

  SupportbotChat.prototype.toggle = function (open) {
    if (open === undefined) open = this.panel.hidden;
    this.panel.hidden = !open;
    this.panel.classList.toggle("open", open);
    this.bubble.setAttribute("aria-expanded", String(open));
    this.state.open = open; save(this.state);
    if (open) { this.input.focus(); this.scroll(); } else this.bubble.focus();
  };

  SupportbotChat.prototype.scroll = function () { this.log.scrollTop = this.log.scrollHeight; };

  /* -- HTTP ------------------------------------------------------------------------------- */
  SupportbotChat.prototype.session = function () {
    var self = this;
    return fetch(API + "/api/session", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ site_key: SITE_KEY, visitor_token: this.state.token || null })
    }).then(function (r) { return self.checked(r); }).then(function (r) { return r.json(); }).then(function (data) {
      if (self.state.token && !data.renewed) self.state.conversation = null; // a new visitor
      self.state.token = data.visitor_token; save(self.state);
      return data;
    });
  };

  SupportbotChat.prototype.checked = function (r) {
    if (r.ok) return r;
    return r.json().catch(function () { return {}; }).then(function (body) {
      var msg = (body && body.error && body.error.message) || ("HTTP " + r.status);
      throw new ApiError(r.status, msg, r.headers.get("Retry-After"));
    });
  };

  /* Seconds to wait from a Retry-After header (seconds or an HTTP date), 1 to 120; one more than
     it says, since servers round the seconds down. */
  function retryAfter(value) {
    var n = parseInt(value, 10);
    if (isNaN(n)) { var at = Date.parse(value || ""); n = isNaN(at) ? 5 : Math.ceil((at - Date.now()) / 1000); }
    return Math.min(Math.max(n + 1, 1), 120);
  }

  /* fetch with the visitor token. A 401 (an expired token) renews it once through /api/session
     with the old token (the same visitor keeps their conversation) and retries; a 429 (a rate
     limit) says how long to wait, from Retry-After, and retries once after it. The server sends
     CORS headers on these errors, so the widget can read them from any allowed origin. */
  SupportbotChat.prototype.call = function (path, options, retried) {
    var self = this;
    retried = retried || {};
    var ready = this.state.token ? Promise.resolve() : this.session();
    return ready.then(function () {
      var opts = Object.assign({}, options || {});
      opts.headers = Object.assign({ "Authorization": "Bearer " + self.state.token }, opts.headers || {});
      return fetch(API + path, opts);
    }).then(function (r) {
      if (r.status === 401 && !retried.token) {
        return self.session().then(function () {
          return self.call(path, options, Object.assign({}, retried, { token: true }));
        });
      }
      if (r.status === 429 && !retried.limit) {
        return self.waitFor(retryAfter(r.headers.get("Retry-After"))).then(function () {
          return self.call(path, options, Object.assign({}, retried, { limit: true }));
        });
      }
      return self.checked(r);
    });
  };

  /* A note while a rate limit lasts; resolves when it is over. */
  SupportbotChat.prototype.waitFor = function (seconds) {
    var note = this.addNote("You are sending messages too fast. Please wait " + seconds +
      (seconds === 1 ? " second" : " seconds") + ": it will be sent then.", "note");
    return new Promise(function (ok) { setTimeout(function () { note.remove(); ok(); }, seconds * 1000); });
  };

  SupportbotChat.prototype.conversation = function () {
    var self = this;
    if (this.state.conversation) return Promise.resolve(this.state.conversation);
    return this.call("/api/conversations", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ page: location.href.slice(0, 500) })
    }).then(function (r) { return r.json(); }).then(function (c) {
      self.state.conversation = c.id; save(self.state); return c.id;
    });
  };

  /* -- history after a reload -------------------------------------------------------------- */
  SupportbotChat.prototype.restore = function () {
    var self = this;
    if (!this.state.token) return;
    this.session().then(function () {
      if (!self.state.conversation) return;
      return self.call("/api/conversations/" + encodeURIComponent(self.state.conversation)).then(function (r) { return r.json(); }).then(function (conv) {
        conv.messages.forEach(function (m) {
          self.lastSeen = Math.max(self.lastSeen || 0, m.id);
          if (m.role === "user") { self.addUser(m.text); return; }
          if (m.by === "human") { self.addHuman(m); return; }
          var view = self.addAgent(m.id);
          if (m.decision === "handoff") { self.addNote(m.text, "note"); view.node.remove(); return; }
          view.text = m.text; renderMarkdown(view.body, m.text);
          view.decision = m.decision;
          view.setSources(m.sources);
          if (m.complete) view.finish(m.feedback);
          else self.resume(view, m.id + ":" + m.text.length);
        });
        self.scroll();
        if (conv.status === "waiting" || conv.status === "human") self.startLive(conv.queue);
      });
    }).catch(function (e) {
      if (e && e.status === 404) { self.state.conversation = null; save(self.state); }
    });
  };

  /* -- messages ---------------------------------------------------------------------------- */
  SupportbotChat.prototype.addUser = function (text) {
    var node = el("div", { "class": "msg user" }, text);
    this.log.appendChild(node); this.scroll();
  };

  SupportbotChat.prototype.addNote = function (text, kind) {
    var node = el("div", { "class": "msg " + (kind || "note") });
    renderMarkdown(node, text);
    this.log.appendChild(node); this.scroll();
    return node;
  };

  SupportbotChat.prototype.addAgent = function (messageId) {
    var self = this;
    var node = el("div", { "class": "msg agent" });
    var body = el("div", { "class": "body typing" });
    node.appendChild(body);
    this.log.appendChild(node);
    var view = {
      node: node, body: body, text: "", id: messageId,
      append: function (piece) { view.text += piece; renderMarkdown(body, view.text); body.classList.add("typing"); self.scroll(); },
      setSources: function (sources) {
        if (!sources || !sources.length) return;
        var topics = sources.filter(function (s) { return s.topic; });
        if (view.decision === "clarify" && topics.length) { view.setTopics(topics); return; }
        var old = node.querySelector(".sources"); if (old) old.remove();
        var list = el("ul", { "class": "sources", "aria-label": "Sources" });
        sources.forEach(function (s) {
          var li = el("li"), href = safeUrl(s.url || "");
          var label = "[" + s.n + "] " + (s.title || s.doc_id || "source");
          li.appendChild(href ? el("a", { href: href, target: "_blank", rel: "noopener noreferrer" }, label) : el("span", null, label));
          list.appendChild(li);
        });
        node.appendChild(list); self.scroll();
      },
      /* A clarifying question's offered topics (each with its words): one button each, sending them. */
      setTopics: function (sources) {
        var old = node.querySelector(".topics"); if (old) old.remove();
        var row = el("div", { "class": "topics", role: "group", "aria-label": "Suggested questions" });
        sources.forEach(function (s) {
          var b = el("button", { type: "button" }, s.topic);
          b.addEventListener("click", function () { if (!self.busy) self.send(s.topic); });
          row.appendChild(b);
        });
        node.appendChild(row); self.scroll();
      },
      finish: function (feedback) {
        body.classList.remove("typing");
        if (view.id != null && !node.querySelector(".rate")) self.addRating(view, feedback);
      }
    };
    return view;
  };

  SupportbotChat.prototype.addRating = function (view, feedback) {
    var self = this, row = el("div", { "class": "rate" });
    row.appendChild(el("span", null, "Was this helpful?"));
    var up = el("button", { type: "button", "aria-label": "Helpful", "aria-pressed": "false" });
    var down = el("button", { type: "button", "aria-label": "Not helpful", "aria-pressed": "false" });
    up.appendChild(icon("thumbUp")); down.appendChild(icon("thumbDown"));
    function mark(rating) {
      up.setAttribute("aria-pressed", String(rating > 0)); down.setAttribute("aria-pressed", String(rating < 0));
    }
    if (feedback) mark(feedback.rating);
    function rate(rating, comment) {
      mark(rating);
      return self.call("/api/conversations/" + encodeURIComponent(self.state.conversation) + "/feedback", {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ message_id: view.id, rating: rating, comment: comment || "" })
      }).catch(function (e) { self.addNote(e.message || "Could not send feedback.", "error"); });
    }
    up.addEventListener("click", function () { rate(1); });
    down.addEventListener("click", function () {
      rate(-1);
      if (view.node.querySelector(".comment")) return;
      var box = el("form", { "class": "comment" });
      var input = el("input", { type: "text", "aria-label": "What was wrong? (optional)", placeholder: "What was wrong? (optional)", maxlength: "2000" });
      var ok = el("button", { type: "submit" }, "Send");
      box.appendChild(input); box.appendChild(ok);
      box.addEventListener("submit", function (e) {
        e.preventDefault();
        rate(-1, input.value).then(function () { box.replaceWith(el("span", { "class": "rate" }, "Thanks for telling us.")); });
      });
      view.node.appendChild(box); input.focus();
    });
    row.appendChild(up); row.appendChild(down);
    view.node.appendChild(row);
  };

  SupportbotChat.prototype.setBusy = function (busy) {
    this.busy = busy; this.sendBtn.disabled = busy;
    this.log.setAttribute("aria-busy", String(busy));
  };

  /* Streams one answer; on a dropped connection resumes it with Last-Event-ID (up to 3 times). */
  SupportbotChat.prototype.stream = function (view, request, attempt) {
    var self = this, lastId = null, ended = false;
    return request().then(function (r) {
      return readEvents(r, function (type, data, id) {
        if (id) lastId = id;
        if (type === "meta") { view.id = data.message_id; view.decision = data.decision; }
        else if (type === "token") view.append(data.text);
        else if (type === "sources") view.setSources(data.sources);
        else if (type === "handoff") { view.node.remove(); self.addNote(data.message, "note"); self.startLive(data.queue); }
        else if (type === "queued") { view.node.remove(); view.id = null; self.startLive(data); }
        else if (type === "offer") { self.addOffer(data.message); }
        else if (type === "error") { ended = true; view.finish(); self.addNote(data.message, "error"); }
        else if (type === "done") { ended = true; view.finish(); }
      });
    }).then(function () {
      if (!ended) throw new Error("stream ended early");
    }).catch(function (e) {
      if (e instanceof ApiError) throw e;
      if (lastId && (attempt || 0) < 3) {
        return new Promise(function (ok) { setTimeout(ok, 500 * ((attempt || 0) + 1)); }).then(function () {
          return self.resume(view, lastId, (attempt || 0) + 1);
        });
      }
      throw e;
    });
  };

  SupportbotChat.prototype.resume = function (view, lastEventId, attempt) {
    var self = this;
    return this.stream(view, function () {
      return self.call("/api/conversations/" + encodeURIComponent(self.state.conversation) + "/events",
        { headers: { "Last-Event-ID": lastEventId } });
    }, attempt || 0);
  };

  /* Sends the message box's text, or ``chosen`` (a suggested question's button). */
  SupportbotChat.prototype.send = function (chosen) {
    var self = this, typed = typeof chosen !== "string", text = (typed ? this.input.value : chosen).trim();
    if (!text || this.busy) return;
    if (typed) this.input.value = "";
    this.addUser(text);
    this.setBusy(true);
    var view = null;
    this.conversation().then(function (cid) {
      view = self.addAgent(null);
      return self.stream(view, function () {
        return self.call("/api/conversations/" + encodeURIComponent(cid) + "/messages", {
          method: "POST", headers: { "Content-Type": "application/json", "Accept": "text/event-stream" },
          body: JSON.stringify({ message: text })
        });
      });
    }).catch(function (e) {
      if (view && !view.text) view.node.remove();
      var msg = (e && e.message) || "Something went wrong.";
      if (e && e.status === 429) msg = "You are sending messages too fast. Please wait " + (e.retryAfter || "a few") + " seconds.";
      if (e && e.status === 404) { self.state.conversation = null; save(self.state); }
      self.addNote(msg, "error");
    }).then(function () { self.setBusy(false); self.input.focus(); });
  };

  SupportbotChat.prototype.askHuman = function () {
    var self = this;
    // The visitor writes next; a disabled (then hidden) link would drop the focus to the page.
    if (this.shadowRoot.activeElement === this.humanBtn) this.input.focus();
    this.humanBtn.disabled = true;
    this.conversation().then(function (cid) {
      return self.call("/api/conversations/" + encodeURIComponent(cid) + "/handoff", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ reason: "requested" })
      });
    }).then(function (r) { return r.json(); }).then(function (data) {
      self.addNote(data.message, "note");
      if (!data.ask_bot_first) self.startLive(data.queue);
    }).catch(function (e) {
      self.addNote((e && e.message) || "Could not reach a person right now.", "error");
    }).then(function () { self.humanBtn.disabled = false; });
  };

  /* -- a person in the conversation ------------------------------------------------------- */
  /* While the conversation waits for or is with a person, the widget follows
     GET /api/conversations/<id>/live: "status" events (place in the queue, an agent joined, no
     agent online) update one note in place, "message" events are the agent's replies. The stream
     ends when the agent hands the conversation back or resolves it; a dropped one reconnects
     with ?after=<the last message id seen>, so no reply is shown twice. */
  SupportbotChat.prototype.addHuman = function (m) {
    this.shownHuman = this.shownHuman || {};
    if (this.shownHuman[m.id]) return;
    this.shownHuman[m.id] = true;
    this.lastSeen = Math.max(this.lastSeen || 0, m.id);
    var node = el("div", { "class": "msg agent team" });
    node.appendChild(el("div", { "class": "who" }, "Support team"));
    var body = el("div", { "class": "body" });
    renderMarkdown(body, m.text);
    node.appendChild(body);
    this.log.appendChild(node); this.scroll();
  };

  SupportbotChat.prototype.showQueue = function (state) {
    if (!state) return;
    this.showHumanLink(state.status !== "waiting" && state.status !== "human");
    if (!this.queueNote || !this.queueNote.isConnected) {
      this.queueNote = el("div", { "class": "msg note queue", role: "status" });
      this.queueText = el("p");
      this.queueNote.appendChild(this.queueText);
      this.log.appendChild(this.queueNote);
    }
    this.queueText.textContent = state.message || "";
    var form = this.queueNote.querySelector("form");
    if (state.ask_email && !form) this.queueNote.appendChild(this.emailForm());
    else if (!state.ask_email && form) form.remove();
    this.scroll();
  };

  /* "Talk to a person" is hidden while the conversation waits for or is with a person (asking
     again would change nothing) and shown again once it is handed back to the bot or resolved.
     Focus on the link when it goes moves to the message box, not to the page. */
  SupportbotChat.prototype.showHumanLink = function (show) {
    if (this.humanBtn.hidden === !show) return;
    var focused = this.shadowRoot && this.shadowRoot.activeElement === this.humanBtn;
    this.humanBtn.hidden = !show;
    if (focused && !show && !this.panel.hidden) this.input.focus();
  };

  SupportbotChat.prototype.emailForm = function () {
    var self = this, form = el("form");
    var input = el("input", { type: "email", "aria-label": "Your email address", placeholder: "you@example.com", maxlength: "254", autocomplete: "email" });
    var ok = el("button", { type: "submit" }, "Leave email");
    var err = el("div", { "class": "err", role: "alert" });
    form.appendChild(input); form.appendChild(ok);
    form.addEventListener("submit", function (e) {
      e.preventDefault();
      err.remove();
      self.call("/api/conversations/" + encodeURIComponent(self.state.conversation) + "/email", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ email: input.value })
      }).then(function (r) { return r.json(); }).then(function (data) {
        form.replaceWith(el("p", null, data.message));
      }).catch(function (e2) { err.textContent = (e2 && e2.message) || "Could not save the address."; form.after(err); });
    });
    return form;
  };

  SupportbotChat.prototype.addOffer = function (message) {
    var self = this, node = el("div", { "class": "msg note offer" });
    node.appendChild(el("p", null, message));
    var yes = el("button", { type: "button" }, "Talk to a person");
    yes.addEventListener("click", function () { node.remove(); self.askHuman(); });
    node.appendChild(yes);
    this.log.appendChild(node); this.scroll();
  };

  SupportbotChat.prototype.startLive = function (state, attempt) {
    var self = this;
    if (state) this.showQueue(state);
    if (state && state.status && state.status !== "waiting" && state.status !== "human") return;
    if (this.liveOn || !this.state.conversation) return;
    this.liveOn = true;
    var cid = this.state.conversation, ended = false;
    this.call("/api/conversations/" + encodeURIComponent(cid) + "/live?after=" + (this.lastSeen || 0),
      { headers: { "Accept": "text/event-stream" } }).then(function (r) {
      return readEvents(r, function (type, data) {
        if (type === "message") { self.addHuman(data); attempt = 0; }
        else if (type === "status") {
          self.showQueue(data);
          if (data.status !== "waiting" && data.status !== "human") { ended = true; self.queueNote = null; }
        }
      });
    }).catch(function () { /* reconnects below */ }).then(function () {
      self.liveOn = false;
      if (ended || self.state.conversation !== cid) return;
      var n = (attempt || 0) + 1;
      if (n <= 20) setTimeout(function () { self.startLive(null, n); }, Math.min(1000 * n, 10000));
    });
  };

  /* At most one ping every 3 s while the visitor types, only when a person may be reading. */
  SupportbotChat.prototype.typingPing = function () {
    if (!this.liveOn || !this.state.conversation) return;
    var now = Date.now();
    if (this.lastPing && now - this.lastPing < 3000) return;
    this.lastPing = now;
    this.call("/api/conversations/" + encodeURIComponent(this.state.conversation) + "/typing", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: "{}"
    }).catch(function () { /* best effort */ });
  };

  customElements.define("supportbot-chat", SupportbotChat);
  function mount() { document.body.appendChild(document.createElement("supportbot-chat")); }
  if (document.body) mount(); else document.addEventListener("DOMContentLoaded", mount);
})();
