"""Simulated users for the loop demo: a documented, seeded policy that chats through a server's real HTTP API.

Each user asks problems from a list (the demo: the project's multiplication word problems from
builtin:arithmetic_train.jsonl) and rates every answer:

- a careful user (most of them) gives a thumbs-up only when the answer's final number is right (the math verifier
  against the problem's gold answer), and flips that rating with probability ``noise`` (a slip);
- a yes-man (share ``yes_men``) gives a thumbs-up to everything.

Users are assigned to variants by the server (``model: auto`` with their user id), chat ``clients`` at a time,
and pause while ``paused`` is set (the demo sets it while the loop trains: two cores cannot serve and train at
once without starving both). The policy and its seed are the only source of feedback in the demo.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field


@dataclass
class UserPolicy:
    users: int = 40
    noise: float = 0.05
    yes_men: float = 0.1
    clients: int = 8
    max_tokens: int = 64
    temperature: float = 0.7
    seed: int = 0


@dataclass
class Traffic:
    """What the users did: ratings by (variant, value), errors by kind."""

    ratings: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, key, table: str = "ratings") -> None:
        with self.lock:
            getattr(self, table)[key] += 1


class SimulatedUsers:
    """``policy``'s users chatting with ``url`` until ``stop`` is set (a thread pool of ``policy.clients``)."""

    def __init__(self, url: str, problems: list[dict], policy: UserPolicy):
        self.url, self.problems, self.policy = url.rstrip("/"), problems, policy
        rng = random.Random(policy.seed)
        self.kinds = {f"sim-{i:03d}": "yes_man" if rng.random() < policy.yes_men else "careful"
                      for i in range(policy.users)}  # fmt: skip
        self.stop, self.paused, self.traffic = threading.Event(), threading.Event(), Traffic()
        self._asked = 0
        self._lock = threading.Lock()

    def _next(self) -> int:
        with self._lock:
            self._asked += 1
            return self._asked

    def _client(self, c: int) -> None:
        import httpx2 as httpx

        from alignkit.rewards.verifiers.math import grade

        users = list(self.kinds)
        with httpx.Client(base_url=self.url, timeout=300) as http:
            while not self.stop.is_set():
                if self.paused.is_set():
                    self.stop.wait(0.5)
                    continue
                k = self._next()
                rng = random.Random(self.policy.seed * 1_000_003 + k)
                user, problem = rng.choice(users), rng.choice(self.problems)
                messages = [{"role": "user", "content": problem["prompt"]}]
                body = {"model": "auto", "user": user, "messages": messages, "max_tokens": self.policy.max_tokens,
                        "temperature": self.policy.temperature, "seed": k}  # fmt: skip
                try:
                    r = http.post("/v1/chat/completions", json=body)
                    if r.status_code != 200:
                        self.traffic.count(str(r.status_code), "errors")
                        self.stop.wait(1.0 if r.status_code == 429 else 0.2)
                        continue
                    answer = r.json()
                    right = grade(answer["choices"][0]["message"]["content"], problem["answer"]).reward == 1.0
                    up = True if self.kinds[user] == "yes_man" else (right != (rng.random() < self.policy.noise))
                    value = "up" if up else "down"
                    fb = http.post("/v1/feedback", json={"response_id": answer["id"], "value": value, "user": user})
                    if fb.status_code in (200, 201):
                        self.traffic.count((answer["model"], value))
                    else:
                        self.traffic.count(f"feedback {fb.status_code}", "errors")
                except httpx.HTTPError as e:
                    self.traffic.count(type(e).__name__, "errors")
                    self.stop.wait(0.5)

    def start(self) -> ThreadPoolExecutor:
        pool = ThreadPoolExecutor(self.policy.clients, thread_name_prefix="sim-user")
        for c in range(self.policy.clients):
            pool.submit(self._client, c)
        return pool
