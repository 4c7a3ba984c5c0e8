"""The settings dialog: models, device, search switches, data folder."""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from app.gui.qt import (QAbstractItemView, QCheckBox, QComboBox, QDialog, QDialogButtonBox, QFileDialog,
                        QFormLayout, QHBoxLayout, QHeaderView, QLabel, QLineEdit, QPushButton, QSpinBox,
                        QTableWidget, QTableWidgetItem, QTabWidget, QVBoxLayout, QWidget, Signal)
from core import config

__all__ = ["SettingsDialog", "ask_options", "ASK_SWITCHES", "model_rows"]

ASK_SWITCHES = (("multi_query", "Multi-query rewriting", "ask several rephrasings and fuse the results"),
                ("step_back", "Step-back question", "also search a more general version of the question"),
                ("hyde", "HyDE", "search with a hypothetical answer written by the model"),
                ("decompose", "Decompose", "split a compound question into parts"))


def ask_options(settings: config.Settings):
    """``AskOptions`` from the ``ask`` section of ``Settings.extra`` (unknown keys ignored)."""
    from core.answer.types import AskOptions

    raw = dict(settings.extra.get("ask", {}))
    names = {f.name for f in fields(AskOptions)}
    search = raw.pop("search_options", {}) or {}
    kw = {k: v for k, v in raw.items() if k in names and k not in ("filters", "search_options")}
    if search.get("stages"):
        search["stages"] = tuple(search["stages"])
    return AskOptions(**kw, search_options=search)


def _size(n: int | None) -> str:
    if not n:
        return "-"
    for u in ("B", "KB", "MB", "GB"):
        if n < 1024 or u == "GB":
            return f"{n:.0f} {u}" if u == "B" else f"{n:.1f} {u}"
        n /= 1024
    return str(n)


def model_rows(settings: config.Settings) -> list[tuple[str, ...]]:
    """(id, role, title, size, device, state) for every built-in model and the user's own."""
    from core.models import registry

    rows = []
    for spec in registry.BUILTIN:
        st = registry.status(spec, device=settings.device)
        in_use = (spec.role == "embedding" and settings.embedding_model == spec.id) or \
                 (spec.role == "llm" and not settings.llm_model and spec.tier == settings.llm_tier)
        if st.ready:
            state = "in use" if in_use else "ready"
        else:
            state = "not prepared" if st.problem and "not prepared" in st.problem else "not installed"
            state += f" — {st.fix}" if st.fix else ""
        rows.append((spec.id, spec.role, spec.title, _size(st.size), st.device, state))
    if settings.llm_model:
        p = Path(settings.llm_model)
        rows.append((p.name, "llm", "your GGUF file", _size(p.stat().st_size) if p.exists() else "-",
                     settings.device, "in use" if p.exists() else "file missing"))
    if Path(settings.embedding_model).expanduser().is_dir():
        rows.append((Path(settings.embedding_model).name, "embedding", "your Hugging Face folder", "-",
                     settings.device, "in use"))
    return rows


class SettingsDialog(QDialog):
    """Edits ``core.config.Settings``; ``saved`` carries the new settings and the chosen data folder."""

    saved = Signal(object, str)
    import_requested = Signal(str, str)
    """(``hf`` or ``gguf``, path): the window runs the import as a job."""

    def __init__(self, settings: config.Settings, data_folder: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Sift settings")
        self.resize(900, 480)
        self.settings = settings
        lay = QVBoxLayout(self)
        tabs = QTabWidget(self)
        lay.addWidget(tabs, 1)

        # models
        mw = QWidget(self)
        ml = QVBoxLayout(mw)
        self.models = QTableWidget(0, 6, mw)
        self.models.setHorizontalHeaderLabels(["Model", "Role", "Name", "Size", "Device", "State"])
        self.models.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.models.verticalHeader().setVisible(False)
        self.models.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.models.horizontalHeader().setStretchLastSection(True)
        ml.addWidget(self.models, 1)
        form = QFormLayout()
        self.tier = QComboBox(mw)
        self.tier.addItems(list(config.LLM_TIERS))
        self.tier.setCurrentText(settings.llm_tier)
        self.tier.setToolTip("default: the 0.5B chat model (fast); quality: the 1.5B model "
                             "(install with ./scripts/run --with-quality)")
        form.addRow("Answer model tier", self.tier)
        self.device = QComboBox(mw)
        self.device.addItems(list(config.DEVICES))
        self.device.setCurrentText(settings.device)
        form.addRow("Device", self.device)
        ml.addLayout(form)
        imp = QHBoxLayout()
        hf = QPushButton("Import Hugging Face folder…", mw)
        hf.clicked.connect(self._import_hf)
        gguf = QPushButton("Import GGUF file…", mw)
        gguf.clicked.connect(self._import_gguf)
        self.use_builtin = QPushButton("Use the built-in models", mw)
        self.use_builtin.setToolTip("Forget an imported GGUF file or Hugging Face folder")
        self.use_builtin.clicked.connect(self._builtin)
        for b in (hf, gguf, self.use_builtin):
            imp.addWidget(b)
        imp.addStretch(1)
        ml.addLayout(imp)
        tabs.addTab(mw, "Models")

        # search
        sw = QWidget(self)
        sl = QFormLayout(sw)
        ask = dict(settings.extra.get("ask", {}))
        search = dict(ask.get("search_options", {}) or {})
        self.switches = {}
        for key, label, tip in ASK_SWITCHES:
            box = QCheckBox(label, sw)
            box.setToolTip(tip)
            box.setChecked(bool(ask.get(key, False)))
            self.switches[key] = box
            sl.addRow(box)
        stages = tuple(search.get("stages") or ("bm25", "dense"))
        self.bm25 = QCheckBox("Keyword search (BM25)", sw)
        self.bm25.setChecked("bm25" in stages)
        self.dense = QCheckBox("Meaning search (dense vectors)", sw)
        self.dense.setChecked("dense" in stages)
        sl.addRow(self.bm25)
        sl.addRow(self.dense)
        self.fusion = QComboBox(sw)
        self.fusion.addItems(["minmax", "rrf"])
        self.fusion.setCurrentText(str(search.get("fusion", "minmax")))
        sl.addRow("Fusion", self.fusion)
        self.k = QSpinBox(sw)
        self.k.setRange(1, 20)
        self.k.setValue(int(ask.get("k", 5)))
        sl.addRow("Passages given to the model", self.k)
        tabs.addTab(sw, "Search")

        # data
        dw = QWidget(self)
        dl = QFormLayout(dw)
        row = QHBoxLayout()
        self.data_folder = QLineEdit(data_folder, dw)
        browse = QPushButton("Browse…", dw)
        browse.clicked.connect(self._browse)
        row.addWidget(self.data_folder, 1)
        row.addWidget(browse)
        dl.addRow("Data folder", row)
        note = QLabel("Knowledge bases, chat history and settings live here. A change takes effect when Sift "
                      "is restarted; nothing is moved.", dw)
        note.setWordWrap(True)
        dl.addRow(note)
        tabs.addTab(dw, "Data")

        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Save | QDialogButtonBox.StandardButton.Cancel,
                                   self)
        buttons.accepted.connect(self._save)
        buttons.rejected.connect(self.reject)
        lay.addWidget(buttons)
        self.refresh_models()

    def refresh_models(self, settings: config.Settings | None = None) -> None:
        if settings is not None:
            self.settings = settings
        rows = model_rows(self.settings)
        self.models.setRowCount(len(rows))
        for r, vals in enumerate(rows):
            for c, v in enumerate(vals):
                it = QTableWidgetItem(v)
                it.setToolTip(v)
                self.models.setItem(r, c, it)
        self.use_builtin.setEnabled(bool(self.settings.llm_model) or
                                    Path(self.settings.embedding_model).expanduser().is_dir())

    def _import_hf(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Hugging Face model folder")
        if path:
            self.import_requested.emit("hf", path)

    def _import_gguf(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "GGUF chat model", "", "GGUF models (*.gguf);;All files (*)")
        if path:
            self.import_requested.emit("gguf", path)

    def _builtin(self) -> None:
        self.settings = self.settings.with_(llm_model=None, embedding_model="minilm-l6")
        self.refresh_models()

    def _browse(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Data folder", self.data_folder.text())
        if path:
            self.data_folder.setText(path)

    def values(self) -> config.Settings:
        ask = dict(self.settings.extra.get("ask", {}))
        for key, box in self.switches.items():
            ask[key] = box.isChecked()
        ask["k"] = self.k.value()
        stages = [s for s, box in (("bm25", self.bm25), ("dense", self.dense)) if box.isChecked()] or ["bm25", "dense"]
        ask["search_options"] = {"stages": stages, "fusion": self.fusion.currentText()}
        return self.settings.with_(llm_tier=self.tier.currentText(), device=self.device.currentText(),
                                   extra={**self.settings.extra, "ask": ask})

    def _save(self) -> None:
        self.saved.emit(self.values(), self.data_folder.text().strip())
        self.accept()
