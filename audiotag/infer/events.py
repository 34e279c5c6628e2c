"""Sound events: the stretches of a recording where a label is present, from a sequence of window scores.

The model scores whole windows; where in a window the sound is it does not say. An event's times therefore come
from many short, overlapping windows: each window's score is given to the stretch of time nearer to its centre
than to any other window's centre ("centre" attribution), and a label is present where its score reaches both an
absolute floor and a fraction of the label's own peak in the recording (a window holding a little of a loud sound
still scores it fairly high; relative to the peak, it is the weaker neighbour). Consecutive present windows make
one event, reported with its peak score. ``scripts/studies/event_study.py`` chose the window, hop and thresholds.
"""

from dataclasses import dataclass

import numpy as np

# Chosen by scripts/studies/event_study.py (see the README's "Events" section for its table).
EVENT_WINDOW = 2.0  # seconds per event window
EVENT_HOP = 1.0  # seconds between event windows
EVENT_FLOOR = 0.2  # a label is never present below this score
EVENT_RELATIVE = 0.3  # ... nor below this fraction of its peak score in the recording
EVENT_GAP = 1.0  # seconds: stretches of one label closer than this are one event (the pauses between words)
ATTRIBUTIONS = ("centre", "span")


@dataclass(frozen=True)
class Event:
    label: str  # AudioSet display name
    index: int  # output index of the label
    start: float  # seconds
    end: float
    score: float  # the peak window score within the event


def find_events(starts, ends, scores, *, duration: float, floor: float = EVENT_FLOOR, relative: float = EVENT_RELATIVE,
                gap: float = EVENT_GAP, attribution: str = "centre", labels=None) -> list:
    """Events from window scores: ``starts``/``ends`` (windows,) in seconds, in time order; ``scores`` (windows,
    labels) in 0..1; ``labels`` the display names (else labels are left empty). Returns Events in time order (ties
    by label index)."""
    starts, ends, scores = np.asarray(starts, float), np.asarray(ends, float), np.asarray(scores, float)
    if attribution not in ATTRIBUTIONS:
        raise ValueError(f"attribution must be one of {ATTRIBUTIONS}, got {attribution!r}")
    if not len(starts):
        return []
    if attribution == "centre":  # each window owns the time nearer to its centre than to its neighbours'
        centres = (starts + ends) / 2
        cuts = (centres[1:] + centres[:-1]) / 2
        owned_from = np.concatenate([[0.0], cuts])
        owned_to = np.concatenate([cuts, [duration]])
    else:
        owned_from, owned_to = starts, ends
    peaks = scores.max(axis=0)
    present = scores >= np.maximum(floor, relative * peaks)
    events = []
    for index in np.flatnonzero(peaks >= floor):
        rows = np.flatnonzero(present[:, index])
        # Runs of windows whose stretches touch, overlap or lie less than ``gap`` apart.
        run_start = previous = rows[0]
        for row in [*rows[1:], None]:
            if row is not None and owned_from[row] - owned_to[previous] <= gap + 1e-9:
                previous = row
                continue
            label = labels[index] if labels is not None else ""
            events.append(Event(label, int(index), float(owned_from[run_start]), float(owned_to[previous]),
                                float(scores[run_start:previous + 1, index].max())))
            if row is not None:
                run_start = previous = row
    return sorted(events, key=lambda e: (e.start, e.index))
