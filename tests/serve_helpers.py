"""Start a real `alignkit serve` process on 127.0.0.1 for tests (``alignkit.serve.process``), wait for /health,
stop it."""

from __future__ import annotations

from alignkit.serve.process import free_port, serve_process

__all__ = ["free_port", "serve_process"]
