"""The main window: library | chat | evidence, with menus, shortcuts, drag and drop and messages."""
from __future__ import annotations

import os
import sys
import platform
from pathlib import Path

from app.gui import kbfolders
from app.gui.chat import ChatPanel
from app.gui.evidence import EvidencePanel
from app.gui.evidence_data import EvidenceItem, from_citation, from_hit
from app.gui.jobs import JobRunner
from app.gui.library import LibraryPanel
from app.gui.messages import CrashDialog, MessageArea, crash_report
from app.gui.qt import (PYSIDE_VERSION, QAction, QApplication, QColor, QFileDialog, QGuiApplication, QInputDialog,
                        QKeySequence, QMainWindow, QMessageBox, QPalette, QSettings, QShortcut, QSplitter,
                        QVBoxLayout, QWidget, Qt, Signal, qVersion)
from core import __version__, config

# Imported here, on the GUI thread at start-up: a first import inside a worker compiles and runs
# module code while holding the GIL, which would freeze the window for a few hundred ms mid-job.
import core.ingest.chunking  # noqa: E402,F401
import core.ingest.worker  # noqa: E402,F401
import core.kb  # noqa: E402,F401
import core.search.hybrid  # noqa: E402,F401
import core.store.sqltables  # noqa: E402,F401
import core.store.store  # noqa: E402,F401

__all__ = ["MainWindow", "apply_palette", "is_dark", "gui_settings"]


def gui_settings() -> QSettings:
    """Window state and first-run flag, kept in the data folder beside the knowledge bases."""
    return QSettings(str(config.data_dir() / "gui.ini"), QSettings.Format.IniFormat)


def is_dark() -> bool:
    hints = QGuiApplication.styleHints()
    scheme = getattr(hints, "colorScheme", None)
    if scheme is not None:
        return scheme() == Qt.ColorScheme.Dark
    return QGuiApplication.palette().color(QPalette.ColorRole.Window).lightness() < 128


def apply_palette(app: QApplication) -> bool:
    """Fusion with a light or dark palette, as the system prefers; returns True for dark."""
    app.setStyle("Fusion")
    dark = is_dark()
    if not dark:
        app.setPalette(app.style().standardPalette())
        return False
    p = QPalette()
    base, window, text = QColor(30, 30, 32), QColor(45, 45, 48), QColor(228, 228, 228)
    for role, color in ((QPalette.ColorRole.Window, window), (QPalette.ColorRole.WindowText, text),
                        (QPalette.ColorRole.Base, base), (QPalette.ColorRole.AlternateBase, window),
                        (QPalette.ColorRole.ToolTipBase, window), (QPalette.ColorRole.ToolTipText, text),
                        (QPalette.ColorRole.Text, text), (QPalette.ColorRole.Button, window),
                        (QPalette.ColorRole.ButtonText, text), (QPalette.ColorRole.Link, QColor(120, 170, 255)),
                        (QPalette.ColorRole.Highlight, QColor(60, 110, 200)),
                        (QPalette.ColorRole.HighlightedText, QColor(255, 255, 255))):
        p.setColor(role, color)
    app.setPalette(p)
    return True


class MainWindow(QMainWindow):
    """Sift's window. Opens a knowledge base (the demo on first run) and wires the panels."""

    kb_opened = Signal(object)
    """The ``KnowledgeBase`` now shown (its store is open)."""
    crashed = Signal(str)
    """A crash report was shown."""

    def __init__(self, *, kb_folder: str | os.PathLike | None = None, first_run: bool | None = None) -> None:
        super().__init__()
        # The ingest and answer threads run Python between their C calls; at the default 5 ms
        # switch interval every Qt call the GUI thread makes can wait up to 5 ms for the GIL,
        # which added up to stalls of 100+ ms while a document was being stored. 1 ms keeps the
        # event loop under its 100 ms budget at a small cost in throughput.
        sys.setswitchinterval(0.001)
        self.setWindowTitle("Sift")
        self.setAcceptDrops(True)
        self.state = gui_settings()
        self.runner = JobRunner(self)
        self.runner.job_failed.connect(self.show_job_error)
        self.kb = None
        self.kb_name = ""
        self._opening = None
        self.crash_dialogs: list[CrashDialog] = []

        self.messages = MessageArea(self)
        self.library = LibraryPanel(self.runner, self)
        self.chat = ChatPanel(self.runner, self)
        self.evidence = EvidencePanel(self.runner, self)
        self.chat.options_fn = self._ask_options
        self.splitter = QSplitter(Qt.Orientation.Horizontal, self)
        for w in (self.library, self.chat, self.evidence):
            self.splitter.addWidget(w)
        self.splitter.setStretchFactor(0, 2)
        self.splitter.setStretchFactor(1, 3)
        self.splitter.setStretchFactor(2, 4)
        self.splitter.setSizes([400, 520, 680])
        central = QWidget(self)
        lay = QVBoxLayout(central)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(0)
        lay.addWidget(self.messages)
        lay.addWidget(self.splitter, 1)
        self.setCentralWidget(central)
        self.statusBar().showMessage("Ready")

        self.library.message.connect(self._library_message)
        self.library.kb_selected.connect(self.switch_kb)
        self.library.kb_new.connect(self._new_kb_dialog)
        self.library.kb_rename.connect(self._rename_kb_dialog)
        self.library.kb_delete.connect(self._delete_kb_dialog)
        self.library.add_files_clicked.connect(self.add_files_dialog)
        self.library.add_folder_clicked.connect(self.add_folder_dialog)
        self.library.document_activated.connect(self._show_document)
        self.library.job_started.connect(lambda t: self.statusBar().showMessage(t))
        self.library.job_ended.connect(lambda: self.statusBar().showMessage("Ready", 3000))
        self.chat.citation_clicked.connect(self.show_citation)
        self.chat.ask_failed.connect(self.show_job_error)
        self.evidence.failed.connect(self.show_job_error)

        self._build_menus()
        self._restore()
        self.apply_color_scheme()
        hints = QGuiApplication.styleHints()
        if hasattr(hints, "colorSchemeChanged"):
            hints.colorSchemeChanged.connect(lambda *_: self.apply_color_scheme(restyle=True))

        if first_run is None:
            first_run = not self.state.value("first_run_done", False, type=bool)
        self.first_run = first_run
        if kb_folder is not None:
            self.open_kb(Path(kb_folder).expanduser())
        else:
            names = kbfolders.list_kbs()
            if first_run or not names:
                if kbfolders.DEMO_NAME not in names:
                    kbfolders.create_kb(kbfolders.DEMO_NAME)
                name = kbfolders.DEMO_NAME
            else:
                last = str(self.state.value("kb", "") or "")
                name = last if last in names else names[0]
            self.open_kb(kbfolders.kb_path(name))
        if first_run:
            self.state.setValue("first_run_done", True)

    # ------------------------------------------------------------------ menus and shortcuts

    def _action(self, menu, text: str, slot, shortcut=None) -> QAction:
        a = QAction(text, self)
        if shortcut is not None:
            a.setShortcut(QKeySequence(shortcut))
        a.triggered.connect(slot)
        menu.addAction(a)
        return a

    def _build_menus(self) -> None:
        mb = self.menuBar()
        f = mb.addMenu("&File")
        self.add_action = self._action(f, "&Add files…", self.add_files_dialog, QKeySequence.StandardKey.Open)
        self._action(f, "Add &folder…", self.add_folder_dialog, "Ctrl+Shift+O")
        f.addSeparator()
        self._action(f, "&New knowledge base…", self._new_kb_dialog, "Ctrl+Shift+N")
        self._action(f, "&Rename knowledge base…", self._rename_kb_dialog)
        self._action(f, "&Delete knowledge base…", self._delete_kb_dialog)
        f.addSeparator()
        self._action(f, "&Settings…", self.open_settings, QKeySequence.StandardKey.Preferences)
        f.addSeparator()
        self._action(f, "&Quit", self.close, QKeySequence.StandardKey.Quit)
        e = mb.addMenu("&Edit")
        self._action(e, "Focus the &question", self.chat.focus_input, "Ctrl+L")
        self._action(e, "&Find in evidence", self.evidence.focus_find, QKeySequence.StandardKey.Find)
        self._action(e, "&Copy answer with sources", lambda: self.chat.copy_turn(len(self.chat.turns) - 1),
                     "Ctrl+Shift+C")
        v = mb.addMenu("&View")
        self._action(v, "&Previous citation", self.evidence.previous, "Alt+Left")
        self._action(v, "&Next citation", self.evidence.next, "Alt+Right")
        self._action(v, "Zoom &in", lambda: self.evidence.step_zoom(1), QKeySequence.StandardKey.ZoomIn)
        self._action(v, "Zoom &out", lambda: self.evidence.step_zoom(-1), QKeySequence.StandardKey.ZoomOut)
        self._action(v, "&Fit page to width", self.evidence.fit_width, "Ctrl+0")
        QShortcut(QKeySequence("Ctrl+="), self, lambda: self.evidence.step_zoom(1))
        h = mb.addMenu("&Help")
        self._action(h, "&About Sift", self.about, QKeySequence.StandardKey.HelpContents)

    # ------------------------------------------------------------------ state

    def _restore(self) -> None:
        geo = self.state.value("geometry")
        if geo is not None:
            self.restoreGeometry(geo)
        else:
            self.resize(1500, 920)
        st = self.state.value("window_state")
        if st is not None:
            self.restoreState(st)
        sp = self.state.value("splitter")
        if sp is not None:
            self.splitter.restoreState(sp)

    def save_state(self) -> None:
        self.state.setValue("geometry", self.saveGeometry())
        self.state.setValue("window_state", self.saveState())
        self.state.setValue("splitter", self.splitter.saveState())
        if self.kb_name:
            self.state.setValue("kb", self.kb_name)
        self.state.sync()

    def apply_color_scheme(self, restyle: bool = False) -> None:
        app = QApplication.instance()
        dark = apply_palette(app) if restyle else is_dark()
        self.chat.dark = dark
        self.chat.render()

    def closeEvent(self, event) -> None:
        self.save_state()
        self.runner.cancel_all()
        self.runner.wait(60_000)
        if self.kb is not None:
            self.kb.close()
            self.kb = None
        super().closeEvent(event)

    # ------------------------------------------------------------------ knowledge bases

    @property
    def busy(self) -> bool:
        return self.library.busy or self.chat.job is not None or self._opening is not None

    def open_kb(self, folder: Path) -> None:
        """Close the current knowledge base and open ``folder`` (its models load in the background)."""
        from core.kb import KnowledgeBase

        folder = Path(folder)
        if self.kb is not None:
            self.kb.close()
        self.kb = None
        self.library.set_kb(None)
        self.chat.set_kb(None)
        self.evidence.set_kb(None)
        kb = KnowledgeBase(folder)
        if self.chat.llm is not None:
            kb.set_llm(self.chat.llm)
        self.kb_name = folder.name
        self.setWindowTitle(f"Sift — {folder.name}")
        self.library.set_kb_names(self._kb_names(), folder.name)
        self.statusBar().showMessage(f"Opening {folder.name}…")

        def op(job):
            _ = kb.store  # loads the embedding model and opens (or repairs) the indexes
            return kb.list()

        self._opening = self.runner.run(op, label=f"opening {folder}", on_done=lambda docs: self._opened(kb, docs),
                                        on_error=lambda e: self._open_failed(kb, e))

    def _kb_names(self) -> list[str]:
        names = kbfolders.list_kbs()
        if self.kb_name and self.kb_name not in names:
            names.append(self.kb_name)
        return names

    def _opened(self, kb, docs) -> None:
        self._opening = None
        self.kb = kb
        demo = kb.folder.name == kbfolders.DEMO_NAME
        self.library.set_kb(kb, docs)
        self.chat.set_kb(kb, suggestion=kbfolders.SAMPLE_QUESTION if demo else "")
        self.evidence.set_kb(kb)
        self.statusBar().showMessage(f"{kb.folder.name}: {len(docs)} document(s)", 5000)
        if demo and not docs and self.first_run and kbfolders.DEMO_SOURCE.is_dir():
            self.library.add_paths([str(kbfolders.DEMO_SOURCE)])
        if demo and not self.chat.turns and self.first_run:
            self.chat.input.setText(kbfolders.SAMPLE_QUESTION)
        self.kb_opened.emit(kb)

    def _open_failed(self, kb, err) -> None:
        self._opening = None
        kb.close()
        self.show_job_error(err)
        self.statusBar().showMessage(f"Could not open {kb.folder.name}")

    def _refuse_if_busy(self) -> bool:
        if self.busy:
            self.messages.show_message("Wait for the running job to finish (or cancel it) first", "warning",
                                       timeout_ms=8000)
            return True
        return False

    def switch_kb(self, name: str) -> None:
        if name == self.kb_name and self.kb is not None:
            return
        if self._refuse_if_busy():
            self.library.set_kb_names(self._kb_names(), self.kb_name)
            return
        self.open_kb(kbfolders.kb_path(name))

    def create_kb(self, name: str) -> None:
        from core.errors import KnownError

        if self._refuse_if_busy():
            return
        try:
            folder = kbfolders.create_kb(name)
        except KnownError as e:
            self.messages.show_error(e)
            return
        self.open_kb(folder)

    def rename_kb(self, new: str) -> None:
        from core.errors import KnownError

        if self._refuse_if_busy() or self.kb is None:
            return
        old = self.kb.folder
        if old.parent != kbfolders.kbs_root():
            self.messages.show_message(f"{old} is not one of Sift's knowledge bases; rename the folder yourself",
                                       "warning")
            return
        self.kb.close()
        try:
            folder = kbfolders.rename_kb(old.name, new)
        except KnownError as e:
            self.messages.show_error(e)
            folder = old
        self.open_kb(folder)

    def delete_kb(self, name: str) -> None:
        from core.errors import KnownError

        if self._refuse_if_busy():
            return
        if self.kb is not None and self.kb.folder == kbfolders.kb_path(name):
            self.kb.close()
            self.kb = None
            self.library.set_kb(None)
            self.chat.set_kb(None)
            self.evidence.set_kb(None)
            self.kb_name = ""
        try:
            kbfolders.delete_kb(name)
        except KnownError as e:
            self.messages.show_error(e)
        names = kbfolders.list_kbs()
        if self.kb is None:
            if not names:
                kbfolders.create_kb(kbfolders.DEMO_NAME)
                names = [kbfolders.DEMO_NAME]
            self.open_kb(kbfolders.kb_path(names[0]))
        else:
            self.library.set_kb_names(self._kb_names(), self.kb_name)
        self.messages.show_message(f"Deleted the knowledge base {name!r} (your files were not touched)", "info",
                                   timeout_ms=8000)

    def _new_kb_dialog(self) -> None:
        name, ok = QInputDialog.getText(self, "New knowledge base", "Name:")
        if ok and name.strip():
            self.create_kb(name)

    def _rename_kb_dialog(self) -> None:
        if self.kb is None:
            return
        name, ok = QInputDialog.getText(self, "Rename knowledge base", "New name:", text=self.kb_name)
        if ok and name.strip() and name.strip() != self.kb_name:
            self.rename_kb(name)

    def _delete_kb_dialog(self) -> None:
        if not self.kb_name:
            return
        answer = QMessageBox.question(self, "Delete knowledge base",
                                      f"Delete the knowledge base {self.kb_name!r} with its indexes and chat "
                                      "history? Your document files are not touched.")
        if answer == QMessageBox.StandardButton.Yes:
            self.delete_kb(self.kb_name)

    # ------------------------------------------------------------------ adding

    def add_paths(self, paths) -> None:
        if self.kb is None:
            self.messages.show_message("The knowledge base is still opening; try again in a moment", "warning",
                                       timeout_ms=6000)
            return
        self.library.add_paths([str(p) for p in paths])

    def add_files_dialog(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(self, "Add documents", "",
                                                "Documents (*.pdf *.csv *.tsv *.xlsx *.xlsm);;All files (*)")
        if paths:
            self.add_paths(paths)

    def add_folder_dialog(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Add a folder")
        if path:
            self.add_paths([path])

    @staticmethod
    def _local_paths(mime) -> list[str]:
        if mime is None or not mime.hasUrls():
            return []
        return [u.toLocalFile() for u in mime.urls() if u.isLocalFile()]

    def dragEnterEvent(self, event) -> None:
        if self._local_paths(event.mimeData()):
            event.acceptProposedAction()
        else:
            event.ignore()

    def dragMoveEvent(self, event) -> None:
        if self._local_paths(event.mimeData()):
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        paths = self._local_paths(event.mimeData())
        if paths:
            event.acceptProposedAction()
            self.add_paths(paths)

    # ------------------------------------------------------------------ evidence

    def show_citation(self, turn, n: int) -> None:
        if turn.answer is not None:
            items = [from_citation(c, turn.answer.question) for c in turn.answer.citations]
        else:
            items = [from_hit(h, turn.question) for h in turn.hits]
        index = next((i for i, it in enumerate(items) if it.n == n), None)
        if index is None:
            self.messages.show_message(f"The answer has no source [{n}]", "warning", timeout_ms=6000)
            return
        self.evidence.show_items(items, index)

    def _show_document(self, row) -> None:
        if row.doc_id is None or row.state == "failed":
            if row.reason:
                self.messages.show_message(f"{row.name}: {row.reason}", "warning")
            return
        if row.path.lower().endswith(".pdf") and row.pages:
            self.evidence.show_items([EvidenceItem(n=1, kind="text", document=row.name, path=row.path,
                                                   doc_id=row.doc_id, text="", page=1)])

    # ------------------------------------------------------------------ errors

    def _library_message(self, level: str, text: str) -> None:
        self.messages.show_message(text, level, timeout_ms=0 if level == "warning" else 10000)

    def show_job_error(self, err) -> None:
        if err.known:
            self.messages.show_error(err.error)
        else:
            self.show_crash(err.error, err.traceback, context=err.label)

    def show_crash(self, error, tb: str, context: str = "") -> None:
        report = crash_report(error, tb, context=context)
        dlg = CrashDialog(report, self)
        self.crash_dialogs.append(dlg)
        dlg.open()
        self.crashed.emit(report)

    # ------------------------------------------------------------------ settings and about

    def _ask_options(self):
        from app.gui.settings import ask_options

        return ask_options(config.Settings.load())

    def open_settings(self):
        from app.gui.settings import SettingsDialog

        native = QSettings("Sift", "Sift")
        dlg = SettingsDialog(config.Settings.load(), str(native.value("data_dir", "") or config.data_dir()), self)
        dlg.saved.connect(self.apply_settings)
        dlg.import_requested.connect(lambda kind, path: self.import_model(kind, path, dlg))
        dlg.open()
        return dlg

    def apply_settings(self, new: config.Settings, data_folder: str = "") -> None:
        old = config.Settings.load()
        new.save()
        if (old.device, old.llm_tier, old.llm_model) != (new.device, new.llm_tier, new.llm_model):
            self.chat.llm = None
            if self.kb is not None:
                self.kb.set_llm(None)
        if data_folder and Path(data_folder).expanduser() != config.data_dir():
            QSettings("Sift", "Sift").setValue("data_dir", data_folder)
            self.messages.show_message(f"The data folder becomes {data_folder} when Sift is restarted", "info",
                                       timeout_ms=10000)
        if (old.device, old.embedding_model) != (new.device, new.embedding_model) and self.kb is not None:
            if self._refuse_if_busy():
                return
            self.open_kb(self.kb.folder)
        self.messages.show_message("Settings saved", "info", timeout_ms=4000)

    def import_model(self, kind: str, path: str, dialog=None) -> None:
        def op(job):
            settings = config.Settings.load()
            if kind == "gguf":
                from core.models.llm import LocalLLM, check_gguf

                check_gguf(Path(path))
                llm = LocalLLM(Path(path), n_ctx=512, device=settings.device)
                return settings.with_(llm_model=str(Path(path).resolve())), f"chat model {llm.name!r} on {llm.device}"
            from core.models.embedder import Embedder
            from core.models.export import export_onnx

            folder = export_onnx(Path(path), progress=job.progress, cancel=job.cancel_token)
            emb = Embedder(folder, device=settings.device)
            return (settings.with_(embedding_model=str(Path(path).resolve())),
                    f"embedding model with {emb.dim} dimensions; re-index or re-add documents of existing "
                    "knowledge bases")

        def done(result):
            new, what = result
            self.apply_settings(new)
            if dialog is not None:
                dialog.refresh_models(new)
            self.messages.show_message(f"Imported {Path(path).name}: {what}", "info", timeout_ms=12000)

        self.statusBar().showMessage(f"Importing {path}…")
        self.runner.run(op, label=f"importing {path}", on_done=done)

    def about_text(self) -> str:
        from app.gui.settings import model_rows

        versions = [f"Sift {__version__}", f"Python {platform.python_version()}", f"Qt {qVersion()}",
                    f"PySide6 {PYSIDE_VERSION}"]
        from importlib.metadata import PackageNotFoundError, version

        for dist in ("pymupdf", "onnxruntime", "onnxruntime-gpu", "llama-cpp-python", "hnswlib", "tokenizers"):
            try:
                versions.append(f"{dist} {version(dist)}")
            except PackageNotFoundError:
                pass
        try:
            models = [f"{r[0]} ({r[1]}, {r[3]}, {r[4]}): {r[5]}" for r in model_rows(config.Settings.load())]
        except Exception as e:  # noqa: BLE001 - the About box must open even when a model is broken
            models = [f"models could not be listed: {e}"]
        return ("<h3>Sift</h3><p>A local-first knowledge base: answers cited to the exact sentence or cell. "
                "Nothing leaves this machine.</p>"
                f"<p>{'<br>'.join(versions)}</p><p><b>Models</b><br>{'<br>'.join(models)}</p>"
                f"<p>Data folder: {config.data_dir()}</p>")

    def about(self) -> None:
        QMessageBox.about(self, "About Sift", self.about_text())
