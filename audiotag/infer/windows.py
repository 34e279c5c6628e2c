"""Cutting a stream of samples into model passes.

A clip up to one window long is one pass over the whole clip, as upstream tags it. A longer clip is cut into
windows of ``window`` samples every ``hop`` samples, the last one ending where the clip ends, so every sample is
seen at least once. Only the current window is held in memory, whatever the length of the stream. ``Cutter``
takes blocks as they are pushed, so one stream can feed two layouts at once (the clip's windows and the shorter
windows of ``--events``).
"""

from typing import Iterable, Iterator, List, Sequence, Tuple

import numpy as np

from ..decode.stream import joined


class Cutter:
    """Windows of one layout, from blocks pushed in stream order; ``window`` 0 means the whole stream."""

    def __init__(self, window: int, hop: int):
        self.window, self.hop = window, hop
        self.buffer = np.zeros(0, np.float32)
        self.offset = 0  # stream position of buffer[0]
        self.next_start = 0
        self.last_end = 0
        self.cut = False  # the stream is longer than one window

    def push(self, block: np.ndarray) -> List[Tuple[int, np.ndarray]]:
        """The (start, samples) windows complete once ``block`` is in."""
        self.buffer = joined(self.buffer, block) if len(self.buffer) else block
        if self.window <= 0:
            return []
        done = []
        while self.offset + len(self.buffer) > self.next_start + self.window:
            self.cut = True
            begin = self.next_start - self.offset
            done.append((self.next_start, self.buffer[begin:begin + self.window]))
            self.last_end = self.next_start + self.window
            self.next_start += self.hop
        # Keep only what the next window, or a last window ending at the end, can still need.
        keep_from = min(self.next_start, self.offset + len(self.buffer) - self.window)
        if keep_from > self.offset:
            self.buffer, self.offset = self.buffer[keep_from - self.offset:], keep_from
        return done

    def finish(self) -> List[Tuple[int, np.ndarray]]:
        """The last window: the whole stream when it was never cut, else one ending at the end if needed."""
        total = self.offset + len(self.buffer)
        if not self.cut:
            return [(0, self.buffer)]
        if self.last_end < total:
            return [(total - self.window, self.buffer[total - self.window - self.offset:])]
        return []


def windows(blocks: Iterable[np.ndarray], window: int, hop: int) -> Iterator[Tuple[int, np.ndarray]]:
    """(start, samples) for each model pass; ``window`` 0 means the whole stream in one pass."""
    for _, start, samples in passes(blocks, [(window, hop)]):
        yield start, samples


def passes(blocks: Iterable[np.ndarray], layouts: Sequence[Tuple[int, int]]) -> Iterator[Tuple[int, int, np.ndarray]]:
    """(layout number, start, samples) for the windows of several (window, hop) layouts of one stream, each
    layout's in time order, all yielded as soon as the stream holds them."""
    cutters = [Cutter(window, hop) for window, hop in layouts]
    for block in blocks:
        for number, cutter in enumerate(cutters):
            for start, samples in cutter.push(block):
                yield number, start, samples
    for number, cutter in enumerate(cutters):
        for start, samples in cutter.finish():
            yield number, start, samples
