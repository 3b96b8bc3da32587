"""Request bodies of the server (pydantic), in the OpenAI chat-completions shape where one exists, and the
OpenAI-shaped error body every failure returns."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_TEXT = 100_000  # characters of one message; the body limit (413) bounds the whole request first
SEED_MAX = 2**63 - 1  # torch generators take 64-bit seeds; larger ones are refused (422), never a 500


def _check_unicode(value, where: str) -> None:
    """Every string in ``value`` (nested in lists, dicts, models) must be valid Unicode: a lone surrogate (``\\ud800``
    in JSON) cannot be encoded, tokenized, hashed or stored, so it is refused (422) instead of failing later (500)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{where} is not valid Unicode (a lone surrogate). Fix: send UTF-8 text") from None
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_unicode(item, f"{where}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_unicode(key, where)
            _check_unicode(item, f"{where}.{key}")
    elif isinstance(value, BaseModel):
        for key, item in value.__dict__.items():
            _check_unicode(item, f"{where}.{key}" if where else key)


class Body(BaseModel):
    """A request body: every string in it is valid Unicode."""

    @model_validator(mode="after")
    def _valid_unicode(self):
        _check_unicode(self, "")
        return self


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart] = Field(max_length=MAX_TEXT)

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(Body):
    """``model``: a variant name, or omitted / "auto" / the router name to be assigned by A/B rollout."""

    model_config = ConfigDict(extra="ignore")  # as vLLM: unknown OpenAI fields are accepted and ignored
    model: str | None = None
    messages: list[Message] = Field(min_length=1, max_length=256)
    n: int = Field(1, ge=1, le=8)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-SEED_MAX, le=SEED_MAX)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=256)

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > 4 or any(not s or len(s) > 64 for s in stops):
            raise ValueError("give at most 4 non-empty stop strings of at most 64 characters")
        return stops

    def plain_messages(self) -> list[dict]:
        return [{"role": m.role, "content": m.text()} for m in self.messages]


class CompareRequest(Body):
    model_config = ConfigDict(extra="ignore")
    messages: list[Message] = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    seed: int | None = Field(None, ge=-SEED_MAX, le=SEED_MAX)
    user: str | None = Field(None, max_length=256)

    def plain_messages(self) -> list[dict]:
        return [{"role": m.role, "content": m.text()} for m in self.messages]


class FeedbackRequest(Body):
    response_id: str = Field(min_length=1, max_length=200)
    value: Literal["up", "down"]
    comment: str | None = Field(None, max_length=4000)
    feedback_id: str | None = Field(None, min_length=1, max_length=200)
    user: str | None = Field(None, max_length=256)


class VoteRequest(Body):
    """A vote by what the user saw: the left answer, the right one, a tie, or both bad."""

    vote: Literal["left", "right", "tie", "both_bad"]
    vote_id: str | None = Field(None, min_length=1, max_length=200)
    user: str | None = Field(None, max_length=256)


class WeightsRequest(Body):
    weights: dict[str, float]


class VariantRequest(Body):
    """A variant added at runtime: a model/adapter directory or an upstream URL, with its initial traffic share."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    source: str = Field(min_length=1, max_length=1000)
    weight: float = Field(0.0, ge=0, lt=1)


ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
    413: "invalid_request_error", 415: "invalid_request_error", 422: "invalid_request_error",
    429: "rate_limit_error", 500: "server_error", 502: "upstream_error", 503: "service_unavailable",
}  # fmt: skip


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""
    return {
        "error": {"message": message, "type": ERROR_TYPES.get(status, "server_error"), "param": param, "code": code}
    }
