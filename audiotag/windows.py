"""Cutting a stream of samples into model passes.

A clip up to one window long is one pass over the whole clip, as upstream tags it. A longer clip is cut into
windows of ``window`` samples every ``hop`` samples, the last one ending where the clip ends, so every sample is
seen at least once. Only the current window is held in memory, whatever the length of the stream.
"""

from typing import Iterable, Iterator, Tuple

import numpy as np


def windows(blocks: Iterable[np.ndarray], window: int, hop: int) -> Iterator[Tuple[int, np.ndarray]]:
    """(start, samples) for each model pass; ``window`` 0 means the whole stream in one pass."""
    buffer = np.zeros(0, np.float32)
    offset = 0  # stream position of buffer[0]
    next_start = 0
    last_end = 0
    cut = False  # the stream is longer than one window
    for block in blocks:
        buffer = np.concatenate([buffer, block]) if len(buffer) else block
        if window <= 0:
            continue
        while offset + len(buffer) > next_start + window:
            cut = True
            yield next_start, buffer[next_start - offset:next_start - offset + window]
            last_end = next_start + window
            next_start += hop
        # Keep only what the next window, or a last window ending at the end, can still need.
        keep_from = min(next_start, offset + len(buffer) - window)
        if keep_from > offset:
            buffer, offset = buffer[keep_from - offset:], keep_from
    total = offset + len(buffer)
    if not cut:
        yield 0, buffer
    elif last_end < total:
        yield total - window, buffer[total - window - offset:]
