"""infer/windows.py against plain numpy slicing: any length, window, hop and cut of the stream into blocks gives
the windows the README describes, holding no more than a window in memory."""

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

from audiotag.infer import windows


def sliced(samples: np.ndarray, window: int, hop: int) -> list:
    """The specification, by slicing the whole array: a clip up to one window long is one pass; a longer one is
    cut every ``hop`` samples, plus a last window ending where the clip ends."""
    if window == 0 or len(samples) <= window:
        return [(0, samples)]
    last = len(samples) - window
    return [(start, samples[start:start + window]) for start in range(0, last, hop)] + [(last, samples[last:])]


def blocks_of(samples: np.ndarray, cuts: list) -> list:
    bounds = sorted({0, len(samples), *(c % (len(samples) + 1) for c in cuts)})
    return [samples[a:b] for a, b in zip(bounds, bounds[1:])]


def same(got: list, expected: list) -> bool:
    return [s for s, _ in got] == [s for s, _ in expected] and \
        all(np.array_equal(a, b) for (_, a), (_, b) in zip(got, expected))


layouts = st.integers(1, 700).flatmap(lambda w: st.tuples(st.just(w), st.integers(1, w))) | \
    st.just((0, 160))  # window 0: the whole stream


@settings(max_examples=400, deadline=None)
@given(length=st.integers(0, 4000), layout=layouts, cuts=st.lists(st.integers(0, 4000), max_size=12))
@example(length=1000, layout=(1000, 500), cuts=[])  # exactly one window: not cut
@example(length=1001, layout=(1000, 500), cuts=[1000])  # one sample more: two windows, the second at 1
@example(length=2000, layout=(1000, 1000), cuts=[])  # windows end to end: the last is a hop's window
@example(length=2000, layout=(1000, 500), cuts=[1, 2, 3])
@example(length=0, layout=(10, 5), cuts=[])  # nothing: one empty pass
@example(length=3000, layout=(1, 1), cuts=[7])
def test_windows_equal_plain_slicing(length, layout, cuts):
    window, hop = layout
    samples = np.arange(length, dtype=np.float32)  # every sample its own value: any shift shows
    got = list(windows.windows(blocks_of(samples, cuts), window, hop))
    assert same(got, sliced(samples, window, hop)), (got[:3], sliced(samples, window, hop)[:3])
    assert all(w.dtype == np.float32 for _, w in got)
    covered = np.zeros(length, bool)
    for start, w in got:
        covered[start:start + len(w)] = True
    assert covered.all()  # every sample seen at least once


@settings(max_examples=200, deadline=None)
@given(length=st.integers(0, 4000), first=layouts, second=layouts, cuts=st.lists(st.integers(0, 4000), max_size=12))
def test_two_layouts_of_one_stream_each_as_alone_and_as_soon_as_held(length, first, second, cuts):
    """passes(): the clip's windows and the events' shorter ones from one stream; each window is yielded once the
    blocks pushed so far hold it, and a cutter keeps no more than one window."""
    samples = np.arange(length, dtype=np.float32)
    blocks = blocks_of(samples, cuts)
    pushed = [0, 0, False]  # samples pushed before the last block, with it, whether the stream has ended

    def counted():
        for block in blocks:
            pushed[:2] = pushed[1], pushed[1] + len(block)
            yield block
        pushed[2] = True

    got, at_the_end = {0: [], 1: []}, {0: 0, 1: 0}
    for number, start, w in windows.passes(counted(), [first, second]):
        assert start + len(w) <= pushed[1]  # held
        assert pushed[2] or pushed[0] <= start + len(w)  # and not held back: the last block completed it
        at_the_end[number] += pushed[2]
        got[number].append((start, w))
    assert at_the_end[0] <= 1 and at_the_end[1] <= 1  # only a last window waits for the stream's end
    for number, (window, hop) in enumerate((first, second)):
        assert same(got[number], sliced(samples, window, hop))

    cutter = windows.Cutter(*first)
    for block in blocks:
        cutter.push(block)
        if first[0]:
            assert len(cutter.buffer) <= first[0]  # what the next window can still need, no more
