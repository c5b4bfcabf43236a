// Live status: the API's server-sent events (GET /v1/events) read with fetch (EventSource cannot send X-Auth-Token),
// and polling where the API has no events stream or it cannot be reached. Listeners hear "something changed",
// with the event's type and cluster when the stream says so; views then re-read what they show from the API.
import { authHeaders } from "./api";
import * as session from "./session";

export interface Change {
  type: string;
  cluster?: string;
}
type Listener = (change: Change) => void;

const POLL_MS = 4000;
const SAFETY_MS = 15000; // with the events stream too: a page is never staler than this, whatever the stream missed
const listeners = new Set<Listener>();
let controller: AbortController | null = null;
let pollTimer: number | null = null;
let safetyTimer: number | null = null;
let lastId: string | null = null;
export let mode: "events" | "polling" | "off" = "off";
let modeListener: (m: string) => void = () => {};

export function onMode(fn: (m: string) => void): void {
  modeListener = fn;
}

export function listen(fn: Listener): () => void {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

function emit(change: Change): void {
  for (const fn of [...listeners]) fn(change);
}

function setMode(m: typeof mode): void {
  mode = m;
  modeListener(m);
}

function startPolling(): void {
  if (pollTimer !== null) return;
  setMode("polling");
  pollTimer = window.setInterval(() => emit({ type: "poll" }), POLL_MS);
}

function stopPolling(): void {
  if (pollTimer !== null) window.clearInterval(pollTimer);
  pollTimer = null;
}

export function stop(): void {
  controller?.abort();
  controller = null;
  stopPolling();
  if (safetyTimer !== null) window.clearInterval(safetyTimer);
  safetyTimer = null;
  setMode("off");
}

export function start(): void {
  stop();
  safetyTimer = window.setInterval(() => {
    if (mode === "events") emit({ type: "tick" });
  }, SAFETY_MS);
  void connect(new AbortController());
}

async function connect(ctrl: AbortController): Promise<void> {
  controller = ctrl;
  let failures = 0;
  while (!ctrl.signal.aborted && session.load()) {
    const headers: Record<string, string> = { ...authHeaders(), Accept: "text/event-stream" };
    if (lastId) headers["Last-Event-ID"] = lastId;
    let resp: Response;
    try {
      resp = await fetch("/v1/events", { headers, signal: ctrl.signal });
    } catch {
      if (ctrl.signal.aborted) return;
      failures += 1;
      startPolling();
      await sleep(Math.min(30000, 1000 * 2 ** failures), ctrl.signal);
      continue;
    }
    if (!resp.ok || !resp.body) {
      // no events stream on this API (404), or not for this user: poll instead, and do not retry it
      await resp.body?.cancel().catch(() => {});
      startPolling();
      return;
    }
    failures = 0;
    stopPolling();
    setMode("events");
    emit({ type: "connected" });
    const ended = await read(resp.body, ctrl.signal);
    if (ctrl.signal.aborted) return;
    if (ended === "expired") return; // the next API call hears the 401 and shows the login
    startPolling();
    await sleep(1000, ctrl.signal);
  }
}

async function read(body: ReadableStream<Uint8Array>, signal: AbortSignal): Promise<string> {
  const reader = body.pipeThrough(new TextDecoderStream() as unknown as ReadableWritablePair<string, Uint8Array>).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done || signal.aborted) return "closed";
      buffer += value;
      let cut: number;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const frame = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const fields: Record<string, string> = {};
        for (const line of frame.split("\n")) {
          if (!line || line.startsWith(":")) continue;
          const colon = line.indexOf(":");
          const key = colon < 0 ? line : line.slice(0, colon);
          const val = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
          fields[key] = key in fields ? `${fields[key]}\n${val}` : val;
        }
        if (fields.id) lastId = fields.id;
        if (fields.event === "end") return fields.data?.includes("expired") ? "expired" : "closed";
        if (fields.event) {
          let cluster: string | undefined;
          try {
            const data = JSON.parse(fields.data ?? "{}");
            cluster = data.cluster_id ?? data.payload?.uuid ?? undefined;
          } catch {
            cluster = undefined;
          }
          emit({ type: fields.event, cluster });
        }
      }
    }
  } catch {
    return "closed";
  } finally {
    reader.releaseLock();
  }
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = window.setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      window.clearTimeout(t);
      resolve();
    });
  });
}
