// The chat page: agents and their conversations on the left, one conversation on the right.
// The page is one more client of the API: what it shows comes from the same routes any SDK uses,
// and a run started here (or in another tab, or by `convoy chat`) is followed through its stream.

import { ApiError, apiKey, get, onKeyNeeded, post, setApiKey } from "./api.js";
import { follow, sendTurn } from "./stream.js";
import { Transcript } from "./transcript.js";

const POLL_MS = 2000;
const HISTORY_LIMIT = 1000;
const $ = (id) => document.getElementById(id);

const state = {
  agents: [],
  agent: null,
  conversations: [],
  conversation: null,
  live: null, // {runId, handle}
  poll: null, // {view, timer} of the poll going on, if any
  newest: null, // id of the conversation's newest run the page has shown or follows
  view: 0, // bumped on every navigation, so late answers for an old view are dropped
};

const transcript = new Transcript($("transcript"), { onDecision: decide });

// -- messages to the person ----------------------------------------------------------------------

const asApiError = (error) =>
  error instanceof ApiError ? error : new ApiError(-1, String(error && error.message ? error.message : error));

/** What went wrong, in one sentence or two: the title, then the server's own reason. */
function inWords(error) {
  const apiError = asApiError(error);
  const text = `${apiError.title}: ${apiError.detail}`;
  return /[.!?]$/.test(text) ? text : `${text}.`;
}

function showError(error, title) {
  const apiError = asApiError(error);
  $("banner-title").textContent = title || apiError.title;
  $("banner-detail").textContent = apiError.detail;
  $("banner").hidden = false;
}

function clearError() {
  $("banner").hidden = true;
}

function setRunState(text, kind = "") {
  const pill = $("run-state");
  pill.hidden = !text;
  pill.textContent = text || "";
  pill.dataset.kind = kind;
}

function setConnection(ok, text) {
  $("connection").textContent = text;
  $("connection").dataset.ok = ok ? "yes" : "no";
  $("forget-key").hidden = !apiKey();
}

// -- the API key (asked for once per tab, when the server asks for one) ---------------------------

let keyAsked = null;
onKeyNeeded((reason) => {
  if (!keyAsked) {
    keyAsked = new Promise((resolve) => {
      $("key-reason").textContent = apiKey() ? `That key was refused: ${reason}` : "";
      $("key-input").value = "";
      $("key-dialog").showModal();
      $("key-form").onsubmit = () => {
        setApiKey($("key-input").value.trim());
        keyAsked = null;
        resolve();
      };
    });
  }
  return keyAsked;
});
$("key-dialog").addEventListener("cancel", (event) => event.preventDefault()); // nothing works without it
$("forget-key").onclick = () => {
  setApiKey(null);
  location.reload();
};

// -- navigation: #/agent-…/conv-… ----------------------------------------------------------------

function route() {
  const [agentId, conversationId] = location.hash.replace(/^#\/?/, "").split("/");
  return { agentId: agentId || null, conversationId: conversationId || null };
}

function navigate(agentId, conversationId) {
  const hash = `#/${agentId || ""}${conversationId ? `/${conversationId}` : ""}`;
  if (location.hash !== hash) history.pushState(null, "", hash);
  show();
}

window.addEventListener("popstate", () => show());

async function show() {
  const { agentId, conversationId } = route();
  const view = ++state.view;
  stopFollowing();
  clearError();
  // Until the new view is loaded, nothing typed can go to the conversation being left.
  state.conversation = null;
  $("input").disabled = true;
  $("send").disabled = true;
  try {
    if (!state.agents.length) await loadAgents();
    if (view !== state.view) return;
    const agent = state.agents.find((a) => a.id === agentId) || (agentId ? await get(`/v1/agents/${agentId}`) : null);
    if (view !== state.view) return;
    state.agent = agent;
    renderAgents();
    if (!agent) {
      state.conversation = null;
      renderConversations();
      renderHeader();
      return renderEmpty();
    }
    await loadConversations();
    if (view !== state.view) return;
    state.conversation = conversationId;
    renderConversations();
    renderHeader();
    await openConversation(view);
  } catch (error) {
    showError(error);
  }
}

// -- agents and conversations --------------------------------------------------------------------

async function loadAgents() {
  state.agents = await get("/v1/agents", { limit: 200 });
  setConnection(true, apiKey() ? "Connected with a key" : "Connected");
  renderAgents();
}

function item(label, meta, active, onclick) {
  const li = document.createElement("li");
  const button = document.createElement("button");
  button.type = "button";
  button.className = active ? "item active" : "item";
  const name = document.createElement("span");
  name.className = "item-name";
  name.textContent = label;
  const sub = document.createElement("span");
  sub.className = "item-meta";
  sub.textContent = meta;
  button.append(name, sub);
  button.onclick = onclick;
  li.append(button);
  return li;
}

function renderAgents() {
  const list = $("agent-list");
  list.replaceChildren(
    ...state.agents.map((a) => item(a.name, a.model, state.agent && a.id === state.agent.id, () => navigate(a.id, null))),
  );
  $("new-conversation").disabled = !state.agent;
}

/** The newest HISTORY_LIMIT messages, oldest first. The conversation route lists newest first,
 * each message's parts (reasoning, text, tool calls: one id) in their own order: the messages are
 * put back in order, their parts kept as they are. */
async function pastMessages(conversationId) {
  const newestFirst = await get(`/v1/conversations/${conversationId}/messages`, { limit: HISTORY_LIMIT });
  const groups = [];
  for (const message of newestFirst) {
    const last = groups[groups.length - 1];
    if (last && last[0].id === message.id) last.push(message);
    else groups.push([message]);
  }
  return groups.reverse().flat();
}

async function loadConversations() {
  state.conversations = await get("/v1/conversations", { agent_id: state.agent.id, limit: 200 }); // newest first
}

const when = (iso) =>
  new Date(iso).toLocaleString(undefined, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });

function renderConversations() {
  $("conversation-list").replaceChildren(
    ...state.conversations.map((c) =>
      item(c.summary || "Conversation", when(c.created_at), c.id === state.conversation, () => navigate(state.agent.id, c.id)),
    ),
  );
}

function renderHeader() {
  const agent = state.agent;
  $("title").textContent = agent ? agent.name : "Welcome";
  const tools = agent ? agent.tools.map((t) => t.name).join(", ") : "";
  $("subtitle").textContent = agent ? [agent.model, tools && `tools: ${tools}`].filter(Boolean).join(" · ") : "";
  const ready = Boolean(agent);
  $("input").disabled = !ready;
  $("send").disabled = !ready || Boolean(state.live);
  $("input").placeholder = ready ? `Message ${agent.name}` : "Create or pick an agent first";
}

function renderEmpty() {
  transcript.clear();
  const empty = $("empty");
  empty.hidden = false;
  $("empty-action").hidden = Boolean(state.agent);
  empty.querySelector("h2").textContent = state.agent ? `Start a conversation with ${state.agent.name}` : "Streaming agent conversations";
}

$("new-conversation").onclick = async () => {
  try {
    const conversation = await post("/v1/conversations", undefined, { agent_id: state.agent.id });
    state.conversations.unshift(conversation);
    navigate(state.agent.id, conversation.id);
  } catch (error) {
    showError(error);
  }
};

// -- one conversation ----------------------------------------------------------------------------

async function openConversation(view) {
  transcript.clear();
  if (!state.conversation) return renderEmpty();
  $("empty").hidden = true;
  const [newest] = await get("/v1/runs", { conversation_id: state.conversation, limit: 1 });
  if (view !== state.view) return;
  const following = await showTurns(newest, () => view === state.view);
  if (view !== state.view) return;
  if (!following) startPolling();
  $("transcript").scrollTop = $("transcript").scrollHeight;
}

/** Show the conversation's turns not on the page yet, up to `newest` (its newest run, listed just
 * before: a run newer than that is left to the next poll, so none falls in between). Turns that
 * ended come from the history, with their footers; the oldest run still active is followed through
 * its stream, and is then the newest the page knows (the poll finds those queued after it once it
 * ends). `still()` says whether the page still wants this (the same view; for a poll, no send
 * meanwhile). Returns whether a run is now followed. */
async function showTurns(newest, still) {
  const id = state.conversation;
  const shown = new Set(transcript.runs.keys());
  // The active runs first: their items are then read from their streams, never from the history too.
  const active = await get("/v1/runs", { conversation_id: id, active: true, order: "asc", limit: 10 });
  const [messages, runs] = await Promise.all([
    pastMessages(id),
    get("/v1/runs", { conversation_id: id, limit: 200 }),
  ]);
  if (!still()) return false;
  const live = new Set(active.map((r) => r.id));
  const skip = (runId) => live.has(runId) || shown.has(runId || "history"); // "history": no run named
  for (const message of messages) {
    if (message.message_type === "user_message" || !skip(message.run_id)) transcript.apply(message);
  }
  const records = new Map(runs.map((r) => [r.id, r]));
  for (const runId of transcript.runs.keys()) {
    if (records.has(runId) && !skip(runId)) transcript.footer(runId, records.get(runId));
  }
  const latest = runs.find((r) => !live.has(r.id));
  if (!active.length && latest && latest.stop_reason === "requires_approval") offerApprovals(latest.id);
  if (state.live) return true; // sent from here meanwhile: that run is followed already
  state.newest = active.length ? active[0].id : newest ? newest.id : null;
  if (!active.length) return false;
  attach(active[0].id);
  return true;
}

function offerApprovals(runId) {
  if (transcript.offerApprovals(runId)) setRunState("Waiting for your approval", "approval");
}

function attach(runId) {
  stopPolling();
  const view = state.view;
  const conversationId = state.conversation;
  transcript.working(runId, true);
  setRunState("Streaming", "live");
  $("stop").hidden = false;
  $("send").disabled = true;
  const handle = follow(conversationId, runId, {
    onItem: (item) => {
      if (item.message_type !== "ping") transcript.working(runId, false);
      transcript.apply(item);
    },
    onState: (s) => setRunState(s === "live" ? "Streaming" : "Reconnecting…", s),
    onEnd: () => ended(view, runId),
    onFail: (error) => {
      showError(error, "The answer's stream could not be read");
      ended(view, runId);
    },
  });
  state.live = { runId, handle };
}

async function ended(view, runId) {
  if (view !== state.view) return;
  transcript.working(runId, false);
  state.live = null;
  $("stop").hidden = true;
  $("stop").disabled = false;
  $("send").disabled = false;
  setRunState(null);
  try {
    const [record, messages] = await Promise.all([
      get(`/v1/runs/${runId}`),
      pastMessages(state.conversation),
    ]);
    if (view !== state.view) return;
    transcript.footer(runId, record);
    // A run started elsewhere: its user message may have reached the history only now.
    for (const message of messages) if (message.message_type === "user_message") transcript.user(message);
    if (record.stop_reason === "requires_approval") offerApprovals(runId);
  } catch (error) {
    showError(error);
  }
  if (view === state.view) startPolling(true);
}

function stopFollowing() {
  stopPolling();
  if (state.live) state.live.handle.close();
  state.live = null;
  $("stop").hidden = true;
  setRunState(null);
}

// Turns sent by another tab or client show up here within POLL_MS, running or already over: the
// poll asks for the conversation's newest run, whatever its status (a quick turn starts and ends
// between two polls), and shows what is new when that run is not the one the page knows. A hidden
// tab skips its polls, and catches up as soon as it is shown again.
function startPolling(now = false) {
  stopPolling();
  const poll = { view: state.view, timer: null };
  state.poll = poll;
  const polling = () => state.poll === poll && poll.view === state.view && !state.live && Boolean(state.conversation);
  const tick = async () => {
    if (!polling()) return;
    if (document.visibilityState === "visible") {
      try {
        const [newest] = await get("/v1/runs", { conversation_id: state.conversation, limit: 1 });
        if (polling() && newest && newest.id !== state.newest && (await showTurns(newest, polling))) return;
      } catch {
        // a failed poll is retried at the next tick; sending shows real errors
      }
    }
    if (polling()) poll.timer = setTimeout(tick, POLL_MS);
  };
  poll.timer = setTimeout(tick, now ? 0 : POLL_MS);
}

function stopPolling() {
  if (state.poll) clearTimeout(state.poll.timer);
  state.poll = null;
}

document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible" && state.poll) startPolling(true);
});

// -- sending, approving, stopping ----------------------------------------------------------------

async function ensureConversation(summary) {
  if (state.conversation) return state.conversation;
  const conversation = await post("/v1/conversations", { summary: summary.slice(0, 80) }, { agent_id: state.agent.id });
  state.conversations.unshift(conversation);
  state.conversation = conversation.id;
  history.pushState(null, "", `#/${state.agent.id}/${conversation.id}`);
  $("empty").hidden = true;
  renderConversations();
  return conversation.id;
}

async function send(text) {
  clearError();
  stopPolling();
  $("send").disabled = true;
  let bubble = null;
  try {
    const conversationId = await ensureConversation(text);
    bubble = transcript.pendingUser(text);
    const runId = await sendTurn(conversationId, [{ role: "user", content: text }]);
    state.newest = runId;
    bubble.dataset.runId = runId;
    transcript.run(runId);
    attach(runId);
  } catch (error) {
    bubble?.remove();
    $("input").value = text;
    $("send").disabled = false;
    showError(error, error.code === "PENDING_APPROVAL" ? "Answer the approval request first" : undefined);
    startPolling();
  }
}

/** Send the run's approval answers once every card has one. The cards show them as being sent,
 * and decided only when the server has accepted them; refused or unreachable, the cards say why
 * and ask again, so the person can try again. */
function decide(runId) {
  const answers = transcript.answers(runId);
  if (!answers) return; // parallel calls: wait for every answer
  const view = state.view;
  stopPolling(); // the turn sent here is followed from here, not found again by a poll
  clearError();
  transcript.sending(runId);
  setRunState("Sending your answer…", "sending");
  sendTurn(state.conversation, [{ type: "approval", approvals: answers }])
    .then((next) => {
      if (view !== state.view) return;
      transcript.accepted(runId);
      state.newest = next;
      attach(next);
    })
    .catch((error) => {
      if (view !== state.view) return;
      transcript.refused(runId, inWords(error));
      setRunState("Waiting for your approval", "approval");
      startPolling();
    });
}

$("composer").onsubmit = (event) => {
  event.preventDefault();
  const text = $("input").value.trim();
  if (!text || state.live) return;
  $("input").value = "";
  autosize();
  send(text);
};

$("input").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
});

function autosize() {
  const input = $("input");
  input.style.height = "auto";
  input.style.height = `${Math.min(input.scrollHeight, 240)}px`;
}
$("input").addEventListener("input", autosize);

$("stop").onclick = async () => {
  if (!state.live) return;
  $("stop").disabled = true;
  setRunState("Stopping…", "stopping");
  try {
    await post(`/v1/runs/${state.live.runId}/cancel`);
  } catch (error) {
    $("stop").disabled = false;
    showError(error, "Could not stop the answer");
  }
};

$("banner-close").onclick = clearError;

// -- creating an agent ---------------------------------------------------------------------------

async function fillAgentForm() {
  // Letta's listing (GET /v1/models/, a list of models with their handles), echo/echo first.
  const [models, tools] = await Promise.all([get("/v1/models/"), get("/v1/tools")]);
  const handles = new Set(models.map((m) => m.handle));
  handles.add("echo/echo");
  for (const agent of state.agents) handles.add(agent.model);
  $("model-options").replaceChildren(
    ...[...handles].sort().map((h) => Object.assign(document.createElement("option"), { value: h })),
  );
  if (models.length) $("agent-model").value = models[0].handle;
  const box = $("agent-tools");
  box.querySelectorAll("label").forEach((n) => n.remove());
  $("no-tools").hidden = tools.length > 0;
  for (const tool of tools) {
    const label = document.createElement("label");
    label.className = "check";
    const check = Object.assign(document.createElement("input"), { type: "checkbox", value: tool.name });
    const name = Object.assign(document.createElement("code"), { textContent: tool.name });
    const about = Object.assign(document.createElement("span"), { className: "meta", textContent: tool.description });
    label.append(check, name, about);
    if (tool.default_requires_approval) label.append(Object.assign(document.createElement("span"), { className: "badge", textContent: "approval" }));
    box.append(label);
  }
}

async function openAgentDialog() {
  $("agent-error").hidden = true;
  try {
    await fillAgentForm();
  } catch (error) {
    return showError(error);
  }
  $("agent-dialog").showModal();
}

$("new-agent").onclick = openAgentDialog;
$("empty-action").onclick = openAgentDialog;

$("agent-form").addEventListener("submit", async (event) => {
  if (event.submitter && event.submitter.value !== "create") return;
  event.preventDefault();
  const body = {
    name: $("agent-name").value.trim(),
    model: $("agent-model").value.trim(),
    system: $("agent-system").value,
    tools: [...$("agent-tools").querySelectorAll("input:checked")].map((c) => c.value),
  };
  try {
    const agent = await post("/v1/agents", body);
    state.agents.unshift(agent);
    $("agent-dialog").close();
    navigate(agent.id, null);
  } catch (error) {
    $("agent-error").textContent = error.detail || String(error);
    $("agent-error").hidden = false;
  }
});

// -- start ---------------------------------------------------------------------------------------

async function start() {
  try {
    await loadAgents();
  } catch (error) {
    setConnection(false, "Not connected");
    return showError(error);
  }
  if (!route().agentId && state.agents.length) return navigate(state.agents[0].id, null);
  show();
}

start();
