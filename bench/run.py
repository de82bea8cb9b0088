"""`python bench/run.py [scenario ...] [options]` is `python -m bench run ...`: the name the issues use for it."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.__main__ import main  # after the repository root is on the path

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
