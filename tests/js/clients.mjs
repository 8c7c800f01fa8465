// The real front-end clients, driven from pytest (tests/integration/test_js_clients.py):
//
//   node clients.mjs <scenario> '<json options>'
//
// prints one JSON object on stdout: what the client saw. Scenarios:
//
//   agui    @ag-ui/client's HttpAgent.runAgent() against POST {base}/agui. With `cutAfter`, the
//           connection is cut after that many SSE events and resumed with Last-Event-ID at
//           GET {base}/agui/runs/{runId}/events, spliced into the one stream HttpAgent reads,
//           so its verifier, schema validation and message reducer judge the whole run.
//   aisdk   ai's DefaultChatTransport.sendMessages() + readUIMessageStream() against
//           POST {base}/api/chat. With `cutAfter`, the request is aborted after that many parts
//           and the run is resumed with transport.reconnectToStream() (GET .../{chatId}/stream),
//           as useChat({resume: true}) does; a last reconnect after the end must answer 204.
//   aisdk-resume  only reconnectToStream() for `chatId` (a run started elsewhere).
//
// Any warning the AG-UI client prints (it strips and warns about what its schemas do not know)
// is reported in `warnings`, so the test can require none.

import { HttpAgent } from "@ag-ui/client";
import { DefaultChatTransport, readUIMessageStream } from "ai";

const warnings = [];
const originalWarn = console.warn;
console.warn = (...args) => {
  warnings.push(args.map(String).join(" "));
};

const [scenario, rawOptions] = process.argv.slice(2);
const options = JSON.parse(rawOptions || "{}");
const authHeaders = options.token ? { Authorization: `Bearer ${options.token}` } : {};

// ------------------------------------------------------------------ SSE splicing for AG-UI

// A fetch for HttpAgent that forwards only whole SSE events and, when the connection drops
// (or after `cutAfter` events, to simulate a drop), resumes from the last event id it forwarded.
function resumingFetch({ base, runId, cutAfter, record }) {
  return async (url, init) => {
    let controller = new AbortController();
    const first = await fetch(url, { ...init, signal: controller.signal });
    if (!first.ok || !first.body) return first;
    const encoder = new TextEncoder();
    const decoder = new TextDecoder();
    let lastId = null;
    let forwarded = 0;
    let cut = false;
    const body = new ReadableStream({
      async start(out) {
        let response = first;
        for (;;) {
          const reader = response.body.getReader();
          let buffer = "";
          let dropped = false;
          try {
            for (;;) {
              const { done, value } = await reader.read();
              if (done) break;
              buffer += decoder.decode(value, { stream: true });
              let end;
              while ((end = buffer.indexOf("\n\n")) >= 0) {
                const block = buffer.slice(0, end + 2);
                buffer = buffer.slice(end + 2);
                for (const line of block.split("\n")) {
                  if (line.startsWith("id:")) lastId = line.slice(3).trim();
                }
                if (block.includes("data:")) {
                  record.ids.push(lastId);
                  forwarded += 1;
                }
                out.enqueue(encoder.encode(block));
                if (!cut && cutAfter && forwarded >= cutAfter) {
                  cut = true;
                  controller.abort(); // the network drops us here
                  throw new Error("cut");
                }
              }
            }
          } catch (error) {
            dropped = true;
          }
          if (!dropped) break; // the server ended the stream: the run is over
          record.resumes.push(lastId);
          controller = new AbortController();
          response = await fetch(`${base}/agui/runs/${encodeURIComponent(runId)}/events`, {
            headers: { ...authHeaders, "Last-Event-ID": lastId },
            signal: controller.signal,
          });
          record.resumeStatus.push(response.status);
          if (!response.ok || !response.body) break;
        }
        out.close();
      },
    });
    return new Response(body, { status: first.status, headers: first.headers });
  };
}

async function agui() {
  const runId = options.runId || `agui-${Date.now()}-${Math.random().toString(36).slice(2, 8)}`;
  const record = { ids: [], resumes: [], resumeStatus: [] };
  const agent = new HttpAgent({
    url: `${options.base}/agui`,
    headers: authHeaders,
    threadId: options.threadId || "thread-1",
    initialMessages: [{ id: "user-1", role: "user", content: options.prompt }],
    fetch: resumingFetch({ base: options.base, runId, cutAfter: options.cutAfter, record }),
  });
  const events = [];
  let error = null;
  let result = null;
  try {
    result = await agent.runAgent(
      { runId, forwardedProps: { words: options.words } },
      { onEvent: ({ event }) => { events.push(event); } },
    );
  } catch (e) {
    error = String(e && e.message ? e.message : e);
  }
  const assistant = agent.messages.filter((m) => m.role === "assistant" && typeof m.content === "string");
  return {
    runId,
    error,
    text: assistant.map((m) => m.content).join(""),
    messages: agent.messages,
    state: agent.state,
    types: events.map((e) => e.type),
    customNames: events.filter((e) => e.type === "CUSTOM").map((e) => e.name),
    newMessages: result ? result.newMessages.length : 0,
    ...record,
  };
}

// ------------------------------------------------------------------ AI SDK

function transport() {
  return new DefaultChatTransport({ api: `${options.base}/api/chat`, headers: authHeaders });
}

async function readText(stream, onChunk) {
  let last = null;
  const counted = stream.pipeThrough(
    new TransformStream({
      transform(chunk, controller) {
        onChunk(chunk);
        controller.enqueue(chunk);
      },
    }),
  );
  for await (const message of readUIMessageStream({ stream: counted, terminateOnError: true })) {
    last = message;
  }
  return last;
}

function textOf(message) {
  if (!message) return "";
  return message.parts.filter((p) => p.type === "text").map((p) => p.text).join("");
}

async function aisdk() {
  const chatId = options.chatId || `chat-${Date.now()}-${Math.random().toString(36).slice(2, 8)}`;
  const chat = transport();
  const abort = new AbortController();
  const chunks = [];
  const out = { chatId, error: null };
  let partial = null;
  try {
    const stream = await chat.sendMessages({
      chatId,
      trigger: "submit-message",
      messageId: undefined,
      abortSignal: abort.signal,
      messages: [{ id: "user-1", role: "user", parts: [{ type: "text", text: options.prompt }] }],
      body: { words: options.words },
    });
    try {
      partial = await readText(stream, (chunk) => {
        chunks.push(chunk);
        if (options.cutAfter && chunks.length === options.cutAfter) abort.abort();
      });
    } catch (e) {
      if (!abort.signal.aborted) throw e;
    }
  } catch (e) {
    out.error = String(e && e.message ? e.message : e);
    return out;
  }
  out.firstTypes = chunks.map((c) => c.type);
  out.firstText = textOf(partial);
  out.messageId = chunks.length && chunks[0].type === "start" ? chunks[0].messageId : null;
  let final = partial;
  if (options.cutAfter) {
    const resumed = await chat.reconnectToStream({ chatId });
    out.resumed = resumed !== null;
    const again = [];
    final = resumed ? await readText(resumed, (chunk) => again.push(chunk)) : null;
    out.resumeTypes = again.map((c) => c.type);
  }
  out.text = textOf(final);
  out.dataParts = final ? final.parts.filter((p) => p.type.startsWith("data-")).map((p) => p.type) : [];
  out.afterEnd = (await chat.reconnectToStream({ chatId })) === null ? 204 : "stream";
  return out;
}

async function aisdkResume() {
  const chat = transport();
  const out = { error: null };
  try {
    const stream = await chat.reconnectToStream({ chatId: options.chatId });
    out.status = stream === null ? 204 : 200;
    if (stream) {
      const types = [];
      const message = await readText(stream, (chunk) => types.push(chunk.type));
      out.types = types;
      out.messageId = message ? message.id : null;
      out.text = textOf(message);
    }
  } catch (e) {
    out.error = String(e && e.message ? e.message : e);
  }
  return out;
}

const scenarios = { agui, aisdk, "aisdk-resume": aisdkResume };
const run = scenarios[scenario];
if (!run) {
  originalWarn(`unknown scenario ${scenario}; one of ${Object.keys(scenarios).join(", ")}`);
  process.exit(2);
}
const result = await run();
result.warnings = warnings;
process.stdout.write(JSON.stringify(result) + "\n");
