"""Prometheus metrics of the server, in Prometheus' naming convention: ``alignkit_`` prefix, ``_total`` counters,
``_seconds`` histograms, base units, and no per-user labels (route, status, variant, kind, value, category and
detector are the only labels: a bounded set). One registry per app, so tests can run several apps in a process.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "alignkit_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "alignkit_request_duration_seconds", "Request latency by route", ["route"], buckets=LATENCY_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.ttft = Histogram(
            "alignkit_time_to_first_token_seconds", "Time from a chat request to its first token", ["variant"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.prompt_tokens = Counter("alignkit_prompt_tokens", "Prompt tokens", ["variant"], registry=r)
        self.generated_tokens = Counter("alignkit_generated_tokens", "Generated tokens", ["variant"], registry=r)
        self.in_flight = Gauge("alignkit_requests_in_flight", "Requests being served now", registry=r)
        self.chats_in_flight = Gauge("alignkit_chat_requests_in_flight", "Chat/compare requests generating", registry=r)
        self.feedback = Counter(
            "alignkit_feedback", "Feedback stored, by kind (thumbs | comparison), value and variant",
            ["kind", "value", "variant"], registry=r,
        )  # fmt: skip
        self.store_errors = Counter("alignkit_store_errors", "Store writes or reads that failed", registry=r)
        self.safety_flags = Counter(
            "alignkit_safety_flags", "Responses flagged, by category and variant", ["category", "variant"], registry=r
        )
        self.rejected = Counter("alignkit_rejected_requests", "Requests refused by a limit", ["reason"], registry=r)
        self.detector_alarm = Gauge(
            "alignkit_detector_alarm", "1 while a failure detector alarms", ["detector"], registry=r
        )
        self.detector_value = Gauge(
            "alignkit_detector_value", "A failure detector's current value (NaN before enough data)", ["detector"],
            registry=r,
        )  # fmt: skip
        self.weight = Gauge("alignkit_variant_weight", "A/B traffic weight of each variant", ["variant"], registry=r)
        self.ready = Gauge("alignkit_ready", "1 once every variant is loaded", registry=r)
        self.decode_rows = Gauge(
            "alignkit_decode_rows", "Rows a local variant is decoding together now", ["variant"], registry=r
        )
        self.rollout_events = Gauge(
            "alignkit_rollout_events", "Decisions of alignkit loop recorded in the store, by action", ["action"],
            registry=r,
        )  # fmt: skip
        self.rollout_share = Gauge(
            "alignkit_rollout_candidate_share", "The traffic share of each loop's candidate (1 after a promotion)",
            ["loop"], registry=r,
        )  # fmt: skip
        self.queue_waiting = Gauge(
            "alignkit_queue_waiting", "Requests queued for a local variant's decode loop", ["variant"], registry=r
        )

    def set_detectors(self, state: dict[str, dict]) -> None:
        for name, s in state.items():
            self.detector_alarm.labels(name).set(1.0 if s.get("alarm") else 0.0)
            value = s.get("value")
            self.detector_value.labels(name).set(float("nan") if value is None else float(value))

    def set_weights(self, weights: dict[str, float]) -> None:
        for name, w in weights.items():
            self.weight.labels(name).set(w)

    def set_rollout(self, summary: dict) -> None:
        for action, n in summary["counts"].items():
            self.rollout_events.labels(action).set(n)
        for loop, event in summary["latest"].items():
            self.rollout_share.labels(loop).set(event["share"] if event["share"] is not None else 0.0)
