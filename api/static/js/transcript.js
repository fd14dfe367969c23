// The conversation as the page shows it, built from Letta message items read by `message_type`.
// The same items arrive as token deltas (pieces of one message share `id` and `otid`) or as whole
// messages (from the history, or a stream without token streaming): both are appended to the
// segment their `otid` names, so either shape renders the same.

const el = (tag, className, text) => {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
};

// An answer to an approval request, in words, while it is not on record yet.
const verdict = (approve, reason) => (approve ? "Approve" : reason ? `Deny: ${reason}` : "Deny");

const textOf = (content) =>
  typeof content === "string" ? content : (content || []).map((part) => part.text || "").join("");

function formatArguments(raw) {
  try {
    return JSON.stringify(JSON.parse(raw), null, 2);
  } catch {
    return raw; // still streaming, or not JSON
  }
}

// What a failed run's error_type means, in words; others are shown as they are named.
const ERROR_TITLES = {
  llm_rate_limit: "The model provider is rate limiting requests",
  llm_timeout: "The model provider did not answer in time",
  llm_unavailable: "The model provider is unavailable",
  llm_authentication: "The model provider refused Convoy's credentials",
  llm_context_window_exceeded: "The conversation no longer fits the model's context window",
  llm_content_filter: "The model provider's content filter stopped the answer",
  llm_bad_request: "The model provider refused the request",
  store_unavailable: "Convoy's store (Redis) is unreachable",
  owner_lost: "The process running this answer stopped",
  stream_stalled: "The answer stalled",
  stream_lost: "The answer's stream is gone",
};

const errorTitle = (type) => {
  if (ERROR_TITLES[type]) return ERROR_TITLES[type];
  const words = (type || "error").replaceAll("_", " ");
  return words[0].toUpperCase() + words.slice(1);
};

export function describeRun(run, usage) {
  const parts = [run.status];
  if (run.stop_reason && run.stop_reason !== run.status) parts.push(run.stop_reason.replaceAll("_", " "));
  if (run.ttft_ns) parts.push(`first token ${Math.round(run.ttft_ns / 1e6)} ms`);
  if (run.total_duration_ns) parts.push(`${(run.total_duration_ns / 1e9).toFixed(2)} s`);
  if (usage && usage.total_tokens) parts.push(`${usage.prompt_tokens} in · ${usage.completion_tokens} out tokens`);
  return parts.join(" · ");
}

export class Transcript {
  constructor(root, { onDecision }) {
    this.root = root;
    this.onDecision = onDecision;
    this.clear();
  }

  clear() {
    this.root.replaceChildren();
    this.runs = new Map(); // run id -> {block, body, foot, segments: Map, usage}
    this.calls = new Map(); // tool_call_id -> card
    this.users = new Set(); // user message ids shown
  }

  get empty() {
    return this.root.childElementCount === 0;
  }

  follow(scroll) {
    const near = this.root.scrollHeight - this.root.scrollTop - this.root.clientHeight < 120;
    scroll();
    if (near) this.root.scrollTop = this.root.scrollHeight;
  }

  user(message) {
    if (message.id && this.users.has(message.id)) return;
    if (message.id) this.users.add(message.id);
    const typed = message.run_id && this.root.querySelector(`.turn.user.pending[data-run-id="${message.run_id}"]`);
    if (typed) {
      typed.classList.remove("pending"); // the bubble typed here, now on record
      return;
    }
    const bubble = el("div", "turn user");
    bubble.append(el("div", "bubble", textOf(message.content)));
    const run = message.run_id && this.runs.get(message.run_id);
    this.follow(() => (run ? this.root.insertBefore(bubble, run.block) : this.root.append(bubble)));
  }

  /** A user message typed here, shown at once (the history has it once the run starts). */
  pendingUser(text) {
    const bubble = el("div", "turn user pending");
    bubble.append(el("div", "bubble", text));
    this.follow(() => this.root.append(bubble));
    return bubble;
  }

  run(runId) {
    let run = this.runs.get(runId);
    if (!run) {
      const block = el("article", "turn assistant");
      block.dataset.runId = runId;
      const body = el("div", "body");
      const foot = el("footer", "run-foot");
      block.append(body, foot);
      run = { block, body, foot, segments: new Map(), usage: null, working: null };
      this.runs.set(runId, run);
      this.follow(() => this.root.append(block));
    }
    return run;
  }

  working(runId, on) {
    const run = this.run(runId);
    if (on && !run.working) {
      run.working = el("div", "working");
      run.working.append(el("span"), el("span"), el("span"));
      run.block.insertBefore(run.working, run.foot);
    } else if (!on && run.working) {
      run.working.remove();
      run.working = null;
    }
  }

  apply(item) {
    const type = item.message_type;
    if (type === "user_message") return this.user(item);
    if (type === "ping" || type === "system_message") return;
    const run = this.run(item.run_id || "history");
    this.follow(() => {
      if (type === "assistant_message") this.text(run, item);
      else if (type === "reasoning_message" || type === "hidden_reasoning_message") this.reasoning(run, item);
      else if (type === "tool_call_message" || type === "approval_request_message") this.call(run, item);
      else if (type === "tool_return_message") this.result(item);
      else if (type === "approval_response_message") this.decided(item);
      else if (type === "stop_reason") run.stopReason = item.stop_reason;
      else if (type === "usage_statistics") run.usage = item;
      else if (type === "error_message") this.error(run, item);
    });
  }

  segment(run, item, make, part = null) {
    const key = `${item.message_type}:${item.otid || item.id}${part === null ? "" : `:${part}`}`;
    let node = run.segments.get(key);
    if (!node) {
      node = make();
      run.segments.set(key, node);
      run.body.append(node);
    }
    return node;
  }

  text(run, item) {
    const node = this.segment(run, item, () => el("div", "text"));
    node.textContent += textOf(item.content);
  }

  reasoning(run, item) {
    const piece = item.message_type === "reasoning_message" ? item.reasoning : item.hidden_reasoning;
    const redacted = item.message_type === "hidden_reasoning_message";
    if (!piece && !redacted) return; // a signature alone
    const node = this.segment(run, item, () => {
      const box = el("details", "reasoning");
      box.append(el("summary", "", redacted ? "Reasoning (redacted by the provider)" : "Reasoning"), el("div", "reasoning-text"));
      return box;
    });
    if (piece) node.querySelector(".reasoning-text").textContent += piece;
  }

  call(run, item) {
    // One call (`tool_call`), or several in one message (`tool_calls`): a card for each.
    const calls = item.tool_calls && item.tool_calls.length ? item.tool_calls : [item.tool_call || {}];
    calls.forEach((call, index) => this.oneCall(run, item, call, calls.length > 1 ? index : null));
  }

  oneCall(run, item, call, part) {
    const approval = item.message_type === "approval_request_message";
    const card = this.segment(run, item, () => {
      const box = el("div", approval ? "card tool approval" : "card tool");
      const head = el("div", "card-head");
      head.append(el("span", "badge", approval ? "Needs approval" : "Tool"), el("code", "tool-name"));
      const args = el("pre", "args");
      args.dataset.raw = "";
      box.append(head, args, el("div", "card-result"));
      box.requestId = item.id;
      return box;
    }, part);
    if (call.name) card.querySelector(".tool-name").textContent = call.name;
    if (call.tool_call_id && !card.dataset.toolCallId) {
      card.dataset.toolCallId = call.tool_call_id;
      this.calls.set(call.tool_call_id, card);
    }
    if (call.arguments) {
      const args = card.querySelector(".args");
      args.dataset.raw += call.arguments;
      args.textContent = formatArguments(args.dataset.raw);
    }
  }

  /** A step's results: one message holds them all (`tool_returns`; its top-level fields repeat
   * the first), each shown on its call's card. */
  result(item) {
    const returns = item.tool_returns && item.tool_returns.length ? item.tool_returns : [item];
    for (const one of returns) this.oneResult(item.run_id, one);
  }

  oneResult(runId, one) {
    let card = this.calls.get(one.tool_call_id);
    if (!card) {
      card = el("div", "card tool");
      card.append(el("div", "card-head", "Tool result"), el("div", "card-result"));
      this.run(runId || "history").body.append(card);
    }
    card.classList.remove("pending");
    card.querySelector(".actions")?.remove();
    card.querySelector(".decision-note")?.remove();
    const slot = card.querySelector(".card-result");
    slot.replaceChildren(el("span", `status ${one.status}`, one.status === "success" ? "Result" : "Error"), el("pre", "", one.tool_return));
  }

  decided(item) {
    const answers = item.approvals && item.approvals.length
      ? item.approvals
      : [...this.calls.values()]
          .filter((card) => card.requestId === item.approval_request_id)
          .map((card) => ({ tool_call_id: card.dataset.toolCallId, approve: item.approve, reason: item.reason }));
    for (const answer of answers) {
      const card = this.calls.get(answer.tool_call_id);
      if (card) this.markDecision(card, answer.approve, answer.reason);
    }
  }

  markDecision(card, approve, reason) {
    card.classList.remove("pending");
    card.querySelector(".actions")?.remove();
    card.querySelector(".decision-note")?.remove();
    card.answer = null;
    const note = card.querySelector(".decision") || el("div", "decision");
    note.className = `decision ${approve ? "approved" : "denied"}`;
    note.textContent = approve ? "Approved" : `Denied${reason ? `: ${reason}` : ""}`;
    card.querySelector(".badge").textContent = "Tool";
    card.insertBefore(note, card.querySelector(".card-result"));
  }

  /** Offer approve / deny on the run's approval cards that have no answer yet; returns how many. */
  offerApprovals(runId) {
    const run = this.runs.get(runId);
    if (!run) return 0;
    const open = [...run.body.querySelectorAll(".card.approval")].filter(
      (card) => !card.querySelector(".decision") && !card.querySelector(".card-result pre"),
    );
    for (const card of open) this.approvalButtons(card, runId);
    return open.length;
  }

  approvalButtons(card, runId) {
    if (card.querySelector(".actions")) return;
    card.classList.add("pending");
    const actions = el("div", "actions");
    const approve = el("button", "primary small", "Approve");
    const deny = el("button", "ghost small", "Deny…");
    const reason = el("input", "reason");
    reason.placeholder = "Reason (sent to the model)";
    reason.hidden = true;
    const confirm = el("button", "danger small", "Deny");
    confirm.hidden = true;
    for (const button of [approve, deny, confirm]) button.type = "button";
    approve.onclick = () => this.choose(card, runId, true, null);
    deny.onclick = () => {
      deny.hidden = true;
      reason.hidden = false;
      confirm.hidden = false;
      reason.focus();
    };
    confirm.onclick = () => this.choose(card, runId, false, reason.value.trim() || null);
    reason.onkeydown = (event) => {
      if (event.key === "Enter") confirm.click();
    };
    actions.append(approve, deny, reason, confirm);
    card.append(actions);
  }

  /** The person's answer to one call. It stays on the card until the server has taken it: every
   * open call of the run needs one first (they go in one request), then `onDecision(runId)` sends
   * them; `sending`, then `accepted` or `refused`, say how that went. */
  choose(card, runId, approve, reason) {
    card.answer = { type: "approval", tool_call_id: card.dataset.toolCallId, approve, reason };
    card.querySelector(".actions").hidden = true;
    this.note(card, "chosen", `${verdict(approve, reason)} — sent once every call here has an answer`);
    this.onDecision(runId);
  }

  note(card, state, text) {
    let note = card.querySelector(".decision-note");
    if (!note) {
      note = el("div", "decision-note");
      card.insertBefore(note, card.querySelector(".card-result"));
    }
    note.dataset.state = state;
    note.setAttribute("role", state === "failed" ? "alert" : "status");
    note.textContent = text;
  }

  /** Approval cards of `runId` with no decision on record yet. */
  open(runId) {
    const run = this.runs.get(runId);
    return run ? [...run.body.querySelectorAll(".card.approval.pending")] : [];
  }

  /** The answers to send for `runId`: one per open card, or null while one still has none. */
  answers(runId) {
    const open = this.open(runId);
    return open.length && open.every((card) => card.answer) ? open.map((card) => card.answer) : null;
  }

  sending(runId) {
    for (const card of this.open(runId)) this.note(card, "sending", `${verdict(card.answer.approve, card.answer.reason)} — sending…`);
  }

  /** The server took the answers: the cards are decided. */
  accepted(runId) {
    for (const card of this.open(runId)) this.markDecision(card, card.answer.approve, card.answer.reason);
  }

  /** The answers did not go through (`why`, in words): the cards ask again. */
  refused(runId, why) {
    for (const card of this.open(runId)) {
      card.answer = null;
      card.querySelector(".actions").hidden = false;
      this.note(card, "failed", `Your answer did not go through. ${why} Try again.`);
    }
  }

  error(run, item) {
    const box = el("div", "card error");
    box.dataset.errorType = item.error_type || "error";
    box.append(el("strong", "", errorTitle(item.error_type)), el("p", "", item.message));
    if (item.detail) box.append(el("p", "meta", item.detail));
    run.body.append(box);
  }

  footer(runId, record) {
    const run = this.run(runId);
    run.foot.textContent = describeRun(record, run.usage);
    run.foot.dataset.status = record.status;
    if (record.stop_reason) run.block.dataset.stopReason = record.stop_reason;
  }
}
