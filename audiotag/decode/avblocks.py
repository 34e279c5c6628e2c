"""The slim FFmpeg through _avblocks.c: whole blocks per call, decoded without Python's lock.

ctypes releases the lock for the length of each call into a CDLL, so a block of seconds (demuxing, decoding and
the conversion to interleaved float32) runs beside other threads; PyAV needed the lock for every frame. A path
or a seekable file is read by the C code itself (pread), bytes from memory; a pipe, or a compressed archive's
member, calls back into Python once per 64 kB read. scripts/build/build_avblocks.sh builds the library
(scripts/build/setup.sh runs it); without it ``available()`` is False and ``ffmpeg`` decodes through PyAV as
before.
"""

import ctypes
import io
import os
import stat
from pathlib import Path
from typing import Optional

import numpy as np

LIBRARY = Path(__file__).with_name("_avblocks.so")
NO_AUDIO, NO_DECODER, TOO_MANY_BAD = 1, 2, 3  # _avblocks.c's own codes; the rest are FFmpeg's (AVERROR)
KINDS = ("video", "audio", "data", "subtitle", "attachment")  # AVMEDIA_TYPE_*, as PyAV names them
_EIO = -5
_READ = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_int64)  # (buffer, size, position)
INTERFACE = 2  # avb_interface() of the _avblocks.c this module calls

_QUICK = ("avb_new", "avb_close", "avb_strerror", "avb_quiet", "avb_interface")  # no input read, no decoding
_lib = None
_missing = None  # why the library cannot be used, once tried


class Error(Exception):
    """A failing call: ``code`` is FFmpeg's AVERROR or one of this module's codes."""

    def __init__(self, code: int, format_name: str = "", stream_kinds: frozenset = frozenset()):
        super().__init__(code)
        self.code = code
        self.format_name, self.stream_kinds = format_name, stream_kinds  # what the container held, once probed


def _load():
    global _lib, _missing
    if _lib is not None or _missing is not None:
        return _lib
    try:
        lib = ctypes.CDLL(str(LIBRARY))
        # The same library, its calls keeping Python's lock: for the ones that take microseconds, where letting go
        # of the lock would cost up to 5 ms beside busy threads to take it back.
        quick = ctypes.PyDLL(str(LIBRARY))
    except OSError as error:
        _missing = str(error)
        return None
    pointer, c_int, c_char_p = ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p
    int_out = ctypes.POINTER(c_int)
    signatures = {
        "avb_new": (pointer, [c_int, ctypes.c_int64, pointer, ctypes.c_int64, _READ, c_int]),
        "avb_open": (c_int, [pointer, c_char_p, pointer, ctypes.POINTER(ctypes.c_double),
                             ctypes.POINTER(c_char_p), ctypes.POINTER(c_char_p)]),
        "avb_read": (c_int, [pointer, pointer, c_int, c_int, int_out, int_out, pointer, c_int, c_int, ctypes.c_float,
                             int_out]),
        "avb_close": (None, [pointer]),
        "avb_strerror": (None, [c_int, c_char_p, c_int]), "avb_quiet": (None, []), "avb_interface": (c_int, []),
    }
    for name, (result, arguments) in signatures.items():
        function = getattr(quick if name in _QUICK else lib, name, None)
        if function is None:  # a library built from another version of _avblocks.c
            _missing = f"{LIBRARY.name} lacks {name}: rebuild it (scripts/build/setup.sh)"
            return None
        function.restype, function.argtypes = result, arguments
        setattr(lib, name, function)  # lib.avb_new is the quick one
    if lib.avb_interface() != INTERFACE:
        _missing = f"{LIBRARY.name} was built from another version of _avblocks.c: rebuild it (scripts/build/setup.sh)"
        return None
    lib.avb_quiet()  # a bad input is reported once, by audiotag, not by FFmpeg's log
    _lib = lib
    return lib


def available() -> bool:
    return _load() is not None


def missing() -> Optional[str]:
    """Why the library cannot be used (None: it can)."""
    _load()
    return _missing


def strerror(code: int) -> str:
    text = ctypes.create_string_buffer(256)
    _load().avb_strerror(code, text, len(text))
    return text.value.decode("utf-8", "replace")


class Decoder:
    """One input: ``source`` a regular file (a binary file object with a descriptor), an object with
    getbuffer() (io.BytesIO, decode's in-place buffer), one with file_window() (an archive's member), a seekable
    file object (a compressed archive's member: read through a callback, at the positions FFmpeg asks for), or
    any object with read() (a pipe). FFmpeg is never given
    the file's name: it would guess the format from the extension, and a file and its bytes on stdin must agree.
    Reading starts at the source's current position; at most ``max_bad`` packets that fail to decode are skipped."""

    def __init__(self, source, max_bad: int):
        lib = _load()
        self._lib, self._kept, self._raised = lib, [], None
        self._state = np.zeros(3, np.intc)  # avb_state: written by the open and each read
        fd, offset, memory, size, read = -1, 0, None, -1, _READ()
        if hasattr(source, "getbuffer"):  # io.BytesIO, or decode's in-place buffer: read where it lies
            view = np.frombuffer(source.getbuffer(), np.uint8)[source.tell():]  # no copy, read-only bytes too
            self._kept.append(view)
            memory, size = view.ctypes.data, len(view)
        elif hasattr(source, "file_window"):  # an archive's member read in place: (descriptor, offset, size)
            fd, offset, size = source.file_window()
        elif _regular_file(source):
            fd, offset, size = source.fileno(), source.tell(), -1
        else:
            start = source.tell() if _seekable(source) else None
            if start is not None:
                size = source.seek(0, io.SEEK_END) - start
                source.seek(start)
            read = _READ(self._reader(source, start))
            self._kept.append(read)
        self._ctx = lib.avb_new(fd, offset, memory, size, read, max_bad)
        if not self._ctx:
            raise MemoryError
        info, seconds = np.zeros(7, np.intc), ctypes.c_double()
        format_name, codec_name = ctypes.c_char_p(), ctypes.c_char_p()
        try:  # one call: each may wait for the lock beside busy threads
            code = lib.avb_open(self._ctx, None, info.ctypes.data,
                                ctypes.byref(seconds), ctypes.byref(format_name), ctypes.byref(codec_name))
            self._check(0)  # what the read callback raised, if it did
            self.format_name = format_name.value.decode()
            self.stream_kinds = {kind for index, kind in enumerate(KINDS) if info[0] & (1 << index)}
            if code:
                raise Error(code, self.format_name, frozenset(self.stream_kinds))
        except BaseException:
            self.close()
            raise
        self.codec_name = codec_name.value.decode()
        self._duration = seconds.value
        self._first = int(info[1]), (int(info[2]), int(info[3]))
        self._state[:] = info[4:]

    def _reader(self, source, start: Optional[int]):
        """FFmpeg's read callback: ``size`` bytes at ``position`` (from ``start``: a seekable source; None: a
        pipe, read in order)."""
        def read(buffer, size, position):
            try:
                if start is not None and source.tell() != start + position:
                    source.seek(start + position)
                data = source.read(size)
            except BaseException as error:  # kept for the caller: raising here would lose it in C
                self._raised = error
                return _EIO
            if data:
                ctypes.memmove(buffer, data, len(data))
            return len(data or b"")
        return read

    def _check(self, code: int) -> None:
        if self._raised is not None:
            raised, self._raised = self._raised, None
            raise raised
        if code:
            raise Error(code)

    def duration(self) -> float:
        """Seconds, as the container announces them (0: it does not)."""
        return self._duration

    def bad(self) -> tuple:
        """(packets skipped, the last one's error code, the demuxer's error that ended the stream or 0), as of the
        last call."""
        return tuple(self._state)

    def first(self) -> Optional[tuple]:
        """(rate, channels) of the first frame (the stream's), None when there is none."""
        got, kind = self._first
        self._check(got if got > 1 else 0)
        return kind if got == 1 else None

    def read(self, frames: int, room: int, mono: tuple = (0, 0, 0.0)) -> Optional[tuple]:
        """The next block, (samples (frames, channels) float32, rate): at most ``frames`` frames and ``room``
        samples, all of one rate and channel count. None at the end. One call into C, without the lock.

        ``mono`` (rate, channels, limit): a block of that rate and channel count whose samples all lie within
        +-limit comes back downmixed, samples (frames,) - the mean over channels as ``stream`` takes it, so
        that the stream need not touch it with numpy (each call there hands the lock over)."""
        out = np.empty(room, np.float32)
        rate, channels, downmixed = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        got = self._lib.avb_read(self._ctx, out.ctypes.data, room, frames, ctypes.byref(rate), ctypes.byref(channels),
                                 self._state.ctypes.data, *mono, ctypes.byref(downmixed))
        self._check(-got if got < 0 else 0)
        if got == 0:
            return None
        used = got if downmixed.value else got * channels.value
        out.resize(used, refcheck=False)  # in place (realloc): a short block keeps no unused room, uncopied
        return (out if downmixed.value else out.reshape(got, channels.value)), rate.value

    def close(self) -> None:
        if self._ctx:
            self._lib.avb_close(self._ctx)
            self._ctx = None
        self._kept = []


def _seekable(source) -> bool:
    try:
        return bool(source.seekable())
    except (AttributeError, OSError, ValueError):
        return False


def _regular_file(source) -> bool:
    try:
        return stat.S_ISREG(os.fstat(source.fileno()).st_mode) and source.seekable()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return False
