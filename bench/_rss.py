"""Run a command and write its peak resident set size (KiB) to a file.

python bench/_rss.py OUTFILE CMD...
"""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path


def main() -> int:
    out = Path(sys.argv[1])
    proc = subprocess.run(sys.argv[2:], check=False)
    out.write_text(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
