"""A/B rollout: sticky assignment of users to weighted variants by hashing a stable user id.

A user id hashes to a point u in [0, 1); the variants own consecutive slices of [0, 1) sized by their weights, in
the order they were declared. Raising a new (last) variant's weight from 5% to 10% widens its slice downwards, so
every user already on it stays on it (a gradual rollout 5% -> 10% -> 25% -> 50% -> 100% only ever adds users).
Only the hash of a user id is ever stored.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import threading

from alignkit.errors import UserError


def user_hash(user_id: str) -> str:
    """sha256 hex of a user id: what the store and the logs keep instead of the id."""
    return hashlib.sha256(f"alignkit-user:{user_id}".encode()).hexdigest()


def owner_hash(user_id: str | None, api_key: str | None) -> str | None:
    """Who a response or comparison belongs to: the hash of the user id the request named, else of the API key it
    used, else None (an anonymous request on a keyless server: anyone may rate it)."""
    if user_id:
        return user_hash(user_id)
    if api_key:
        return "key-" + hashlib.sha256(f"alignkit-key:{api_key}".encode()).hexdigest()[:48]
    return None


def unit_point(user_id: str) -> float:
    """A user's fixed point in [0, 1): the first 8 bytes of a sha256 of the id, as a fraction of 2**64."""
    digest = hashlib.sha256(f"alignkit-ab:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def check_weights(weights: dict[str, float], known: list[str] | None = None, where: str = "weights") -> dict:
    """Validated weights normalized to sum 1: known variant names, finite, >= 0, not all 0."""
    if not isinstance(weights, dict) or not weights:
        raise UserError(f"{where}: give a mapping of variant name to weight, e.g. {{'base': 0.95, 'new': 0.05}}")
    out = {}
    for name, w in weights.items():
        if known is not None and name not in known:
            raise UserError(f"{where}: unknown variant '{name}'. Fix: use one of {', '.join(known)}")
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise UserError(f"{where}.{name} is {w!r}. Fix: use a finite number >= 0")
        out[name] = float(w)
    scale = max(out.values())
    if scale <= 0:
        raise UserError(f"{where}: all weights are 0. Fix: give at least one variant a positive weight")
    total = sum(out.values())
    if not math.isfinite(total):  # huge weights (1e308 + 1e308): scaled into [0, 1] first
        out = {name: w / scale for name, w in out.items()}
        total = sum(out.values())
    return {name: w / total for name, w in out.items()}


class Router:
    """Weighted sticky assignment; ``set_weights`` swaps the weights atomically at runtime.

    ``order``: the declared variant order (slices follow it); variants missing from a weights mapping get 0.
    """

    def __init__(self, order: list[str], weights: dict[str, float] | None = None):
        if not order:
            raise UserError("serve: no variants. Fix: give --model or at least one --variant NAME=SOURCE")
        self.order = list(order)
        self._lock = threading.Lock()
        self.set_weights(weights or {order[0]: 1.0})

    @property
    def weights(self) -> dict[str, float]:
        return dict(self._weights)

    def set_weights(self, weights: dict[str, float]) -> dict[str, float]:
        normalized = check_weights(weights, self.order)
        full = {name: normalized.get(name, 0.0) for name in self.order}
        # cumulative upper bounds in declared order; the last positive one is 1.0 exactly (no rounding gap). All
        # computed before anything is assigned: a refused change changes nothing
        bounds, acc = [], 0.0
        for name in self.order:
            acc += full[name]
            bounds.append((acc, name))
        last = max(i for i, (_, name) in enumerate(bounds) if full[name] > 0)
        bounds[last] = (1.0, bounds[last][1])
        with self._lock:
            self._weights, self._bounds = full, bounds[: last + 1]
        return full

    def add(self, name: str, weight: float = 0.0) -> dict[str, float]:
        """Append a variant (its slice is the end of [0, 1)); with ``weight`` w > 0 it takes w and the others keep
        their proportions of the rest, so users move only onto the new variant."""
        if name in self.order:
            raise UserError(f"variant '{name}' is already served. Fix: pick another name")
        if isinstance(weight, bool) or not 0 <= weight < 1:
            raise UserError(f"weight is {weight!r}. Fix: use a share in [0, 1), e.g. 0.05")
        current = self.weights
        self.order.append(name)
        return self.set_weights({**{k: v * (1 - weight) for k, v in current.items()}, name: weight})

    def assign(self, user_id: str | None) -> str:
        """The variant of ``user_id`` (the same for the same id while the weights stay); None = a random draw."""
        u = unit_point(user_id) if user_id else secrets.randbelow(2**53) / 2**53
        with self._lock:
            for bound, name in self._bounds:
                if u < bound and self._weights[name] > 0:
                    return name
            return self._bounds[-1][1]

    def other(self, variant: str) -> str | None:
        """A second variant for a side-by-side comparison: the heaviest other variant with weight > 0, else any
        other variant, else None (only one is served)."""
        others = [v for v in self.order if v != variant]
        if not others:
            return None
        weighted = [v for v in others if self._weights[v] > 0]
        return max(weighted or others, key=lambda v: self._weights[v])
