"""Convoy's one error tree.

::

    ConvoyError
    ├── NotFoundError                 an agent, conversation or run the caller cannot see
    ├── InvalidRequestError           well-formed but unacceptable input
    │   └── RequestTooLargeError      a body (or HeadersTooLargeError: headers) over its size limit
    ├── AuthenticationError           no API key, or one that does not exist (any more)
    │   └── StreamTokenError          a stream token that is forged, expired, or for another stream or route
    ├── RateLimitedError              a key over its request rate or concurrent runs (carries retry_after_s)
    ├── ConflictError
    │   ├── ConversationBusyError     on_busy=reject while a run is active (carries retry_after_s)
    │   └── PendingApprovalError      a user message while a tool approval is pending
    ├── StreamGoneError               a resume cursor older than what Redis still holds
    ├── UnavailableError              Redis or Ray cannot be reached
    ├── ConfigurationError            a setting that cannot work
    ├── EmbeddedRedisError            the embedded Redis could not start
    ├── FencedError                   a stale owner tried to write (never reaches a client)
    └── RunFailure                    why a run ended badly; becomes an SSE error item
        ├── LLMError                  the model provider failed (error_type llm_*)
        │   ├── LLMTimeoutError, LLMRateLimitError, LLMAuthenticationError,
        │   ├── LLMUnavailableError, LLMContextWindowError, LLMBadRequestError,
        │   └── LLMEmptyResponseError, LLMContentFilterError, LLMInvalidResponseError
        ├── SystemPromptOverflowError system prompt + tools exceed the context window
        ├── InputOverflowError        the current input alone exceeds the context window
        ├── ApprovalStillPendingError a queued message met an approval requested after it
        ├── InvalidApprovalError      an approval that answers no pending call
        ├── OwnerLostError            the process running the run died (error_type owner_lost)
        ├── StoreUnavailableError     Redis unreachable for longer than an owner waits (CONVOY_STORE_OUTAGE_S)
        └── InternalRunError          a bug or an unexpected failure (error_type internal_error)

Only ``api/errors.py`` turns these into HTTP statuses. A ``RunFailure`` raised after an SSE
stream started never changes the status: it ends the stream with ``stop_reason``, an
``event: error`` item carrying ``error_type`` and ``[DONE]``.
"""

from __future__ import annotations


class ConvoyError(Exception):
    """Base of every error Convoy raises on purpose."""

    code = "convoy_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFoundError(ConvoyError):
    code = "not_found"


class InvalidRequestError(ConvoyError):
    code = "invalid_request"


class RequestTooLargeError(InvalidRequestError):
    """A request body over ``max_request_bytes`` (raised by ``api.limits``)."""

    code = "request_too_large"


class HeadersTooLargeError(RequestTooLargeError):
    """Request headers over ``max_header_bytes`` together."""

    code = "headers_too_large"


class AuthenticationError(ConvoyError):
    code = "unauthenticated"


class StreamTokenError(AuthenticationError):
    """A stream token (``?token=``) that cannot open what it was sent to: malformed, forged,
    expired, scoped to another run or conversation, or sent to a route that takes none."""

    code = "invalid_stream_token"


class RateLimitedError(ConvoyError):
    code = "rate_limited"

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ConflictError(ConvoyError):
    code = "conflict"


class ConversationBusyError(ConflictError):
    code = "CONVERSATION_BUSY"

    def __init__(self, conversation_id: str, active_run_id: str | None, retry_after_s: int = 1) -> None:
        super().__init__(
            "Cannot send a new message: Another request is currently being processed for this conversation. "
            f"Please wait for the current request to complete (run {active_run_id}), or send with on_busy='queue' "
            "to wait in line or 'interrupt' to cancel the active run."
        )
        self.conversation_id = conversation_id
        self.active_run_id = active_run_id
        self.retry_after_s = retry_after_s


class PendingApprovalError(ConflictError):
    code = "PENDING_APPROVAL"

    def __init__(self, conversation_id: str, pending_request_id: str) -> None:
        super().__init__(
            "Cannot send a new message: The agent is waiting for approval on a tool call. Please approve or deny "
            f"the pending request before continuing (approval request {pending_request_id}; or cancel the "
            "conversation's runs)."
        )
        self.pending_request_id = pending_request_id


class StreamGoneError(ConvoyError):
    code = "stream_gone"


class UnavailableError(ConvoyError):
    code = "unavailable"


class ConfigurationError(ConvoyError):
    """A setting that cannot work (e.g. a tool module that does not import)."""

    code = "configuration"


class EmbeddedRedisError(ConvoyError):
    code = "embedded_redis"


class FencedError(ConvoyError):
    """A write carried an ownership epoch that is no longer current."""

    code = "fenced"


class RunFailure(ConvoyError):
    """A reason for a run to end in ``failed``; ``error_type`` and ``stop_reason`` go on the wire."""

    error_type = "internal_error"
    stop_reason = "error"
    public_message = "An unexpected error ended the run."

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail or self.public_message)
        self.detail = detail


class InternalRunError(RunFailure):
    pass


class SystemPromptOverflowError(RunFailure):
    error_type = "context_window_overflow"
    stop_reason = "context_window_overflow_in_system_prompt"
    public_message = "The agent's system prompt and tools alone do not fit the model's context window."


class InputOverflowError(RunFailure):
    """The message(s) of one request cannot fit the model's context window, whatever history is
    left out. Letta has no stop reason for it: the stream says ``error``, the error item the type."""

    error_type = "context_window_overflow_in_input"
    public_message = "The message sent does not fit the model's context window, even with no earlier history."


class ApprovalStillPendingError(RunFailure):
    error_type = "pending_approval"
    public_message = (
        "A tool approval became pending before this message ran. Answer the approval request, then send it again."
    )


class InvalidApprovalError(RunFailure):
    error_type = "invalid_approval"
    public_message = "The approval does not answer the pending tool calls."


class StoreUnavailableError(RunFailure):
    """Redis stayed unreachable for longer than the conversation's owner keeps sending a write of
    the run again (``CONVOY_STORE_OUTAGE_S``); the detail says for how long."""

    error_type = "store_unavailable"
    public_message = "Convoy could not reach Redis for longer than it waits, so the run was stopped. Send it again."


class OwnerLostError(RunFailure):
    error_type = "owner_lost"
    public_message = "The process running this conversation stopped before the run finished."


class LLMError(RunFailure):
    error_type = "llm_error"
    stop_reason = "llm_api_error"
    public_message = "The model provider request failed."
    # Whether trying the same request again may succeed (only ever done before the first token).
    retryable = False


class LLMTimeoutError(LLMError):
    error_type = "llm_timeout"
    public_message = "The model provider did not answer in time. Please try again."
    retryable = True


class LLMRateLimitError(LLMError):
    error_type = "llm_rate_limit"
    public_message = "The model provider's rate limit was exceeded. Wait before retrying."
    retryable = True


class LLMAuthenticationError(LLMError):
    error_type = "llm_authentication"
    public_message = "The model provider rejected the credentials."


class LLMUnavailableError(LLMError):
    error_type = "llm_unavailable"
    public_message = "The model provider is overloaded or unavailable. Please try again."
    retryable = True


class LLMContextWindowError(LLMError):
    error_type = "llm_context_window_exceeded"
    public_message = "The request does not fit the model's context window."


class LLMBadRequestError(LLMError):
    error_type = "llm_bad_request"
    public_message = "The model provider rejected the request."


class LLMContentFilterError(LLMError):
    error_type = "llm_content_filter"
    public_message = "The model provider's content filter stopped the response."


class LLMInvalidResponseError(LLMError):
    error_type = "llm_invalid_response"
    stop_reason = "invalid_llm_response"
    public_message = "The model provider sent a response Convoy cannot read."


class LLMEmptyResponseError(LLMError):
    error_type = "llm_empty_response"
    stop_reason = "invalid_llm_response"
    public_message = "The model returned an empty response."
