from __future__ import annotations

import multiprocessing
import sys

from app.gui.main import main

if __name__ == "__main__":
    multiprocessing.freeze_support()
    raise SystemExit(main(sys.argv[1:]))
