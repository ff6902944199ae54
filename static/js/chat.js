/* Parley chat page: the websocket client (frames in shared/PROTOCOL.md) and the live rendering.
 *
 * Model output is untrusted. While an answer streams, its markdown is rendered here with
 * markdown-it (raw HTML off) and sanitized with DOMPurify using the same allow-list as the server
 * (conversations/markdown.py); once it is finished, the server's rendering (with code
 * highlighting) replaces it, so the page looks the same as after a reload.
 *
 * The socket can drop at any time: the page reconnects with exponential backoff, follows the
 * conversation again (`conversation.subscribe`, answered with a snapshot of a streaming answer),
 * and resends unacknowledged frames with their client_id (the server never duplicates them).
 */
(function () {
  "use strict";

  var config = JSON.parse(document.getElementById("chat-config").textContent);
  var $ = function (id) { return document.getElementById(id); };
  var ui = {
    pane: $("chat"), list: $("chat-messages"), scroll: $("chat-scroll"), empty: $("chat-empty"),
    form: $("chat-composer"), input: $("chat-input"), send: $("chat-send"), stop: $("chat-stop"),
    count: $("chat-count"), model: $("chat-model"), persona: $("chat-persona"),
    personaPicker: $("chat-persona-picker"), conn: $("chat-conn"), title: $("chat-title"),
    alert: $("chat-alert"), alertText: $("chat-alert-text"), alertClose: $("chat-alert-close"),
    recent: $("chat-recent"),
  };
  var csrfInput = ui.form.querySelector("input[name=csrfmiddlewaretoken]");

  // --- safe markdown (the rules of conversations/markdown.py) --------------------------------

  var md = window.markdownit("commonmark", { html: false, linkify: false, typographer: false });
  md.enable(["table", "strikethrough"]);
  // Images are shown as links: loading a URL the model chose can leak the conversation.
  md.renderer.rules.image = function (tokens, idx, options, env, self) {
    var token = tokens[idx];
    var src = md.utils.escapeHtml(token.attrGet("src") || "");
    var alt = md.utils.escapeHtml(self.renderInlineAsText(token.children || [], options, env)) || src;
    return '<a href="' + src + '">' + alt + "</a>";
  };

  var PURIFY = {
    ALLOWED_TAGS: ["p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "ul", "ol", "li",
      "strong", "em", "s", "del", "code", "pre", "a", "table", "thead", "tbody", "tr", "th", "td", "span"],
    ALLOWED_ATTR: ["href", "title", "start", "class", "style"],
    ALLOWED_URI_REGEXP: /^(?:(?:https?|mailto):|[^a-z]|[a-z+.\-]+(?:[^a-z+.\-:]|$))/i,
    ALLOW_DATA_ATTR: false,
  };
  var ALIGN = /^text-align:\s*(left|right|center);?$/;
  window.DOMPurify.addHook("afterSanitizeAttributes", function (node) {
    if (node.hasAttribute("class")) {
      var cls = node.getAttribute("class");
      var ok = (node.tagName === "CODE" && /^language-[A-Za-z0-9_+#.\-]{1,32}$/.test(cls)) ||
        (node.tagName === "SPAN" && /^[A-Za-z0-9]{1,4}( [A-Za-z0-9]{1,4})*$/.test(cls));
      if (!ok) node.removeAttribute("class");
    }
    if (node.hasAttribute("style") && !((node.tagName === "TH" || node.tagName === "TD") && ALIGN.test(node.getAttribute("style").trim()))) {
      node.removeAttribute("style");
    }
    if (node.tagName === "A") {
      node.setAttribute("rel", "nofollow noopener noreferrer");
      node.setAttribute("target", "_blank");
    }
  });

  function renderMarkdown(text) {
    return window.DOMPurify.sanitize(md.render(text || ""), PURIFY);
  }

  function decorateCode(body) {
    // A header with the language and a copy button above each code block.
    var blocks = body.querySelectorAll("pre");
    for (var i = 0; i < blocks.length; i++) {
      var pre = blocks[i];
      if (pre.parentNode.classList && pre.parentNode.classList.contains("codeblock")) continue;
      var code = pre.querySelector("code");
      var lang = code && code.className.indexOf("language-") === 0 ? code.className.slice(9) : "";
      var wrap = document.createElement("div");
      wrap.className = "codeblock";
      var head = document.createElement("div");
      head.className = "codeblock-head";
      var label = document.createElement("span");
      label.textContent = lang || "code";
      var button = document.createElement("button");
      button.type = "button";
      button.className = "codeblock-copy";
      button.setAttribute("data-action", "copy-code");
      button.textContent = "Copy";
      head.appendChild(label);
      head.appendChild(button);
      pre.parentNode.insertBefore(wrap, pre);
      wrap.appendChild(head);
      wrap.appendChild(pre);
    }
  }

  // --- state -------------------------------------------------------------------------------

  var conversationId = config.conversation;
  var messages = new Map(); // id → {id, role, el, content, seq, status, awaiting, lastFrame}
  var inflight = new Map(); // client_id → {frame, kind, el, oldEls}
  var streamingId = null;
  var socket = null;
  var attempts = 0;
  var reconnectTimer = null;
  var heartbeat = null;
  var watchdog = null;
  var renderQueued = false;
  var retryTimer = null;
  var signedOut = false;
  var lastSent = "";
  var stopWhenStarted = false;
  var titled = !!(config.conversation && ui.title.textContent.trim() !== "Untitled conversation");

  function uuid4() {
    if (window.crypto && window.crypto.randomUUID) return window.crypto.randomUUID();
    var b = new Uint8Array(16);
    window.crypto.getRandomValues(b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    var h = Array.prototype.map.call(b, function (x) { return (x + 0x100).toString(16).slice(1); }).join("");
    return h.slice(0, 8) + "-" + h.slice(8, 12) + "-" + h.slice(12, 16) + "-" + h.slice(16, 20) + "-" + h.slice(20);
  }

  function chatUrl(id) { return config.chatUrl.replace("00000000-0000-0000-0000-000000000000", id); }
  function messageUrl(id) { return chatUrl(conversationId) + "messages/" + id + "/"; }

  function formatCost(cost) {
    var n = Number(cost);
    if (!isFinite(n) || n === 0) return "$0";
    return "$" + n.toFixed(8).replace(/0+$/, "").replace(/\.$/, "");
  }

  // --- the message list --------------------------------------------------------------------

  function nearBottom() {
    return ui.scroll.scrollHeight - ui.scroll.scrollTop - ui.scroll.clientHeight < 80;
  }
  function toBottom() { ui.scroll.scrollTop = ui.scroll.scrollHeight; }

  function part(el, name) { return el.querySelector("[data-" + name + "]"); }

  function buildMessage(role, id, model) {
    var li = document.createElement("li");
    li.className = "msg msg-" + role;
    li.dataset.role = role;
    if (id) li.dataset.id = id;
    var avatar = document.createElement("div");
    avatar.className = "msg-avatar";
    avatar.setAttribute("aria-hidden", "true");
    avatar.textContent = role === "user" ? "You" : "AI";
    var main = document.createElement("div");
    main.className = "msg-main";
    var head = document.createElement("div");
    head.className = "msg-head";
    var who = document.createElement("span");
    who.className = "msg-who";
    who.textContent = role === "user" ? "You" : "Assistant";
    head.appendChild(who);
    if (role === "assistant" && model) {
      var m = document.createElement("span");
      m.className = "msg-model";
      m.textContent = model;
      head.appendChild(m);
    }
    var state = document.createElement("span");
    state.className = "msg-state";
    state.setAttribute("data-state", "");
    head.appendChild(state);
    main.appendChild(head);
    if (role === "assistant") {
      var tools = document.createElement("div");
      tools.className = "msg-tools";
      tools.setAttribute("data-tools", "");
      main.appendChild(tools);
    }
    var body = document.createElement("div");
    body.className = "msg-body " + (role === "user" ? "plain" : "md");
    body.setAttribute("data-body", "");
    main.appendChild(body);
    var error = document.createElement("div");
    error.className = "msg-error";
    error.setAttribute("data-error", "");
    error.hidden = true;
    main.appendChild(error);
    var foot = document.createElement("div");
    foot.className = "msg-foot";
    function action(name, label, title) {
      var b = document.createElement("button");
      b.type = "button";
      b.className = "msg-action";
      b.dataset.action = name;
      b.title = title;
      b.textContent = label;
      foot.appendChild(b);
    }
    if (role === "assistant") {
      var usage = document.createElement("span");
      usage.className = "msg-usage";
      usage.setAttribute("data-usage", "");
      foot.appendChild(usage);
      action("copy", "Copy", "Copy the answer");
      action("regenerate", "Regenerate", "Answer again");
    } else {
      action("edit", "Edit", "Edit and send again");
    }
    main.appendChild(foot);
    li.appendChild(avatar);
    li.appendChild(main);
    return li;
  }

  function append(li) {
    ui.list.appendChild(li);
    ui.empty.hidden = true;
    toBottom();
  }

  function setStatus(m, status) {
    m.status = status;
    m.el.dataset.status = status;
    m.el.setAttribute("aria-busy", status === "streaming" ? "true" : "false");
    m.el.className = m.el.className.replace(/\bstatus-\S+/g, "").trim() + " status-" + status;
    var labels = { streaming: "generating…", cancelled: "stopped", failed: "failed", interrupted: "interrupted" };
    part(m.el, "state").textContent = labels[status] || "";
  }

  function register(el, extra) {
    var m = Object.assign({ id: el.dataset.id, role: el.dataset.role, el: el, content: "", seq: 0, status: el.dataset.status || "complete" }, extra || {});
    messages.set(m.id, m);
    return m;
  }

  function scheduleRender(m) {
    m.dirty = true;
    if (renderQueued) return;
    renderQueued = true;
    window.requestAnimationFrame(function () {
      renderQueued = false;
      var stick = nearBottom();
      messages.forEach(function (item) {
        if (!item.dirty) return;
        item.dirty = false;
        var body = part(item.el, "body");
        body.innerHTML = renderMarkdown(item.content);
        decorateCode(body);
      });
      if (stick) toBottom();
    });
  }

  function showUsage(m, usage) {
    var el = part(m.el, "usage");
    if (!el || !usage) return;
    el.textContent = usage.input_tokens + " in · " + usage.output_tokens + " out · " + formatCost(usage.cost);
  }

  function showMessageError(m, error, status) {
    var el = part(m.el, "error");
    if (!el) return;
    if (error && status !== "cancelled") {
      el.textContent = error.message || error.code;
      el.hidden = false;
    } else {
      el.textContent = "";
      el.hidden = true;
    }
  }

  function refreshActions() {
    var items = ui.list.querySelectorAll("li.msg");
    var idle = !streamingId;
    var lastUser = null;
    for (var i = 0; i < items.length; i++) {
      items[i].classList.remove("can-regenerate", "can-edit");
      if (items[i].dataset.role === "user" && items[i].dataset.id) lastUser = items[i];
    }
    var last = items[items.length - 1];
    if (idle && last && last.dataset.role === "assistant" && last.dataset.id) last.classList.add("can-regenerate");
    if (idle && lastUser) lastUser.classList.add("can-edit");
  }

  function setBusy(busy) {
    if (!busy) stopWhenStarted = false;
    ui.pane.dataset.state = busy ? "streaming" : "idle";
    ui.stop.hidden = !busy;
    ui.stop.disabled = false;
    ui.stop.textContent = "■ Stop";
    updateComposer();
    refreshActions();
  }

  // --- alerts ------------------------------------------------------------------------------

  var ERROR_TEXT = {
    busy: "An answer is already being written in this conversation. Wait for it, or stop it first.",
    budget_exceeded: "Your organization's budget for this period is used up.",
    message_too_long: "This message is too long for your plan.",
    model_not_allowed: "This model is not available on your plan.",
    rate_limited: "Too many requests.",
    not_found: "This conversation no longer exists.",
    provider_error: "The model provider failed.",
  };

  function showAlert(code, message, retryAfter) {
    clearInterval(retryTimer);
    ui.alert.hidden = false;
    ui.alert.dataset.code = code || "error";
    var text = message || ERROR_TEXT[code] || "Something went wrong.";
    if (code === "rate_limited" && retryAfter) {
      var until = Date.now() + retryAfter * 1000;
      var tick = function () {
        var left = Math.ceil((until - Date.now()) / 1000);
        if (left <= 0) {
          clearInterval(retryTimer);
          ui.alertText.textContent = text + " You can send again now.";
          ui.pane.dataset.retry = "";
          updateComposer();
          return;
        }
        ui.alertText.textContent = text + " Try again in " + left + " s.";
      };
      ui.pane.dataset.retry = "wait";
      tick();
      retryTimer = setInterval(tick, 500);
    } else if (code === "budget_exceeded" && retryAfter) {
      ui.alertText.textContent = text;
    } else {
      ui.alertText.textContent = text;
    }
    updateComposer();
  }

  function hideAlert() {
    clearInterval(retryTimer);
    ui.alert.hidden = true;
    ui.pane.dataset.retry = "";
    updateComposer();
  }
  ui.alertClose.addEventListener("click", hideAlert);

  // --- composer ----------------------------------------------------------------------------

  function updateComposer() {
    var length = ui.input.value.length;
    var over = length > config.maxChars;
    ui.count.textContent = length > config.maxChars * 0.8 ? length.toLocaleString() + " / " + config.maxChars.toLocaleString() : "";
    ui.count.classList.toggle("over", over);
    var online = socket && socket.readyState === 1;
    ui.send.disabled = !online || !!streamingId || over || !ui.input.value.trim() || ui.pane.dataset.retry === "wait";
  }

  function autosize() {
    ui.input.style.height = "auto";
    ui.input.style.height = Math.min(ui.input.scrollHeight, 240) + "px";
  }

  ui.input.addEventListener("input", function () { autosize(); updateComposer(); });
  ui.input.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      submit();
    }
  });
  ui.form.addEventListener("submit", function (event) { event.preventDefault(); submit(); });
  ui.stop.addEventListener("click", function () {
    if (!streamingId) return;
    ui.stop.disabled = true;
    ui.stop.textContent = "Stopping…";
    if (streamingId === "pending") {
      stopWhenStarted = true; // the answer has no id yet: stop it as soon as it starts
      return;
    }
    send({ type: "generation.stop", message: streamingId });
  });

  function send(frame) {
    if (socket && socket.readyState === 1) {
      socket.send(JSON.stringify(frame));
      return true;
    }
    return false;
  }

  function dispatch(clientId, entry) {
    inflight.set(clientId, entry);
    send(entry.frame); // when offline, it is sent on reconnect
  }

  function submit() {
    var content = ui.input.value;
    if (!content.trim() || ui.send.disabled) return;
    if (content.length > config.maxChars) {
      showAlert("message_too_long", "Your message has " + content.length + " characters; your plan allows " + config.maxChars + ".");
      return;
    }
    hideAlert();
    var clientId = uuid4();
    lastSent = content.trim();
    var li = buildMessage("user", null);
    li.classList.add("pending");
    part(li, "body").textContent = content;
    append(li);
    ui.input.value = "";
    autosize();
    var model = ui.model ? ui.model.value : "";
    var entry = { kind: "send", el: li, content: content, frame: null };
    streamingId = "pending";
    setBusy(true);
    var persona = ui.persona ? ui.persona.value : "";
    var go = function () {
      entry.frame = { type: "message.send", conversation: conversationId, content: content, client_id: clientId };
      if (model) entry.frame.model = model;
      dispatch(clientId, entry);
    };
    if (!conversationId && persona) {
      startConversation(model, persona).then(go, function (error) {
        failSend(entry, error.code, error.message);
      });
    } else {
      go();
    }
  }

  function startConversation(model, persona) {
    var body = new URLSearchParams({ model: model, persona: persona });
    return fetch(config.startUrl, {
      method: "POST", body: body, credentials: "same-origin",
      headers: { "X-CSRFToken": csrfInput ? csrfInput.value : "" },
    }).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (data) {
        if (!response.ok || !data.id) {
          throw { code: data.code || "error", message: data.message || "The conversation could not be started. Reload the page and try again." };
        }
        conversationCreated({ id: data.id });
        return data;
      });
    }, function () {
      throw { code: "error", message: "The server could not be reached." };
    });
  }

  function failSend(entry, code, message, retryAfter) {
    if (entry.kind === "send") {
      if (entry.el && entry.el.parentNode) entry.el.parentNode.removeChild(entry.el);
      if (!ui.input.value) { ui.input.value = entry.content; autosize(); }
      if (!ui.list.querySelector("li.msg")) ui.empty.hidden = false;
    } else if (entry.kind === "edit") {
      entry.oldEls.forEach(function (el) { el.classList.remove("pending"); });
    } else if (entry.kind === "regenerate") {
      entry.oldEls.forEach(function (el) { el.classList.remove("pending"); });
    }
    if (streamingId === "pending") streamingId = null;
    setBusy(!!streamingId);
    showAlert(code, message, retryAfter);
  }

  // --- message actions ---------------------------------------------------------------------

  function copyText(text, button) {
    var done = function () {
      var old = button.textContent;
      button.textContent = "Copied";
      setTimeout(function () { button.textContent = old; }, 1200);
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, function () { fallbackCopy(text); done(); });
    } else {
      fallbackCopy(text);
      done();
    }
  }
  function fallbackCopy(text) {
    var area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.appendChild(area);
    area.select();
    try { document.execCommand("copy"); } catch (e) { /* nothing more to try */ }
    document.body.removeChild(area);
  }

  ui.list.addEventListener("click", function (event) {
    var button = event.target.closest("button[data-action]");
    if (!button) return;
    var li = button.closest("li.msg");
    var action = button.dataset.action;
    if (action === "copy-code") {
      var code = button.closest(".codeblock").querySelector("pre");
      copyText(code.innerText, button);
    } else if (action === "copy") {
      var m = messages.get(li.dataset.id);
      copyText(m && m.content ? m.content : part(li, "body").innerText, button);
    } else if (action === "regenerate") {
      regenerate(li);
    } else if (action === "edit") {
      startEdit(li);
    } else if (action === "edit-cancel") {
      cancelEdit(li);
    } else if (action === "edit-send") {
      sendEdit(li);
    }
  });

  function regenerate(li) {
    if (streamingId || !conversationId) return;
    hideAlert();
    var clientId = uuid4();
    li.classList.add("pending");
    streamingId = "pending";
    setBusy(true);
    var frame = { type: "message.regenerate", conversation: conversationId, client_id: clientId };
    if (ui.model && ui.model.value) frame.model = ui.model.value;
    dispatch(clientId, { kind: "regenerate", frame: frame, oldEls: [li] });
  }

  function startEdit(li) {
    if (streamingId || li.querySelector(".msg-edit")) return;
    var body = part(li, "body");
    var editor = document.createElement("div");
    editor.className = "msg-edit";
    var area = document.createElement("textarea");
    area.value = body.textContent;
    area.rows = Math.min(10, area.value.split("\n").length + 1);
    var bar = document.createElement("div");
    bar.className = "msg-edit-bar";
    var cancel = document.createElement("button");
    cancel.type = "button";
    cancel.className = "button";
    cancel.dataset.action = "edit-cancel";
    cancel.textContent = "Cancel";
    var save = document.createElement("button");
    save.type = "button";
    save.className = "button primary";
    save.dataset.action = "edit-send";
    save.textContent = "Send";
    bar.appendChild(cancel);
    bar.appendChild(save);
    editor.appendChild(area);
    editor.appendChild(bar);
    body.hidden = true;
    body.parentNode.insertBefore(editor, body.nextSibling);
    li.classList.add("editing");
    area.addEventListener("keydown", function (event) {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) { event.preventDefault(); sendEdit(li); }
      if (event.key === "Escape") cancelEdit(li);
    });
    area.focus();
  }

  function cancelEdit(li) {
    var editor = li.querySelector(".msg-edit");
    if (editor) editor.parentNode.removeChild(editor);
    part(li, "body").hidden = false;
    li.classList.remove("editing");
  }

  function sendEdit(li) {
    var area = li.querySelector(".msg-edit textarea");
    if (!area || streamingId) return;
    var content = area.value;
    if (!content.trim()) return;
    if (content.length > config.maxChars) {
      showAlert("message_too_long", "Your message has " + content.length + " characters; your plan allows " + config.maxChars + ".");
      return;
    }
    cancelEdit(li);
    hideAlert();
    var oldEls = [li];
    for (var next = li.nextElementSibling; next; next = next.nextElementSibling) oldEls.push(next);
    oldEls.forEach(function (el) { el.classList.add("pending"); });
    var clientId = uuid4();
    streamingId = "pending";
    setBusy(true);
    dispatch(clientId, {
      kind: "edit", content: content, oldEls: oldEls,
      frame: { type: "message.edit", message: li.dataset.id, content: content, client_id: clientId },
    });
  }

  // --- frames ------------------------------------------------------------------------------

  function conversationCreated(conversation) {
    conversationId = conversation.id;
    history.replaceState(null, "", chatUrl(conversation.id));
    if (ui.personaPicker) ui.personaPicker.hidden = true;
    if (ui.recent && !ui.recent.querySelector('a[href="' + chatUrl(conversation.id) + '"]')) {
      var item = document.createElement("li");
      var link = document.createElement("a");
      link.href = chatUrl(conversation.id);
      link.setAttribute("aria-current", "page");
      var snippet = lastSent.length > 60 ? lastSent.slice(0, 59) + "…" : lastSent;
      link.textContent = conversation.title || snippet || "New conversation";
      item.appendChild(link);
      var placeholder = ui.recent.querySelector(".chat-recent-empty");
      if (placeholder) placeholder.parentNode.removeChild(placeholder);
      ui.recent.insertBefore(item, ui.recent.firstChild);
    }
  }

  function onMessageCreated(message) {
    var entry = message.client_id ? inflight.get(message.client_id) : null;
    if (entry) inflight.delete(message.client_id);
    if (messages.has(message.id)) return;
    var li;
    if (entry && entry.kind === "send") {
      li = entry.el;
    } else {
      if (entry && entry.kind === "edit") {
        entry.oldEls.forEach(function (el) {
          if (el.parentNode) el.parentNode.removeChild(el);
          messages.delete(el.dataset.id);
        });
      }
      li = buildMessage("user", message.id);
      part(li, "body").textContent = message.content;
      append(li);
    }
    li.dataset.id = message.id;
    li.classList.remove("pending");
    register(li, { content: message.content, status: "complete" });
  }

  function onStarted(message) {
    if (conversationId && message.conversation !== conversationId) return;
    inflight.forEach(function (entry, clientId) {
      if (entry.kind === "regenerate") {
        entry.oldEls.forEach(function (el) {
          if (el.parentNode) el.parentNode.removeChild(el);
          messages.delete(el.dataset.id);
        });
        inflight.delete(clientId);
      }
    });
    var m = messages.get(message.id);
    if (!m) {
      var li = buildMessage("assistant", message.id, message.model);
      append(li);
      m = register(li, { content: "", seq: 0 });
    }
    m.lastFrame = Date.now();
    setStatus(m, "streaming");
    streamingId = message.id;
    setBusy(true);
    armWatchdog();
    if (stopWhenStarted) {
      stopWhenStarted = false;
      ui.stop.click();
    }
  }

  function onDelta(frame) {
    var m = messages.get(frame.message);
    if (!m || m.status !== "streaming") return;
    m.lastFrame = Date.now();
    if (frame.seq <= m.seq) return; // seen already
    if (frame.seq !== m.seq + 1) {
      // A gap: the socket or the channel layer lost frames. Resubscribing with the seq we have
      // replays the deltas after it (or sends a snapshot); later deltas wait for that.
      if (!m.awaiting) {
        m.awaiting = true;
        send({ type: "conversation.subscribe", conversation: conversationId, after_seq: m.seq });
      }
      return;
    }
    m.awaiting = false;
    m.seq = frame.seq;
    m.content += frame.text;
    scheduleRender(m);
  }

  function onSnapshot(frame) {
    var m = messages.get(frame.message);
    if (!m || m.status !== "streaming") return;
    m.lastFrame = Date.now();
    m.awaiting = false;
    m.seq = frame.seq;
    m.content = frame.content;
    scheduleRender(m);
  }

  function onToolCall(frame) {
    var m = messages.get(frame.message);
    if (!m) return;
    var tools = part(m.el, "tools");
    if (tools.querySelector('[data-call="' + CSS.escape(String(frame.call.id)) + '"]')) return;
    var details = document.createElement("details");
    details.className = "tool";
    details.dataset.call = frame.call.id;
    var summary = document.createElement("summary");
    summary.appendChild(document.createTextNode("Using "));
    var name = document.createElement("code");
    name.textContent = frame.call.name;
    summary.appendChild(name);
    details.appendChild(summary);
    var io = document.createElement("div");
    io.className = "tool-io";
    io.appendChild(toolRow("arguments", frame.call.arguments));
    details.appendChild(io);
    tools.appendChild(details);
  }

  function toolRow(label, value) {
    var row = document.createElement("div");
    var span = document.createElement("span");
    span.textContent = label;
    var code = document.createElement("code");
    code.textContent = typeof value === "string" ? value : JSON.stringify(value);
    row.appendChild(span);
    row.appendChild(code);
    return row;
  }

  function onToolResult(frame) {
    var m = messages.get(frame.message);
    if (!m) return;
    var details = part(m.el, "tools").querySelector('[data-call="' + CSS.escape(String(frame.call_id)) + '"]');
    if (!details || details.querySelector(".tool-result")) return;
    var row = toolRow("result", frame.result);
    row.className = "tool-result";
    details.querySelector(".tool-io").appendChild(row);
    details.querySelector("summary").firstChild.textContent = "Used ";
  }

  function finish(m, data) {
    m.content = data.content || "";
    m.awaiting = false;
    setStatus(m, data.status);
    showUsage(m, data.usage);
    showMessageError(m, data.error, data.status);
    if (data.html !== undefined) {
      m.dirty = false;
      var body = part(m.el, "body");
      body.innerHTML = data.html; // sanitized by the server (conversations/markdown.py)
      decorateCode(body);
    } else {
      scheduleRender(m);
    }
    if (streamingId === m.id) {
      streamingId = null;
      setBusy(false);
    }
    refreshActions();
  }

  var stats = { finished: 0, mismatched: 0 };

  function onFinished(message) {
    var m = messages.get(message.id);
    if (!m) return;
    // Told already (or shown finished from the page): subscribing tells the last answer's end again.
    if (m.status !== "streaming") return;
    m.finishedSeen = true;
    // The protocol's invariant: the deltas (or a snapshot and the deltas after it) add up to the content.
    stats.finished += 1;
    if (m.content !== (message.content || "")) stats.mismatched += 1;
    finish(m, message);
    // Swap in the server's rendering (code highlighting; identical to a reload).
    fetchMessage(message.id).then(function (data) {
      if (data && messages.get(data.id) === m && data.status === message.status) {
        finish(m, data);
        if (data.conversation_title) {
          setTitle(data.conversation_title);
        } else if (!titled) {
          // A new conversation is titled in the background just after its first answer.
          setTimeout(function () {
            fetchMessage(message.id).then(function (later) {
              if (later && later.conversation_title) setTitle(later.conversation_title);
            });
          }, 2500);
        }
      }
    });
  }

  function setTitle(title) {
    if (!title) return;
    titled = true;
    ui.title.textContent = title;
    document.title = title + " · Parley";
    var link = ui.recent && conversationId ? ui.recent.querySelector('a[href="' + chatUrl(conversationId) + '"]') : null;
    if (link) link.textContent = title;
  }

  var lastErrorFrame = null;  // the error frame a refusing close (4403) follows, if any

  function onError(frame) {
    lastErrorFrame = frame;
    var entry = frame.client_id ? inflight.get(frame.client_id) : null;
    if (entry) {
      inflight.delete(frame.client_id);
      failSend(entry, frame.code, frame.message, frame.retry_after);
      return;
    }
    if (frame.code === "not_found" && streamingId && streamingId !== "pending") {
      // The answer we followed is gone (deleted elsewhere).
      streamingId = null;
      setBusy(false);
    }
    showAlert(frame.code, frame.message, frame.retry_after);
  }

  var handlers = {
    "conversation.created": function (f) { conversationCreated(f.conversation); },
    "message.created": function (f) { onMessageCreated(f.message); },
    "generation.started": function (f) { onStarted(f.message); },
    "delta": onDelta,
    "message.snapshot": onSnapshot,
    "tool.call": onToolCall,
    "tool.result": onToolResult,
    "generation.finished": function (f) { onFinished(f.message); },
    "error": onError,
    "pong": function () { pongAt = Date.now(); },
  };

  // --- the socket --------------------------------------------------------------------------

  var pingAt = 0;
  var pongAt = 0;

  function setConn(state, text) {
    ui.conn.dataset.conn = state;
    ui.conn.textContent = text || state;
    updateComposer();
  }

  function connect() {
    clearTimeout(reconnectTimer);
    if (signedOut) return;
    setConn("connecting", "connecting…");
    var url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + config.socketPath;
    var ws = new WebSocket(url);
    socket = ws;
    ws.onopen = function () {
      if (socket !== ws) return;
      attempts = 0;
      setConn("online", "connected");
      onConnected();
      startHeartbeat(ws);
    };
    ws.onmessage = function (event) {
      var frame;
      try { frame = JSON.parse(event.data); } catch (e) { return; }
      if (frame.type === "delta" && window.parleyChat.loseDeltas > 0) {
        window.parleyChat.loseDeltas -= 1; // tests: simulate frames lost on the way
        return;
      }
      var handler = handlers[frame.type];
      if (handler) handler(frame);
    };
    ws.onclose = function (event) {
      clearInterval(heartbeat);
      if (socket !== ws) return;
      socket = null;
      if (event.code === 4401) {
        signedOut = true;
        setConn("offline", "signed out");
        showAlert("unauthenticated", "You are signed out. Log in again to keep chatting.");
        return;
      }
      if (event.code === 4403) {
        // No longer a member of this organization (or no access): reconnecting cannot help.
        signedOut = true;
        if (lastErrorFrame && lastErrorFrame.code === "organization_suspended") {
          setConn("offline", "suspended");
          showAlert(lastErrorFrame.code, lastErrorFrame.message);
          return;
        }
        setConn("offline", "no access");
        showAlert("permission_denied", "You no longer have access to this organization. Reload the page.");
        return;
      }
      scheduleReconnect();
    };
  }

  function scheduleReconnect() {
    var delay = Math.min(30000, 500 * Math.pow(2, attempts)) * (0.8 + Math.random() * 0.4);
    attempts += 1;
    setConn("offline", "reconnecting…");
    reconnectTimer = setTimeout(connect, delay);
  }

  function onConnected() {
    if (conversationId) {
      var frame = { type: "conversation.subscribe", conversation: conversationId };
      var m = streamingId && messages.get(streamingId);
      if (m) {
        frame.after_seq = m.seq;
        m.awaiting = false;
      }
      send(frame);
      if (m) reconcile(m);
    }
    inflight.forEach(function (entry) { if (entry.frame) send(entry.frame); });
  }

  function startHeartbeat(ws) {
    clearInterval(heartbeat);
    pongAt = Date.now();
    heartbeat = setInterval(function () {
      if (ws.readyState !== 1) return;
      if (pingAt > pongAt && Date.now() - pingAt > 10000) {
        ws.close(); // no pong: the connection is dead without having said so
        return;
      }
      pingAt = Date.now();
      ws.send(JSON.stringify({ type: "ping" }));
    }, 25000);
  }

  function fetchMessage(id) {
    if (!conversationId) return Promise.resolve(null);
    return fetch(messageUrl(id), { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) { return response.ok ? response.json() : null; })
      .catch(function () { return null; });
  }

  // The stream may have ended while we were away (no snapshot comes then): the database knows.
  function reconcile(m) {
    fetchMessage(m.id).then(function (data) {
      if (data && data.status !== "streaming" && m.status === "streaming") {
        m.finishedSeen = true;
        finish(m, data);
      }
    });
  }

  function armWatchdog() {
    clearInterval(watchdog);
    watchdog = setInterval(function () {
      var m = streamingId && messages.get(streamingId);
      if (!m) { clearInterval(watchdog); return; }
      if (Date.now() - (m.lastFrame || 0) > 15000 && socket && socket.readyState === 1) {
        m.lastFrame = Date.now();
        m.awaiting = false;
        send({ type: "conversation.subscribe", conversation: conversationId, after_seq: m.seq });
        reconcile(m);
      }
    }, 5000);
  }

  window.addEventListener("online", function () { if (!socket) { attempts = 0; connect(); } });

  // --- start -------------------------------------------------------------------------------

  var items = ui.list.querySelectorAll("li.msg");
  for (var i = 0; i < items.length; i++) {
    var m = register(items[i]);
    decorateCode(part(items[i], "body"));
    if (config.streaming && m.id === config.streaming.id) {
      m.content = config.streaming.content;
      m.seq = config.streaming.seq;
      setStatus(m, "streaming");
      m.lastFrame = Date.now();
      streamingId = m.id;
    }
  }
  document.addEventListener("submit", function (event) {
    var message = event.target.getAttribute("data-confirm");
    if (message && !window.confirm(message)) event.preventDefault();
    if (event.target.id === "chat-rename") {
      var field = event.target.querySelector("input[name=title]");
      var title = window.prompt("Rename this conversation", ui.title.textContent.trim());
      if (title === null || !title.trim()) event.preventDefault();
      else field.value = title.trim();
    }
  });
  ui.empty.addEventListener("click", function (event) {
    var button = event.target.closest("[data-prompt]");
    if (!button) return;
    ui.input.value = button.dataset.prompt;
    autosize();
    updateComposer();
    ui.input.focus();
  });
  document.addEventListener("keydown", function (event) {
    if (event.key === "Escape" && streamingId && !ui.stop.hidden && !document.querySelector(".msg-edit")) ui.stop.click();
  });
  setBusy(!!streamingId);
  if (streamingId) armWatchdog();
  toBottom();
  connect();
  ui.input.focus();

  // For tests and debugging: the live socket, and a way to drop it.
  window.parleyChat = {
    get socket() { return socket; },
    get conversation() { return conversationId; },
    stats: stats,
    loseDeltas: 0,
    dropConnection: function () { if (socket) socket.close(); },
  };
})();
