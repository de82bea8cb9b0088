"""Write a zip archive as a stream of byte chunks, without a seekable file or the whole archive in memory.

zipfile falls back to data descriptors when its output cannot seek, so each member is written
once, in order, as it is read. Members are STORED: DICOM pixel data is mostly compressed
already, and deflating multi-GB studies would cost far more CPU than it saves bandwidth.

Pure module: standard library only.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterable, Iterator
from typing import IO

from .constants import CHUNK_SIZE


class _Sink:
    """A write-only, non-seekable target collecting what zipfile writes until it is taken."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._position = 0

    def write(self, data) -> int:
        self._chunks.append(bytes(data))
        self._position += len(data)
        return len(data)

    def tell(self) -> int:
        return self._position

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass  # zipfile leaves a file object it was given open; this makes _Sink a complete writable

    def take(self) -> bytes:
        data = b"".join(self._chunks)
        self._chunks.clear()
        return data


def stream_zip(members: Iterable[tuple[str, Callable[[], IO[bytes]]]]) -> Iterator[bytes]:
    """Yield a zip of `members` ((name, opener) pairs) chunk by chunk.

    A member whose opener raises OSError is left out and listed in a final MISSING.txt, since
    an error can no longer be reported once the response has started.
    """
    sink = _Sink()
    missing: list[str] = []
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, opener in members:
            try:
                source = opener()
            except OSError:
                missing.append(name)
                continue
            with source, archive.open(name, "w", force_zip64=True) as target:
                while chunk := source.read(CHUNK_SIZE):
                    target.write(chunk)
                    yield sink.take()
            yield sink.take()
        if missing:
            archive.writestr("MISSING.txt", "These files could not be read from storage:\n" + "\n".join(missing) + "\n")
    yield sink.take()
