// The demo page's protocol switch: watch a run over our WebSocket (demo.js), native SSE, AG-UI or
// the AI SDK UI message stream, and a "drop connection" button that cuts the live connection so
// the resume can be seen. Every protocol's events are turned back into the native frames that
// demo.js renders (text, progress, event log, status).
//
// Hooks: demo.js calls window.streamingProtocols.start(executionId, page) when a run starts (a
// true result means "this file handles it") and .drop() from its dropConnection().
(function () {
  "use strict";

  var PROTOCOLS = [
    ["websocket", "WebSocket"],
    ["sse", "SSE (EventSource)"],
    ["agui", "AG-UI"],
    ["aisdk", "AI SDK"]
  ];
  var RETRY_MS = 500;
  var MAX_RETRIES = 12;

  var current = null; // {protocol, page, id, drop(), finished}

  // ---------------------------------------------------------------- controls

  function addControls() {
    var controls = document.querySelector("#compose-form .controls");
    if (!controls) return;
    var label = document.createElement("label");
    label.className = "length";
    label.appendChild(document.createTextNode("Protocol"));
    var select = document.createElement("select");
    select.id = "protocol";
    select.setAttribute("data-testid", "protocol");
    PROTOCOLS.forEach(function (p) {
      var option = document.createElement("option");
      option.value = p[0];
      option.textContent = p[1];
      select.appendChild(option);
    });
    var wanted = new URLSearchParams(window.location.search).get("protocol");
    if (wanted) select.value = wanted;
    label.appendChild(select);
    var drop = document.createElement("button");
    drop.type = "button";
    drop.id = "drop-connection";
    drop.className = "ghost";
    drop.setAttribute("data-testid", "drop-connection");
    drop.textContent = "drop connection";
    drop.title = "Cut the live connection: the page resumes where it left off";
    drop.addEventListener("click", function () {
      if (window.streamingDemo) window.streamingDemo.dropConnection();
    });
    controls.insertBefore(label, controls.lastElementChild);
    controls.insertBefore(drop, controls.lastElementChild);
  }

  function selected() {
    var select = document.getElementById("protocol");
    return select ? select.value : "websocket";
  }

  // ---------------------------------------------------------------- SSE parsing (fetch bodies)

  function readEvents(response, onEvent) {
    var reader = response.body.getReader();
    var decoder = new TextDecoder();
    var buffer = "";
    var lastId = null;
    function pump() {
      return reader.read().then(function (chunk) {
        if (chunk.done) return "ended";
        buffer += decoder.decode(chunk.value, { stream: true });
        var end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          var block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          var data = [];
          block.split("\n").forEach(function (line) {
            if (line.indexOf("id:") === 0) lastId = line.slice(3).trim();
            else if (line.indexOf("data:") === 0) data.push(line.slice(5).replace(/^ /, ""));
          });
          if (data.length && onEvent(data.join("\n"), lastId) === false) {
            reader.cancel();
            return "ended";
          }
        }
        return pump();
      });
    }
    return pump();
  }

  function headers(page, extra) {
    var out = page.authHeaders();
    for (var key in extra || {}) out[key] = extra[key];
    return out;
  }

  function retry(run, reason, again) {
    if (run.finished || current !== run) return;
    run.retries += 1;
    if (run.retries > MAX_RETRIES) {
      run.page.fail("gave up after " + MAX_RETRIES + " reconnect attempts");
      return;
    }
    run.page.setConnection("reconnecting", "reconnecting…");
    run.page.log("conn", reason + " · resuming in " + RETRY_MS + " ms");
    window.setTimeout(function () { if (current === run && !run.finished) again(); }, RETRY_MS);
  }

  function resumed(run, where) {
    run.retries = 0;
    run.page.setConnection("open", "connected · " + run.label);
    if (run.connections > 0) {
      run.page.noteReconnect();
      run.page.log("resume", "reconnected over " + run.label + " · " + where);
    }
    run.connections += 1;
  }

  function finish(run) {
    run.finished = true;
    run.page.setConnection("idle", "idle");
  }

  // One streamed request of a run (the POST that starts it, or a resume GET): `consume` reads the
  // body; a drop, an error or an early end retries with `again` (a resume); a refusal fails the run;
  // a 204 means there is nothing left to watch. The drop button aborts it.
  function stream(run, method, url, extraHeaders, body, consume, again) {
    function failed(error) {
      if (run.finished || current !== run) return;
      retry(run, "connection lost (" + (error && error.name) + ")", again);
    }
    var controller = new AbortController();
    run.controller = controller;
    run.drop = function () {
      controller.abort();
      run.page.log("conn", run.label + " connection dropped on purpose");
      return true;
    };
    var init = { method: method, signal: controller.signal, headers: headers(run.page, extraHeaders) };
    if (body !== null) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    fetch(url, init).then(function (response) {
      if (response.status === 204) {
        run.page.log("resume", "no active run any more");
        finish(run);
        return null;
      }
      if (!response.ok) {
        return response.json().catch(function () { return {}; }).then(function (answer) {
          if (method === "GET" && response.status >= 500) throw new Error("HTTP " + response.status);
          run.page.fail(method + " " + url + " → " + response.status + ": " +
            (answer.message || answer.code || response.statusText));
          run.finished = true;
        });
      }
      if (method === "POST") run.page.log("conn", "POST " + url + " → 200 · " + run.label);
      return consume(response).then(function () { if (!run.finished) failed({ name: "ended" }); });
    }).catch(failed);
  }

  // ---------------------------------------------------------------- native SSE

  function startSse(run) {
    var last = 0;
    function open() {
      var url = "/executions/" + encodeURIComponent(run.id) + "/events?lastSequence=" + last +
        (run.page.token() ? "&token=" + encodeURIComponent(run.page.token()) : "");
      var source = new EventSource(url);
      run.source = source;
      var opened = false;
      source.onopen = function () {
        opened = true;
        resumed(run, "Last event " + last);
        if (!run.posted) { run.posted = true; run.page.post(); }
      };
      source.onmessage = null;
      ["token", "event", "progress", "status", "gap", "workflow_update"].forEach(function (type) {
        source.addEventListener(type, function (event) {
          var frame = JSON.parse(event.data);
          if (typeof frame.sequence === "number") last = Math.max(last, frame.sequence);
          run.page.applyFrame(frame);
          if (frame.type === "status" && frame.payload.status !== "started") {
            source.close();
            finish(run);
          }
        });
      });
      source.onerror = function () {
        if (run.finished || current !== run) { source.close(); return; }
        if (source.readyState === 2) {
          source.close();
          if (!opened) {
            run.page.fail("SSE refused (is a token needed? open the page as /?token=<JWT>)");
            return;
          }
          // The server ended the stream for good (its token expired, so the browser's own
          // reconnect with the same URL was refused): reopen with the page's current token.
          retry(run, "SSE stream ended by the server", open);
        }
        // Otherwise the browser reconnects by itself with Last-Event-ID.
      };
    }
    run.drop = function () {
      if (!run.source) return false;
      run.source.close();
      run.page.log("conn", "SSE connection dropped on purpose");
      retry(run, "connection lost", open);
      return true;
    };
    open();
  }

  // ---------------------------------------------------------------- AG-UI

  function startAgui(run) {
    var lastId = null;
    var frames = {
      TEXT_MESSAGE_CONTENT: function (e) { return { type: "token", payload: { content: e.delta } }; },
      RUN_FINISHED: function (e) {
        var cancelled = e.outcome && e.outcome.type === "cancelled";
        return { type: "status", payload: { status: cancelled ? "cancelled" : "completed" } };
      },
      RUN_ERROR: function (e) { return { type: "status", payload: { status: "failed", error: e.message } }; },
      RUN_STARTED: function () { return { type: "status", payload: { status: "started" } }; },
      CUSTOM: function (e) {
        if (e.name === "progress") return { type: "progress", payload: e.value };
        if (e.name === "event") return { type: "event", payload: e.value };
        return null;
      }
    };
    function consume(response) {
      resumed(run, "after event " + lastId);
      return readEvents(response, function (data, id) {
        lastId = id;
        var event = JSON.parse(data);
        var make = frames[event.type];
        var frame = make ? make(event) : null;
        if (frame) run.page.applyFrame(frame);
        if (event.type === "RUN_FINISHED" || event.type === "RUN_ERROR") {
          finish(run);
          return false;
        }
        return true;
      });
    }
    function resume() {
      var after = lastId ? { "Last-Event-ID": lastId } : {};
      stream(run, "GET", "/agui/runs/" + encodeURIComponent(run.id) + "/events", after, null,
        consume, resume);
    }
    stream(run, "POST", "/agui", { Accept: "text/event-stream" }, {
      threadId: "demo-thread", runId: run.id, state: {}, tools: [], context: [],
      forwardedProps: { words: run.page.words() },
      messages: [{ id: run.id + "-user", role: "user", content: run.page.prompt() }]
    }, consume, resume);
  }

  // ---------------------------------------------------------------- AI SDK

  function startAiSdk(run) {
    var applied = 0; // parts already applied: a resume replays the run from its start
    var chatId = run.id;
    function consume(response) {
      var seen = 0;
      resumed(run, "replaying from the start, " + applied + " parts already shown");
      return readEvents(response, function (data) {
        if (data === "[DONE]") { finish(run); return false; }
        seen += 1;
        if (seen <= applied) return true;
        applied += 1;
        var part = JSON.parse(data);
        var frame = null;
        if (part.type === "start") {
          if (part.messageId) run.page.setExecutionId(part.messageId);
          frame = { type: "status", payload: { status: "started" } };
        } else if (part.type === "text-delta") {
          frame = { type: "token", payload: { content: part.delta } };
        } else if (part.type === "data-progress") {
          frame = { type: "progress", payload: part.data };
        } else if (part.type === "data-event") {
          frame = { type: "event", payload: part.data };
        } else if (part.type === "finish") {
          frame = { type: "status", payload: { status: part.finishReason === "error" ? "failed" : "completed" } };
        } else if (part.type === "abort") {
          frame = { type: "status", payload: { status: "cancelled" } };
        }
        if (frame) run.page.applyFrame(frame);
        return true;
      });
    }
    function resume() {
      stream(run, "GET", "/api/chat/" + encodeURIComponent(chatId) + "/stream", {}, null,
        consume, resume);
    }
    stream(run, "POST", "/api/chat", {}, {
      id: chatId, trigger: "submit-message", words: run.page.words(),
      messages: [{ id: chatId + "-user", role: "user", parts: [{ type: "text", text: run.page.prompt() }] }]
    }, consume, resume);
  }

  // ---------------------------------------------------------------- hooks

  var STARTERS = { sse: startSse, agui: startAgui, aisdk: startAiSdk };

  window.streamingProtocols = {
    selected: selected,
    start: function (executionId, page) {
      if (current) {
        current.finished = true;
        if (current.source) current.source.close();
        if (current.controller) current.controller.abort();
      }
      current = null;
      var protocol = selected();
      var starter = STARTERS[protocol];
      if (!starter) return false;
      var label = PROTOCOLS.filter(function (p) { return p[0] === protocol; })[0][1];
      current = {
        protocol: protocol, label: label, page: page, id: executionId, finished: false,
        retries: 0, connections: 0, posted: false, drop: function () { return false; }
      };
      page.log("conn", "watching over " + label);
      starter(current);
      return true;
    },
    drop: function () {
      return !!(current && !current.finished && current.drop());
    }
  };

  addControls();
})();
