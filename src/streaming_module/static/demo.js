// The streaming_module demo page: choose an execution id, subscribe over the WebSocket, then
// start the run with POST /executions. Frames are applied exactly once, in sequence order; after
// a dropped connection the page reconnects with backoff and resumes from its last sequence.
(function () {
  "use strict";

  var params = new URLSearchParams(window.location.search);
  var token = params.get("token");
  function socketUrl() {
    return (window.location.protocol === "https:" ? "wss://" : "ws://") + window.location.host +
      "/ws" + (token ? "?token=" + encodeURIComponent(token) : "");
  }

  // Tokens expire, and the server closes a socket at its token's exp (4401 "token expired"):
  // at 80% of the token's life, trade it for a fresh one (POST /auth/refresh, offered by
  // 'streaming-module demo --jwt-secret'); the closed socket then reconnects with it and resumes.
  function refreshToken() {
    return fetch("/auth/refresh", { method: "POST", headers: authHeaders() })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (body) {
        if (body && body.token) { token = body.token; scheduleRefresh(body.expiresAt); }
        return !!(body && body.token);
      }, function () { return false; });
  }
  function scheduleRefresh(expiresAt) {
    if (!token || !expiresAt) return;
    window.setTimeout(refreshToken, Math.max(1000, (expiresAt * 1000 - Date.now()) * 0.8));
  }
  if (token) {
    try {
      var claims = JSON.parse(atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
      scheduleRefresh(claims.exp);
    } catch (e) { /* not a JWT we can read: the server will say */ }
  }

  var MAX_RECONNECTS = 12;
  var MAX_LOG_ENTRIES = 300;
  var FINAL = { completed: true, failed: true, cancelled: true };
  // Where each node of the demo workflow sits on the overall progress bar.
  var STAGES = {
    generateContent: { from: 0, to: 88, label: "generating content" },
    processTokens: { from: 88, to: 97, label: "processing tokens" },
    qualityCheck: { from: 97, to: 100, label: "quality check" }
  };

  var $ = function (id) { return document.getElementById(id); };
  var el = {
    form: $("compose-form"), prompt: $("prompt"), words: $("words"), start: $("start"),
    output: $("output"), progress: $("progress"), bar: document.querySelector("#progress .bar"),
    progressText: $("progress-text"), stage: $("stage"), eta: $("eta"), status: $("status"),
    executionId: $("execution-id"), log: $("event-log"), connection: $("connection"),
    wordCount: $("stat-words"), frames: $("stat-frames"), seq: $("stat-seq"),
    reconnects: $("stat-reconnects"), clearLog: $("clear-log")
  };

  var NOT_AUTHORIZED = token
    ? "not authorized: the token in this page's address was refused (expired?)"
    : "not authorized: this server needs a token";
  // What the stage tells the user to do about it.
  var TOKEN_ADVICE = token
    ? "The token in this address was refused (expired?): get a new one with " +
      "'streaming-module token --jwt-secret SECRET' and open this page with ?token=<JWT>."
    : "This server needs a token: open the URL 'streaming-module demo --jwt-secret …' " +
      "printed, or add ?token=<JWT> to this address ('streaming-module token --jwt-secret " +
      "SECRET' prints one).";

  var run = null; // the current run's state, see newRun()

  function authHeaders() {
    return token ? { Authorization: "Bearer " + token } : {};
  }

  function newRun(executionId) {
    return {
      id: executionId, socket: null, lastSequence: 0, posted: false, finished: false,
      attempts: 0, reconnects: 0, timer: null, progress: 0, words: 0, frames: 0,
      duplicates: 0, pendingText: "", textNode: null, flushScheduled: false,
      // ETA: when the node should be done (performance.now() ms; null: estimating, undefined:
      // no estimate yet), and the smallest "now - frame timestamp" seen, i.e. the clock skew
      // plus the least latency.
      etaDeadline: undefined, clockOffset: Infinity
    };
  }

  function newExecutionId() {
    if (window.crypto && typeof window.crypto.randomUUID === "function") {
      return "demo-" + window.crypto.randomUUID().slice(0, 13);
    }
    return "demo-" + Math.random().toString(36).slice(2, 10) + Date.now().toString(36).slice(-4);
  }

  // ---------------------------------------------------------------- view helpers

  function clock() {
    var d = new Date();
    var pad = function (n) { return (n < 10 ? "0" : "") + n; };
    return pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
  }

  function log(kind, message) {
    var li = document.createElement("li");
    li.setAttribute("data-kind", kind);
    var time = document.createElement("time");
    time.textContent = clock();
    var badge = document.createElement("span");
    badge.className = "kind";
    badge.textContent = kind;
    var msg = document.createElement("span");
    msg.className = "msg";
    msg.textContent = message;
    li.appendChild(time);
    li.appendChild(badge);
    li.appendChild(msg);
    var stick = el.log.scrollHeight - el.log.scrollTop - el.log.clientHeight < 40;
    el.log.appendChild(li);
    while (el.log.childElementCount > MAX_LOG_ENTRIES) el.log.removeChild(el.log.firstElementChild);
    if (stick) el.log.scrollTop = el.log.scrollHeight;
    return msg;
  }

  function setStage(text, state) {
    el.stage.textContent = text;
    el.stage.setAttribute("data-state", state || "");
  }

  function setConnection(state, label) {
    el.connection.setAttribute("data-state", state);
    el.connection.querySelector(".label").textContent = label;
  }

  function setStatus(state) {
    el.status.textContent = state;
    el.status.setAttribute("data-state", state);
  }

  function setProgress(percent) {
    var value = Math.max(0, Math.min(100, Math.round(percent)));
    el.progress.setAttribute("aria-valuenow", String(value));
    el.bar.style.width = value + "%";
    el.progressText.textContent = value + "%";
  }

  // The ETA counts down between progress frames, so it keeps moving while the connection is
  // down (no frames) and resumes from the replayed frames, aged by their timestamps.
  function noteEta(seconds, timestamp) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) {
      run.etaDeadline = null;
    } else {
      var sent = Date.parse(timestamp);
      var age = 0;
      if (isFinite(sent)) {
        var delay = Date.now() - sent;
        if (delay < run.clockOffset) run.clockOffset = delay;
        age = delay - run.clockOffset; // ~0 live, the frame's age when replayed
      }
      run.etaDeadline = performance.now() - age + seconds * 1000;
    }
    renderEta();
  }

  function renderEta() {
    if (!run || run.finished || run.etaDeadline === undefined) return;
    setEta(run.etaDeadline === null ? null
      : Math.max(0, (run.etaDeadline - performance.now()) / 1000));
  }

  function setEta(seconds) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) {
      el.eta.textContent = "ETA estimating…";
    } else if (seconds < 1) {
      el.eta.textContent = "ETA <1 s";
    } else if (seconds < 90) {
      el.eta.textContent = "ETA " + Math.round(seconds) + " s";
    } else {
      el.eta.textContent = "ETA " + Math.round(seconds / 60) + " min";
    }
  }

  function updateStats() {
    el.wordCount.textContent = run.words.toLocaleString("en");
    el.frames.textContent = String(run.frames);
    el.seq.textContent = String(run.lastSequence);
    el.reconnects.textContent = String(run.reconnects);
  }

  // Text arrives in many small frames: append it once per animation frame.
  function appendText(text) {
    run.pendingText += text;
    if (!run.flushScheduled) {
      run.flushScheduled = true;
      window.requestAnimationFrame(flushText);
    }
  }

  function flushText() {
    if (!run) return;
    run.flushScheduled = false;
    if (!run.pendingText) return;
    var stick = el.output.scrollHeight - el.output.scrollTop - el.output.clientHeight < 40;
    if (!run.textNode) {
      run.textNode = document.createTextNode("");
      el.output.appendChild(run.textNode);
      el.output.setAttribute("data-empty", "false");
    }
    run.textNode.appendData(run.pendingText);
    run.pendingText = "";
    if (stick) el.output.scrollTop = el.output.scrollHeight;
  }

  // ---------------------------------------------------------------- frames

  function onProgress(payload, timestamp) {
    var percent = Number(payload.progress) || 0;
    var nodeId = payload.nodeId || payload.node_id;
    var stage = nodeId && STAGES[nodeId];
    var overall = stage ? stage.from + (stage.to - stage.from) * (percent / 100) : percent;
    if (overall > run.progress) run.progress = overall;
    setProgress(run.progress);
    if (stage) setStage(stage.label);
    // The run-wide tracker (no nodeId) counts nodes, so its ETA is coarse: prefer the node's.
    if (nodeId && "eta" in payload) noteEta(payload.eta, timestamp);
  }

  function describeEvent(payload) {
    var type = payload.eventType || payload.type || "event";
    var data = payload.data || {};
    var node = payload.nodeId || data.nodeId || data.node_id || data.node || "";
    var text = type + (node ? " · " + node : "");
    var update = data && typeof data === "object" && (data.update || data);
    if (update && typeof update === "object" && "qualityScore" in update) {
      text += " · quality " + Number(update.qualityScore).toFixed(2);
    }
    return text;
  }

  function onStatus(payload) {
    var status = payload.status;
    if (status === "started") {
      setStatus("running");
      el.output.classList.add("streaming");
      log("status", "run started");
      return;
    }
    if (!FINAL[status]) return;
    flushText();
    run.finished = true;
    el.output.classList.remove("streaming");
    el.start.disabled = false;
    if (status === "completed") {
      run.progress = 100;
      setProgress(100);
      el.eta.textContent = "done";
      setStage("finished");
    } else {
      el.eta.textContent = "ETA —";
      setStage(status, "error");
    }
    setStatus(status);
    log("status", "run " + status + (payload.error ? ": " + payload.error : "") +
      " · " + run.words + " words in " + run.frames + " frames, " + run.duplicates +
      " duplicates dropped");
    if (run.socket) run.socket.close(1000, "run finished");
    setConnection("idle", "idle");
  }

  function onFrame(frame) {
    var seq = frame.sequence;
    if (typeof seq === "number") {
      if (seq <= run.lastSequence) { run.duplicates += 1; return; } // already applied
      run.lastSequence = seq;
    }
    run.frames += 1;
    var payload = frame.payload || {};
    switch (frame.type) {
      case "token":
        var content = typeof payload.content === "string" ? payload.content : "";
        run.words += (content.match(/\S+/g) || []).length;
        appendText(content);
        break;
      case "progress":
        onProgress(payload, frame.timestamp);
        break;
      case "event":
        log("event", describeEvent(payload));
        break;
      case "status":
        onStatus(payload);
        break;
      case "gap":
        var from = payload.from !== undefined ? payload.from : frame.from;
        var to = payload.to !== undefined ? payload.to : frame.to;
        if (typeof to === "number" && to > run.lastSequence) run.lastSequence = to;
        log("gap", "frames " + from + "–" + to + " are no longer available; continuing after " + to);
        break;
      case "workflow_update":
        log("event", "workflow update " + JSON.stringify(payload).slice(0, 120));
        break;
      default:
        break;
    }
    updateStats();
  }

  function onMessage(event) {
    var frame;
    try { frame = JSON.parse(event.data); } catch (e) { return; }
    if (!frame || typeof frame !== "object" || !run) return;
    switch (frame.type) {
      case "subscribed":
        if (!run.posted) {
          run.posted = true;
          log("conn", "subscribed to " + run.id);
          startExecution();
        } else {
          log("resume", "resubscribed · replaying after #" + run.lastSequence);
        }
        return;
      case "error":
        var p = frame.payload || {};
        log("error", (p.code || "error") + ": " + (p.message || "server error"));
        if (p.code === "unauthorized") fail(NOT_AUTHORIZED, TOKEN_ADVICE);
        else if (p.code === "forbidden") fail(p.message || p.code, "this token may not watch that run");
        return;
      case "pong":
      case "unsubscribed":
        return;
      default:
        if (frame.executionId && frame.executionId !== run.id) return;
        onFrame(frame);
    }
  }

  // ---------------------------------------------------------------- connection

  function connect() {
    var current = run;
    setConnection(current.reconnects || current.attempts ? "reconnecting" : "connecting",
      current.attempts ? "reconnecting…" : "connecting…");
    var socket;
    try {
      socket = new WebSocket(socketUrl());
      var used = token;
    } catch (e) {
      scheduleReconnect(current, "could not open: " + e.message);
      return;
    }
    current.socket = socket;
    socket.onopen = function () {
      if (run !== current) { socket.close(1000); return; }
      var resuming = current.attempts > 0;
      current.attempts = 0;
      setConnection("open", "connected");
      if (resuming) {
        current.reconnects += 1;
        updateStats();
        log("resume", "reconnected · resuming from sequence " + current.lastSequence);
      }
      socket.send(JSON.stringify({
        type: "subscribe_execution",
        payload: {
          executionId: current.id,
          events: ["token", "event", "progress", "status"],
          lastSequence: current.lastSequence
        }
      }));
    };
    socket.onmessage = function (event) { if (run === current) onMessage(event); };
    var opened = false;
    socket.addEventListener("open", function () { opened = true; });
    socket.onclose = function (event) {
      if (run !== current || current.finished) return;
      if (event.code === 4401) {
        var renewed = event.reason === "token expired"
          ? (token !== used ? Promise.resolve(true) : refreshToken()) : Promise.resolve(false);
        renewed.then(function (ok) {
          if (run !== current || current.finished) return;
          if (ok) scheduleReconnect(current, "token expired · reconnecting with a fresh one");
          else fail(NOT_AUTHORIZED, TOKEN_ADVICE);
        });
        return;
      }
      if (event.code === 4403) {
        fail("forbidden: this token may not watch that execution",
          "this token may not watch that run");
        return;
      }
      if (opened) {
        scheduleReconnect(current, "connection lost (code " + event.code + ")");
        return;
      }
      // Refused before opening: browsers hide the HTTP status of a refused upgrade, so ask
      // the HTTP API (same token) whether the token is the problem before retrying.
      fetch("/executions/" + encodeURIComponent(current.id), { headers: authHeaders() })
        .then(function (response) {
          if (run !== current || current.finished) return;
          if (response.status === 401) fail(NOT_AUTHORIZED, TOKEN_ADVICE);
          else scheduleReconnect(current, "could not connect");
        }, function () {
          if (run === current) scheduleReconnect(current, "server unreachable");
        });
    };
  }

  function scheduleReconnect(current, reason) {
    if (current.finished || current.timer) return;
    if (current.attempts >= MAX_RECONNECTS) {
      fail("gave up after " + MAX_RECONNECTS + " reconnect attempts",
        "the server is unreachable: start a new run when it is back");
      return;
    }
    // Exponential backoff with jitter: 250 ms, 500 ms, 1 s, ... capped at 8 s.
    var base = Math.min(8000, 250 * Math.pow(2, current.attempts));
    var delay = Math.round(base * (0.5 + Math.random() / 2));
    current.attempts += 1;
    setConnection("reconnecting", "reconnecting…");
    log("conn", reason + " · reconnecting in " + delay + " ms (attempt " + current.attempts + ")");
    current.timer = window.setTimeout(function () {
      current.timer = null;
      if (run === current && !current.finished) connect();
    }, delay);
  }

  // Ends the run: ``message`` goes to the log, ``advice`` (what to do now) to the stage.
  function fail(message, advice) {
    if (!run) return;
    run.finished = true;
    if (run.timer) { window.clearTimeout(run.timer); run.timer = null; }
    if (run.socket) run.socket.close(1000);
    el.output.classList.remove("streaming");
    el.start.disabled = false;
    el.eta.textContent = "ETA —";
    setStage(advice || message, "error");
    setStatus("error");
    setConnection("failed", "disconnected");
    log("error", message);
  }

  // ---------------------------------------------------------------- HTTP

  function startExecution() {
    var current = run;
    // Logged now, completed in place when the answer comes: the server accepts the run before
    // its first frame, which may well arrive before this answer.
    var line = log("conn", "POST /executions · starting the run…");
    var headers = authHeaders();
    headers["Content-Type"] = "application/json";
    fetch("/executions", {
      method: "POST",
      headers: headers,
      body: JSON.stringify({
        prompt: el.prompt.value,
        executionId: current.id,
        words: parseInt(el.words.value, 10) || 300
      })
    }).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (body) {
        if (run !== current) return;
        if (response.status === 202) {
          line.textContent = "POST /executions → 202 · run accepted";
          if (el.status.textContent === "connecting") setStatus("running");
        } else {
          line.textContent = "POST /executions → " + response.status;
          var reason = (body && (body.message || body.code)) || response.statusText;
          if (response.status === 401) fail(NOT_AUTHORIZED + ": " + reason, TOKEN_ADVICE);
          else fail("POST /executions → " + response.status + ": " + reason);
        }
      });
    }).catch(function (e) {
      if (run === current) fail("POST /executions failed: " + e.message);
    });
  }

  // ---------------------------------------------------------------- start

  function start() {
    if (!el.prompt.value.trim()) {
      el.prompt.focus();
      return;
    }
    if (run) {
      run.finished = true;
      if (run.timer) window.clearTimeout(run.timer);
      if (run.socket) run.socket.close(1000);
    }
    run = newRun(newExecutionId());
    el.output.textContent = "";
    el.output.setAttribute("data-empty", "true");
    el.output.classList.remove("streaming");
    el.executionId.textContent = run.id;
    el.start.disabled = true;
    setStage("connecting");
    el.eta.textContent = "ETA —";
    setProgress(0);
    setStatus("connecting");
    updateStats();
    log("conn", "new run " + run.id);
    // protocols.js watches the run over SSE, AG-UI or the AI SDK stream when one is selected.
    if (window.streamingProtocols && window.streamingProtocols.start(run.id, pageApi(run))) return;
    connect();
  }

  // What protocols.js may do to the page for the run it watches.
  function pageApi(current) {
    var mine = function (f) { return function () { if (run === current) return f.apply(null, arguments); }; };
    return {
      token: function () { return token; },  // read at each use: the page renews its token
      authHeaders: authHeaders,
      prompt: function () { return el.prompt.value; },
      words: function () { return parseInt(el.words.value, 10) || 300; },
      applyFrame: mine(onFrame), log: mine(log), setConnection: mine(setConnection), fail: mine(fail),
      post: mine(startExecution),
      noteReconnect: mine(function () { current.reconnects += 1; updateStats(); }),
      setExecutionId: mine(function (id) { current.id = id; el.executionId.textContent = id; })
    };
  }

  el.form.addEventListener("submit", function (event) {
    event.preventDefault();
    start();
  });
  el.prompt.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && (event.metaKey || event.ctrlKey)) start();
  });
  el.clearLog.addEventListener("click", function () { el.log.textContent = ""; });
  window.setInterval(renderEta, 500);

  // A small handle for tests and for the curious: window.streamingDemo.dropConnection()
  // closes the socket as a network failure would; the page then reconnects and resumes.
  window.streamingDemo = {
    dropConnection: function () {
      if (window.streamingProtocols && window.streamingProtocols.drop()) return true;
      if (run && run.socket) run.socket.close(4000, "dropped on purpose");
      return !!(run && run.socket);
    },
    state: function () {
      return run && {
        executionId: run.id, lastSequence: run.lastSequence, reconnects: run.reconnects,
        duplicates: run.duplicates, finished: run.finished, progress: run.progress
      };
    }
  };
})();
