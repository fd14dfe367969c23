"""Server tools: plain Python functions the agent loop may call, described to the model by JSON schema.

Register a function with ``@tool`` in a module named in ``CONVOY_TOOL_MODULES`` (every Convoy
process imports those modules at start)::

    from typing import Annotated
    from pydantic import Field
    from runtime.tools import tool

    @tool
    async def get_weather(city: Annotated[str, Field(description="City name")], unit: str = "C") -> str:
        \"\"\"Current weather in a city.\"\"\"
        ...

    @tool(requires_approval=True, timeout_s=5)
    def delete_file(path: str) -> str:
        \"\"\"Delete a file (a person must approve each call).\"\"\"

The parameter schema comes from the type hints (pydantic), the description from the docstring.
Arguments are validated before the call; sync functions run in a worker thread; each call has a
timeout. Whatever happens — bad arguments, an exception, a timeout — the model gets a result with
``status: "error"`` and a message, never a crashed run.

**Sync tools have threads of their own** (``SyncToolThreads``), never the event loop's default
executor: a thread cannot be stopped, so a sync call past its timeout keeps its thread until the
function returns, and a few hung calls in the default executor (``min(32, cpus + 4)`` threads)
would starve every other conversation's sync tools and ``loop.getaddrinfo``, which aiohttp's
resolver uses for every new provider connection. The tools' threads are bounded
(``SYNC_TOOL_THREADS`` per process). A call waits for a free one within its own timeout, and if
none frees it fails saying so; when every thread is held by a call already past its timeout (none
is likely to free), a call fails at once. Either way the model gets an error result, not a hang.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import importlib
import inspect
import json
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, get_type_hints

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from runtime.errors import ConfigurationError, InvalidRequestError
from runtime.metrics import ToolFailure, ToolOutcome

DEFAULT_TIMEOUT_S = 30.0  # per call, unless the tool sets its own
MAX_RESULT_CHARS = 50_000  # longer results are cut, and say so
# Threads for sync tools, per process: twice the default executor's ceiling (32), as tools mostly
# wait on I/O, and bounded, so calls that never return cannot grow the process without limit.
SYNC_TOOL_THREADS = 64


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]
    requires_approval: bool
    timeout_s: float
    fn: Callable[..., Any] = field(repr=False)
    arguments: type[BaseModel] = field(repr=False)


@dataclass(frozen=True, slots=True)
class ToolResult:
    status: Literal["success", "error"]
    text: str
    duration_ms: float = 0.0
    failure: ToolFailure | None = None  # why a call did not run to a result (an exception is "error")

    @property
    def outcome(self) -> ToolOutcome:
        return self.failure or ("success" if self.status == "success" else "error")


def describe(fn: Callable[..., Any], name: str | None = None) -> tuple[str, str, type[BaseModel]]:
    """(name, description, arguments model) of a function, from its signature and docstring."""
    fields: dict[str, Any] = {}
    hints = get_type_hints(fn, include_extras=True)  # resolves string annotations
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise TypeError(f"tool {fn.__name__}: *args/**kwargs cannot be described to a model")
        annotation = hints.get(param.name, Any)
        default = param.default if param.default is not inspect.Parameter.empty else ...
        fields[param.name] = (annotation, default)
    model = create_model(
        f"{fn.__name__}_arguments", __config__=ConfigDict(extra="forbid"), **fields
    )
    doc = inspect.getdoc(fn) or ""
    return name or fn.__name__, doc.split("\n\n", 1)[0].strip(), model


@dataclass(eq=False)
class _Job:
    """One sync call on its way through ``SyncToolThreads``; the flags are the pool's, under its lock."""

    fn: Callable[..., Any]
    kwargs: dict[str, Any]
    # The caller's context variables, as ``asyncio.to_thread`` passes them: what a tool logs says
    # which run it belongs to.
    context: contextvars.Context = field(default_factory=contextvars.copy_context)
    future: concurrent.futures.Future[Any] = field(default_factory=concurrent.futures.Future)
    started: bool = False
    done: bool = False
    abandoned: bool = False  # its caller stopped waiting while it ran: it still holds its thread


class SyncToolThreads:
    """The bounded set of daemon threads sync tools run on (see the module docstring).

    Threads start as calls need them, up to ``threads``, and then wait for the next call. A call
    its caller stops waiting for (a timeout, a cancelled run) before it started never runs; one
    that had started keeps its thread until the function returns, and is counted as ``held``
    meanwhile. The threads are daemons, so a call that never returns does not hold up the
    process's exit."""

    def __init__(self, threads: int = SYNC_TOOL_THREADS) -> None:
        if threads < 1:
            raise ValueError("a pool for sync tools needs at least one thread")
        self.threads = threads
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = threading.Semaphore(0)  # one permit per thread waiting for a call
        self._started = 0
        self._held = 0

    @property
    def exhausted(self) -> bool:
        """Every thread is held by a call its caller gave up on: none is likely to free soon."""
        return self._held >= self.threads

    def submit(self, fn: Callable[..., Any], kwargs: dict[str, Any]) -> _Job:
        job = _Job(fn, kwargs)
        self._jobs.put(job)
        if self._idle.acquire(blocking=False):
            return job  # a waiting thread takes it
        with self._lock:
            if self._started >= self.threads:
                return job  # it waits in the queue for the first thread to free
            self._started += 1
            number = self._started
        threading.Thread(target=self._work, name=f"convoy-sync-tool-{number}", daemon=True).start()
        return job

    async def wait(self, job: _Job) -> Any:
        """The call's value; a cancellation (the caller's timeout) abandons the call."""
        try:
            return await asyncio.wrap_future(job.future)
        except asyncio.CancelledError:
            self._abandon(job)
            raise

    def _abandon(self, job: _Job) -> None:
        with self._lock:
            if job.future.cancel() or job.done:
                return  # it never started (and now never will), or it has already finished
            job.abandoned = True
            self._held += 1

    def _work(self) -> None:
        while True:
            self._run(self._jobs.get())
            self._idle.release()

    def _run(self, job: _Job) -> None:
        with self._lock:
            if not job.future.set_running_or_notify_cancel():
                return
            job.started = True
        try:
            job.future.set_result(job.context.run(job.fn, **job.kwargs))
        except BaseException as exc:  # noqa: BLE001 - the caller's to judge; a worker thread must not die
            job.future.set_exception(exc)
        finally:
            with self._lock:
                job.done = True
                if job.abandoned:
                    self._held -= 1


class ToolRegistry:
    def __init__(self, *, sync_threads: int = SYNC_TOOL_THREADS) -> None:
        self._tools: dict[str, Tool] = {}
        self._sync = SyncToolThreads(sync_threads)

    def register(
        self,
        fn: Callable[..., Any] | None = None,
        *,
        name: str | None = None,
        requires_approval: bool = False,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> Any:
        """Decorator, bare (``@tool``) or with options (``@tool(requires_approval=True)``)."""

        def add(f: Callable[..., Any]) -> Callable[..., Any]:
            tool_name, description, arguments = describe(f, name)
            schema = arguments.model_json_schema()
            schema.pop("title", None)
            self._tools[tool_name] = Tool(tool_name, description, schema, requires_approval, timeout_s, f, arguments)
            return f

        return add(fn) if fn is not None else add

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def names(self) -> list[str]:
        return sorted(self._tools)

    def check(self, names: Iterable[str]) -> list[str]:
        """Validate tool names an agent asks for; a clear error names the unknown ones."""
        names = list(dict.fromkeys(names))
        unknown = [n for n in names if n not in self._tools]
        if unknown:
            known = ", ".join(self.names()) or "none (set CONVOY_TOOL_MODULES)"
            raise InvalidRequestError(f"unknown tools {unknown}; registered tools: {known}")
        return names

    async def run(self, name: str, arguments: str) -> ToolResult:
        started = time.perf_counter()
        result = await self._run(name, arguments)
        return ToolResult(result.status, result.text, round((time.perf_counter() - started) * 1000, 3), result.failure)

    async def _run(self, name: str, arguments: str) -> ToolResult:
        tool = self._tools.get(name)
        if tool is None:
            return ToolResult("error", f"tool {name!r} is not available to this agent", failure="unavailable")
        try:
            raw = json.loads(arguments) if arguments.strip() else {}
            args = tool.arguments.model_validate(raw)
        except (json.JSONDecodeError, ValidationError) as exc:
            return ToolResult("error", f"invalid arguments for {name}: {exc}", failure="invalid_arguments")
        kwargs = {k: getattr(args, k) for k in type(args).model_fields}
        sync = not inspect.iscoroutinefunction(tool.fn)
        if sync and self._sync.exhausted:
            return ToolResult(
                "error",
                f"{name} cannot run now: all {self._sync.threads} threads for sync tools are held by calls still "
                "running past their timeouts",
                failure="unavailable",
            )
        job = self._sync.submit(tool.fn, kwargs) if sync else None
        try:
            async with asyncio.timeout(tool.timeout_s):
                value = await (self._sync.wait(job) if job is not None else tool.fn(**kwargs))
        except TimeoutError:
            if job is not None and not job.started:
                return ToolResult(
                    "error",
                    f"{name} did not start within its {tool.timeout_s:g}s: all {self._sync.threads} threads for sync "
                    "tools were busy",
                    failure="timeout",
                )
            return ToolResult("error", f"{name} timed out after {tool.timeout_s:g}s", failure="timeout")
        except Exception as exc:  # noqa: BLE001 - a failing tool is a result for the model, not a crashed run
            return ToolResult("error", f"{name} failed: {type(exc).__name__}: {exc}")
        return ToolResult("success", _text(value))


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if len(text) > MAX_RESULT_CHARS:
        text = text[:MAX_RESULT_CHARS] + f"... [cut: {len(text) - MAX_RESULT_CHARS} more characters]"
    return text


# The process-wide registry that ``@tool`` adds to.
TOOLS = ToolRegistry()
tool = TOOLS.register


def load(modules: Iterable[str]) -> ToolRegistry:
    """Import the modules that register tools (``CONVOY_TOOL_MODULES``); returns the registry."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigurationError(f"CONVOY_TOOL_MODULES: cannot import {module!r}: {exc}") from exc
    return TOOLS
