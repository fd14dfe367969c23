// Runs as the page sees them: a turn is sent with fetch (the POST answers with the run's first
// item, which names the run), then every run is read through an EventSource on
// GET /v1/runs/{id}/stream. The browser reconnects by itself with Last-Event-ID after a drop;
// with keys on, the URL carries a stream token (an EventSource cannot send a header), minted per
// conversation and minted again when it expires.

import { ApiError, call, errorOf, post } from "./api.js";

const TOKEN_MARGIN_MS = 30_000;
const MAX_REOPENS = 4;
const tokens = new Map(); // conversation id -> {token, expiresAt}

async function streamToken(conversationId, fresh = false) {
  const held = tokens.get(conversationId);
  if (!fresh && held && held.expiresAt - Date.now() > TOKEN_MARGIN_MS) return held.token;
  const minted = await post(`/v1/conversations/${conversationId}/stream-token`);
  tokens.set(conversationId, { token: minted.token, expiresAt: Date.now() + minted.expires_in_s * 1000 });
  return minted.token;
}

/** Send `messages` as a new turn; resolves to its run id as soon as the run is accepted. The
 * turn runs in the background: a reload or a closed tab does not cancel it (Stop does). */
export async function sendTurn(conversationId, messages) {
  const abort = new AbortController();
  const response = await call("POST", `/v1/conversations/${conversationId}/messages`, {
    body: { messages, streaming: true, stream_tokens: true, background: true },
    signal: abort.signal,
    raw: true,
  });
  // The first event is the run's stored ping (seq 1), written when the turn was accepted.
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  try {
    while (!text.includes("\n\n")) {
      const { value, done } = await reader.read();
      if (done) break;
      text += value;
    }
  } finally {
    abort.abort();
  }
  const data = text.split("\n").find((line) => line.startsWith("data: "));
  const item = data ? JSON.parse(data.slice(6)) : null;
  if (!item || !item.run_id) throw new ApiError(502, "The server accepted the message but did not name its run.");
  return item.run_id;
}

/**
 * Follow run `runId` of `conversationId` from after `after`. Calls `onItem(item)` for each item,
 * once, in order (stored items are deduplicated by seq_id), `onState("live" | "reconnecting")`,
 * then `onEnd()` after [DONE], or `onFail(error)` if the stream cannot be read. Returns {close()}.
 */
export function follow(conversationId, runId, { after = 0, onItem, onState, onEnd, onFail }) {
  let last = after;
  let source = null;
  let closed = false;
  let reopens = 0;

  const finish = (callback, value) => {
    if (closed) return;
    closed = true;
    if (source) source.close();
    callback(value);
  };

  const deliver = (event) => {
    reopens = 0;
    const item = JSON.parse(event.data);
    if (item.seq_id) {
      if (item.seq_id <= last) return; // already shown
      last = item.seq_id;
    }
    onItem(item);
  };

  const open = async (freshToken) => {
    let token;
    try {
      token = await streamToken(conversationId, freshToken);
    } catch (error) {
      finish(onFail, error);
      return;
    }
    if (closed) return;
    const query = new URLSearchParams({ token, starting_after: String(last), include_pings: "false" });
    const url = `/v1/runs/${runId}/stream?${query}`;
    source = new EventSource(url);
    source.onopen = () => onState("live");
    source.onmessage = (event) => {
      if (event.data === "[DONE]") finish(onEnd);
      else deliver(event);
    };
    source.addEventListener("error", (event) => {
      if (event.data) {
        deliver(event); // an `event: error` item of the run (error_message)
        return;
      }
      if (closed) return;
      if (source.readyState === EventSource.CONNECTING) {
        onState("reconnecting"); // the browser retries by itself, with Last-Event-ID
        return;
      }
      // Refused (401 after the token expired, 404, 410, 503...): try again with a fresh token,
      // then give up with the server's own reason.
      source.close();
      reopens += 1;
      onState("reconnecting");
      if (reopens <= MAX_REOPENS) {
        setTimeout(() => open(true), 400 * reopens);
        return;
      }
      explain(url).then((error) => finish(onFail, error));
    });
  };

  open(false);
  return { close: () => finish(() => {}) };
}

async function explain(url) {
  const abort = new AbortController();
  try {
    const response = await fetch(url, { signal: abort.signal });
    if (!response.ok) return await errorOf(response);
    return new ApiError(0, "The stream keeps breaking off; check your connection and reload.");
  } catch {
    return new ApiError(0, "The server did not answer. Is `convoy serve` still running?");
  } finally {
    abort.abort();
  }
}
