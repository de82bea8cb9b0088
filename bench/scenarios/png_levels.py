"""PNG levels: encoding time and size per zlib level for typical rendered frames (chose rendering.PNG_COMPRESS_LEVEL).

    python -m bench run png_levels [--repeat 20]

One row per level with the median encode time and the size for an 8-bit 512x512 CT frame, a 16-bit one and an
8-bit 256 px thumbnail, rendered by the app's own renderer (bench.app.png_frames). No server is started.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

from .. import app
from ..harness.measure import describe_machine, machine_info
from ..harness.report import write_result


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--repeat", type=int, default=20)


def main(args: argparse.Namespace) -> int:
    info = machine_info()
    images = app.png_frames()
    print(f"\n{describe_machine(info)}\n{'level':>5} | " + " | ".join(f"{name:>24}" for name in images))
    rows = []
    for level in range(10):
        cells = []
        for name, image in images.items():
            times, size = [], 0
            for _ in range(args.repeat):
                buffer = io.BytesIO()
                start = time.perf_counter()
                image.save(buffer, "PNG", compress_level=level)
                times.append(time.perf_counter() - start)
                size = buffer.tell()
            ms = statistics.median(times) * 1000
            cells.append(f"{ms:7.2f} ms {size / 1024:8.1f} KiB")
            rows.append({"row": f"PNG level {level} {name} encode ({size / 1024:.1f} KiB)", "service": round(ms, 3), "orthanc": None,
                         "ratio": None, "unit": "ms", "better": "lower"})  # fmt: skip
        print(f"{level:>5} | " + " | ".join(f"{c:>24}" for c in cells))
    write_result(args.json, rows, info=info, config={"repeat": args.repeat})
    return 0
