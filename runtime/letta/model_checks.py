"""A model and its settings checked before anything is stored: what a provider or model cannot
honour is refused (``InvalidRequestError``, a 400), naming the field as the caller wrote it and
the layer it came from.

Each write that changes what a model request would run with is checked against the model it would
run on, with the settings of every layer combined as a turn combines them (request over
conversation over agent, field by field: ``runtime.schemas.model_settings``):

- an agent (create, update): its own settings on its model, and, on update, every conversation of
  the agent that names its own model or settings, with the agent as it will be;
- a conversation (create, update): its settings over its agent's, on its model or the agent's;
- a message (a send, a chat completion) that carries settings or ``override_model``: the three
  layers on the model the turn will use. A message with neither runs what was checked when its
  conversation and agent were last written, so it costs no read.

A layer's ``provider_type`` is checked against the model of that layer: a conversation that moves
to another provider keeps whatever of its agent's settings that provider can honour.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from runtime.errors import InvalidRequestError
from runtime.providers.registry import Providers
from runtime.schemas.agents import AgentRecord, ConversationRef
from runtime.schemas.model_settings import ModelSettings, Origin, resolve
from runtime.schemas.requests import SendMessageRequest
from runtime.store.agents import MAX_PAGE, AgentStore, ConversationStore

_WHERE: dict[Origin, str] = {"request": "in this request", "conversation": "on the conversation", "agent": "on the agent"}


def _check(
    providers: Providers,
    handle: str,
    layers: Sequence[tuple[Origin, ModelSettings | None]],
    *,
    agent_max_tokens: int | None,
    own: Origin,
) -> None:
    resolved = resolve(layers, agent_max_tokens=agent_max_tokens)
    providers.check_settings(
        handle,
        resolved.generation(),
        max_output_tokens=resolved.max_output_tokens,
        provider_types=[(f"model_settings ({_WHERE[o]})", t) for o, t in resolved.provider_types if o == own],
        describe=resolved.describe,
    )


def check_conversation(providers: Providers, agent: AgentRecord, model: str | None, settings: ModelSettings | None) -> None:
    """A conversation's model and settings over ``agent``'s (400 naming what cannot be honoured)."""
    _check(
        providers,
        model or agent.model,
        (("conversation", settings), ("agent", agent.model_settings)),
        agent_max_tokens=agent.max_tokens,
        own="conversation",
    )


def check_window(agent: AgentRecord) -> None:
    """An agent's output limit fits inside its context window (the answer is part of it), as a
    create checks its body; an update is checked as the record it will store."""
    window, output = agent.context_window_limit, agent.max_output_tokens
    if window and output and output >= window:
        field = "model_settings.max_output_tokens" if agent.model_settings and agent.model_settings.max_output_tokens else "max_tokens"
        raise InvalidRequestError(
            f"{field} ({output}) must be smaller than context_window_limit ({window}): the answer is part of the context window"
        )


def check_conversation_window(agent: AgentRecord, window: int | None, settings: ModelSettings | None) -> None:
    """A conversation's own context window (``window``) holds its answer's limit (its
    ``settings``', else its agent's), as an agent's must (``check_window``)."""
    output = (settings.max_output_tokens if settings else None) or agent.max_output_tokens
    if window and output and output >= window:
        raise InvalidRequestError(
            f"context_window_limit ({window}) must be larger than the answer's limit of {output} tokens "
            "(the conversation's or its agent's max output tokens): the answer is part of the context window"
        )


def check_agent(providers: Providers, *, model: str, settings: ModelSettings | None, max_tokens: int | None) -> None:
    """An agent's own settings on its model."""
    _check(providers, model, (("agent", settings),), agent_max_tokens=max_tokens, own="agent")


async def check_agent_update(providers: Providers, conversations: ConversationStore, agent: AgentRecord) -> None:
    """``agent`` as an update is about to store it, and over it each of its conversations that
    names its own model or settings."""
    check_agent(providers, model=agent.model, settings=agent.model_settings, max_tokens=agent.max_tokens)
    after: str | None = None
    while True:
        page = await conversations.list(tenant=agent.tenant, agent_id=agent.id, limit=MAX_PAGE, after=after)
        for conversation in page:
            if conversation.model or conversation.model_settings:
                check_conversation(providers, agent, conversation.model, conversation.model_settings)
            check_conversation_window(agent, conversation.context_window_limit, conversation.model_settings)
        if len(page) < MAX_PAGE:
            return
        after = page[-1].id


async def check_turn(
    providers: Providers,
    agents: AgentStore,
    conversations: ConversationStore,
    conversation: ConversationRef,
    body: SendMessageRequest,
) -> None:
    """A message's own settings (or model) over its conversation's and agent's; no read unless it
    carries one of them."""
    if body.model_settings is None and body.override_model is None:
        return
    agent, record = await asyncio.gather(
        agents.get(conversation.agent_id, tenant=conversation.tenant),
        conversations.get(conversation.id, tenant=conversation.tenant),
    )
    _check(
        providers,
        body.override_model or record.model or agent.model,
        (("request", body.model_settings), ("conversation", record.model_settings), ("agent", agent.model_settings)),
        agent_max_tokens=agent.max_tokens,
        own="request",
    )
