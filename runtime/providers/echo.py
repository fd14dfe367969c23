"""The offline ``echo`` model: streams the last user message back, word by word.

It runs through exactly the same event path as a real provider (normalized events -> wire
items -> chunk bus), so a laptop with no key and no network exercises all of Convoy. It honours
an output limit (``max_output_tokens``, counted in words): the answer stops there, finishing
``max_tokens``; it samples nothing, so a temperature changes nothing.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator
from typing import Any

from runtime.providers.events import Finish, LLMEvent, LLMRequest, ResponseInfo, TextDelta, Usage

_WORD = re.compile(r"\S+\s*")


def _tokens(text: str) -> list[str]:
    """Words with their trailing whitespace, plus leading whitespace as its own piece."""
    pieces = _WORD.findall(text)
    lead = text[: len(text) - len(text.lstrip())]
    return ([lead] if lead else []) + pieces


class EchoAdapter:
    def __init__(self, delay_ms: float) -> None:
        self._delay_s = delay_ms / 1000

    def payload(self, request: LLMRequest) -> dict[str, Any]:
        body: dict[str, Any] = {"model": request.model, "system": request.system, "messages": len(request.messages)}
        if request.max_output_tokens is not None:
            body["max_output_tokens"] = request.max_output_tokens
        return body

    async def stream(self, request: LLMRequest) -> AsyncGenerator[LLMEvent, None]:
        last_user = next((m.content for m in reversed(request.messages) if m.role == "user"), "")
        words = _tokens(last_user)
        limit = request.max_output_tokens
        cut = limit is not None and len(words) > limit
        if cut:
            words = words[:limit]
        yield ResponseInfo(None, request.model)
        for i, word in enumerate(words):
            if i and self._delay_s:
                await asyncio.sleep(self._delay_s)
            yield TextDelta(word)
        prompt_tokens = len(request.system.split()) + sum(len(m.content.split()) for m in request.messages)
        yield Usage(prompt_tokens=prompt_tokens, completion_tokens=len("".join(words).split()))
        yield Finish("max_tokens", raw="length") if cut else Finish("end_turn")
