"""The service's counters and their Prometheus text exposition (format 0.0.4), written out by hand: the format
is a few lines of text, not worth a client library in the binary."""

import threading

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)  # seconds
GAUGES = {
    "connections": "Connections open (--max-connections).",
    "requests_in_progress": "POST /tag requests taken in and not yet answered.",
    "uploads_in_progress": "Bodies being received (--max-uploads-per-client; 2 x --max-pending in all).",
    "requests_in_work": "Bodies received and queued or being tagged (--max-pending), until their work ends (also "
                        "after a 504: cancelled work counts until it stops).",
    "queue_depth": "Bodies received and waiting for a worker.",
}


class Metrics:
    """Requests by status, audio seconds tagged, and a latency histogram; thread-safe."""

    def __init__(self):
        self._lock = threading.Lock()
        self.counts = {}  # HTTP status -> requests answered
        self.audio_seconds = 0.0
        self.latency = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.cancelled_work = {"queued": 0, "working": 0}  # requests answered 504/503 before their work was done

    def count(self, status: int, seconds=None) -> None:
        """One answer; ``seconds`` (POST /tag) also goes into the latency histogram."""
        with self._lock:
            self.counts[status] = self.counts.get(status, 0) + 1
            if seconds is not None:
                self.latency_sum += seconds
                self.latency[next((i for i, le in enumerate(LATENCY_BUCKETS) if seconds <= le),
                                  len(LATENCY_BUCKETS))] += 1

    def cancelled(self, stage: str) -> None:
        """A request answered (504, or 503 at shutdown) before its work was done: its work was cancelled while
        still waiting for a worker ("queued", never started) or while being tagged ("working")."""
        with self._lock:
            self.cancelled_work[stage] += 1

    def tagged(self, seconds: float) -> None:
        with self._lock:
            self.audio_seconds += seconds

    def text(self, batcher, gauges: dict) -> str:
        """All metrics, with the model's counters from ``batcher`` and the service's ``gauges`` (GAUGES names
        them)."""
        with self._lock:
            counts, latency, latency_sum = dict(self.counts), list(self.latency), self.latency_sum
            audio_seconds, cancelled = self.audio_seconds, dict(self.cancelled_work)
        lines = []

        def metric(name, kind, text, samples):
            lines.extend([f"# HELP audiotag_{name} {text}", f"# TYPE audiotag_{name} {kind}"])
            lines.extend(f"audiotag_{name}{labels} {value:.9g}" for labels, value in samples)

        metric("requests_total", "counter", "Requests answered, by HTTP status.",
               [(f'{{code="{code}"}}', n) for code, n in sorted(counts.items())])
        metric("requests_cancelled_total", "counter", "POST /tag answered 504 (--timeout) or 503 (shutdown) "
               "before its work was done, the work then cancelled: stage=queued never started, stage=working "
               "stopped at its next decoded block.", [(f'{{stage="{stage}"}}', n) for stage, n in cancelled.items()])
        metric("audio_seconds_total", "counter", "Seconds of audio tagged.", [("", audio_seconds)])
        metric("model_seconds_total", "counter", "Seconds spent running the model.", [("", batcher.model_seconds)])
        metric("model_windows_total", "counter", "Windows the model has tagged.", [("", batcher.windows)])
        metric("model_batches_total", "counter", "Batches the model has run.", [("", batcher.batches)])
        for name, text in GAUGES.items():
            metric(name, "gauge", text, [("", gauges[name])])
        cumulative, buckets = 0, []
        for le, n in zip((*map(str, LATENCY_BUCKETS), "+Inf"), latency):
            cumulative += n
            buckets.append((f'_bucket{{le="{le}"}}', cumulative))
        metric("request_duration_seconds", "histogram", "POST /tag: from the request's headers to its answer.",
               [*buckets, ("_sum", latency_sum), ("_count", cumulative)])
        return "\n".join(lines) + "\n"
