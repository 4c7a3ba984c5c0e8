"""Start the window: ``sift gui`` and ``python -m app.gui``."""
from __future__ import annotations

import os
import sys

__all__ = ["main"]


def main(argv: list[str] | None = None, *, kb: str | None = None, check: bool = False) -> int:
    """Run the window until it is closed. ``check``: exit once the knowledge base is open (0), or
    with 1 on a crash, an error or after two minutes (the smoke test of an install)."""
    from app.gui.qt import QApplication, QSettings, QTimer

    pointer = QSettings("Sift", "Sift").value("data_dir", "")
    if pointer and not os.environ.get("SIFT_DATA_DIR"):
        os.environ["SIFT_DATA_DIR"] = str(pointer)  # chosen in Settings; takes effect at start
    app = QApplication.instance() or QApplication([sys.argv[0]] + list(argv or []))
    app.setApplicationName("Sift")
    app.setOrganizationName("Sift")
    app.setApplicationDisplayName("Sift")

    from app.gui.messages import install_excepthook
    from app.gui.window import MainWindow, apply_palette

    apply_palette(app)
    window = MainWindow(kb_folder=kb)
    install_excepthook(window.show_crash)
    window.show()
    if check:
        def opened(kb) -> None:
            print(f"sift gui: opened {kb.folder} ({len(kb.list())} documents)", flush=True)
            window.close()
            app.exit(0)

        def failed(text: str) -> None:
            print(f"sift gui: {text}", file=sys.stderr, flush=True)
            app.exit(1)

        window.kb_opened.connect(opened)
        window.crashed.connect(lambda report: failed("crashed:\n" + report))
        window.messages.shown.connect(lambda level, text: level == "error" and failed(text))
        QTimer.singleShot(120_000, lambda: failed("the knowledge base did not open within two minutes"))
    return int(app.exec())
