"""Per-input limits, so that no single input holds a worker for long: how much audio is tagged
(``--max-duration``) and how long an input may take (``--timeout``).

Both act on the decoded blocks of any decoder's ``decode.Stream``: a cut input stops decoding at the limit (a
393 kB FLAC can hold 10 hours of silence), and an input past its time fails between two blocks with "timed out
after SEC s"; a service's request cancelled because its answer went first (504, 503) stops there too. A
decoder stuck inside one native call is not reached here: the supervisor kills that worker (see ``supervisor``).
"""

import math
import threading
import time
from typing import Optional

from ..errors import AudioError
from ..options import Limits  # declared with the options (a batch's supervisor needs them, not the decoders)
from .stream import Stream


def apply(stream: Stream, limits: Limits, cancelled: Optional[threading.Event] = None) -> Stream:
    """``stream`` with the limits on its blocks; ``stream.truncated`` says whether the cut happened. Once
    ``cancelled`` is set (``serve``: the request was answered 504 or 503) the next block fails instead."""
    if not (limits.max_duration or limits.timeout or cancelled):
        return stream
    deadline = time.monotonic() + limits.timeout if limits.timeout else None
    max_frames = math.ceil(limits.max_duration * stream.rate) if limits.max_duration else None

    def limited(blocks):
        seen = 0
        for block in blocks:
            if cancelled is not None and cancelled.is_set():
                raise AudioError("cancelled: the request was answered before its audio was tagged")
            if deadline is not None and time.monotonic() > deadline:
                raise AudioError(f"timed out after {limits.timeout:g} s")
            if max_frames is not None and seen + len(block) > max_frames:
                if seen < max_frames:
                    yield block[:max_frames - seen]
                stream.truncated = True
                return  # the decoder is closed with the stream: nothing more is read
            seen += len(block)
            yield block

    stream.map_blocks(limited)
    return stream
