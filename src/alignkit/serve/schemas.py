"""Request bodies of the server (pydantic), in the OpenAI chat-completions shape where one exists, and the
OpenAI-shaped error body every failure returns."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_TEXT = 100_000  # characters of one message; the body limit (413) bounds the whole request first


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


class ChatRequest(BaseModel):
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
    seed: int | None = None
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


class CompareRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    messages: list[Message] = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    seed: int | None = None
    user: str | None = Field(None, max_length=256)

    def plain_messages(self) -> list[dict]:
        return [{"role": m.role, "content": m.text()} for m in self.messages]


class FeedbackRequest(BaseModel):
    response_id: str = Field(min_length=1, max_length=200)
    value: Literal["up", "down"]
    comment: str | None = Field(None, max_length=4000)
    feedback_id: str | None = Field(None, min_length=1, max_length=200)
    user: str | None = Field(None, max_length=256)


class VoteRequest(BaseModel):
    """A vote by what the user saw: the left answer, the right one, a tie, or both bad."""

    vote: Literal["left", "right", "tie", "both_bad"]
    vote_id: str | None = Field(None, min_length=1, max_length=200)
    user: str | None = Field(None, max_length=256)


class WeightsRequest(BaseModel):
    weights: dict[str, float]


class VariantRequest(BaseModel):
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
