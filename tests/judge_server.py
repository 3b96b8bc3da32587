"""A small OpenAI-compatible chat server for tests: a real (tiny) model behind ``/v1/chat/completions`` and
``/v1/models``, served by uvicorn on 127.0.0.1 in a background thread.

    messages -> the model's chat template (``add_generation_prompt``, or ``continue_final_message`` as vLLM names
    it) -> HF ``generate`` (greedy at temperature 0) -> OpenAI response, with per-token ``logprobs`` and
    ``top_logprobs`` (log softmax of the raw logits) when asked

It renders and runs the model independently of ``alignkit`` (plain transformers), so a test comparing its answers
with ``LLMJudge``'s local ones checks both. ``app.state.logprobs = False`` makes it an endpoint without logprobs.
"""

from __future__ import annotations

import socket
import threading
import time

import torch
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[dict]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float = 1.0
    logprobs: bool = False
    top_logprobs: int | None = None
    seed: int | None = None
    continue_final_message: bool = False
    add_generation_prompt: bool = True


def _error(status: int, message: str, kind: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": status}}, status)


def make_app(model_dir: str, served_name: str) -> FastAPI:
    """The app serving the model in ``model_dir`` under the name ``served_name``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    lock = threading.Lock()  # one forward at a time: deterministic, and 2 CPU cores
    app = FastAPI()
    app.state.logprobs = True
    app.state.requests = 0

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": served_name, "object": "model", "owned_by": "alignkit-tests"}]}

    @app.post("/v1/chat/completions")
    def chat(req: ChatRequest):
        app.state.requests += 1
        if req.model != served_name:
            return _error(404, f"The model `{req.model}` does not exist.", "NotFoundError")
        if req.top_logprobs is not None and not 0 <= req.top_logprobs <= 20:
            return _error(400, "top_logprobs must be between 0 and 20", "BadRequestError")
        text = tok.apply_chat_template(
            req.messages, tokenize=False, add_generation_prompt=req.add_generation_prompt and not
            req.continue_final_message, continue_final_message=req.continue_final_message,
        )  # fmt: skip
        ids = torch.tensor([tok(text, add_special_tokens=False).input_ids])
        budget = req.max_completion_tokens or req.max_tokens or 16
        sample = req.temperature > 0
        with lock, torch.no_grad():
            if sample and req.seed is not None:
                torch.manual_seed(req.seed)
            out = model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=budget, do_sample=sample,
                temperature=req.temperature if sample else None, top_p=None, top_k=None, output_logits=True,
                return_dict_in_generate=True, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
            )  # fmt: skip
        new = out.sequences[0, ids.shape[1] :].tolist()
        finish = "stop" if new and new[-1] == tok.eos_token_id else "length"
        logprobs = None
        if req.logprobs and app.state.logprobs:
            content = []
            for token, logits in zip(new, out.logits):
                logp = logits[0].float().log_softmax(-1)
                top = logp.topk(req.top_logprobs or 0) if req.top_logprobs else None
                content.append({
                    **_token(tok, token, float(logp[token])),
                    "top_logprobs": [] if top is None else
                    [_token(tok, t, float(v)) for v, t in zip(top.values.tolist(), top.indices.tolist())],
                })  # fmt: skip
            logprobs = {"content": content, "refusal": None}
        answer = tok.decode(new, skip_special_tokens=True)
        return {
            "id": f"chatcmpl-{app.state.requests}", "object": "chat.completion", "created": int(time.time()),
            "model": served_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": finish,
                         "logprobs": logprobs}],
            "usage": {"prompt_tokens": ids.shape[1], "completion_tokens": len(new),
                      "total_tokens": ids.shape[1] + len(new)},
        }  # fmt: skip

    return app


def _token(tok, token_id: int, logprob: float) -> dict:
    text = tok.decode([token_id])
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


class ServerThread:
    """``with ServerThread(app) as server: server.url`` -> "http://127.0.0.1:PORT/v1" (a free port)."""

    def __init__(self, app: FastAPI):
        import uvicorn

        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test judge server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


def free_port() -> int:
    """A port on 127.0.0.1 with nothing listening (for an unreachable base_url)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
