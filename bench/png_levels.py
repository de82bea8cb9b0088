"""Measure PNG encoding time and size per zlib level for typical rendered frames.

    .venv/bin/python bench/png_levels.py [--repeat 20]

Chooses rendering.PNG_COMPRESS_LEVEL: prints one row per level with median encode time and
size for an 8-bit 512x512 CT frame, a 16-bit one, and an 8-bit 256 px thumbnail.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.data import get_testdata_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from studies.dicom import rendering  # noqa: E402


def frames() -> dict[str, Image.Image]:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    big = np.kron(ds.pixel_array, np.ones((4, 4), dtype=ds.pixel_array.dtype))  # 512x512 CT
    ds.WindowCenter, ds.WindowWidth = 40, 400
    opts8, opts16 = rendering.RenderOptions(), rendering.RenderOptions(bits=16)
    ct8 = rendering.to_display(big, ds, opts8)
    return {
        "CT 512 8-bit": ct8,
        "CT 512 16-bit": rendering.to_display(big, ds, opts16),
        "thumb 256 8-bit": rendering.resize(ct8, rendering.RenderOptions(size=256)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    images = frames()
    print(f"{'level':>5} | " + " | ".join(f"{name:>24}" for name in images))
    for level in range(10):
        cells = []
        for image in images.values():
            times, size = [], 0
            for _ in range(args.repeat):
                buffer = io.BytesIO()
                start = time.perf_counter()
                image.save(buffer, "PNG", compress_level=level)
                times.append(time.perf_counter() - start)
                size = buffer.tell()
            cells.append(f"{statistics.median(times) * 1000:7.2f} ms {size / 1024:8.1f} KiB")
        print(f"{level:>5} | " + " | ".join(f"{c:>24}" for c in cells))


if __name__ == "__main__":
    main()
