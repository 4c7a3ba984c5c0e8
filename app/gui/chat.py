"""The chat panel: ask, watch the answer stream in, click ``[n]`` chips to see the evidence."""
from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from urllib.parse import quote, unquote

from app.gui.qt import (QGuiApplication, QHBoxLayout, QLabel, QLineEdit, QPushButton, QTextBrowser, QUrl,
                        QVBoxLayout, QWidget, Signal, QTextCursor)
from core.history import ChatHistory
from core.jobs import Progress

__all__ = ["ChatPanel", "Turn", "answer_html", "answer_with_sources", "CHIP"]

CHIP = re.compile(r"\[(\d+(?:\s*[,;]\s*\d+)*)\]")


@dataclass
class Turn:
    """One question in the transcript and what came back."""

    question: str
    answer: object | None = None
    """A ``core.answer.types.Answer`` once finished."""
    streamed: str = ""
    status: str = ""
    error: str = ""
    hits: list = field(default_factory=list)
    """Search hits (when answers are not available)."""
    running: bool = False
    at: str = ""


def _colors(dark: bool) -> dict:
    if dark:
        return {"chip_bg": "#2c4a7a", "chip_fg": "#e6efff", "bad_bg": "#5a2626", "bad_fg": "#ffd9d9",
                "meta": "#a0a0a0", "q": "#9cc3ff", "src": "#c8c8c8"}
    return {"chip_bg": "#dbe7ff", "chip_fg": "#163a80", "bad_bg": "#fde3e1", "bad_fg": "#8a1c1c",
            "meta": "#6b6b6b", "q": "#1d4f91", "src": "#444444"}


def _chips(text: str, turn: int, c: dict, scheme: str = "cite") -> str:
    """Escaped ``text`` with every ``[n]`` / ``[n, m]`` turned into clickable chips."""
    out, pos = [], 0
    for m in CHIP.finditer(text):
        out.append(html.escape(text[pos:m.start()]))
        for n in re.split(r"\s*[,;]\s*", m.group(1)):
            out.append(f'<a href="{scheme}:{turn}:{n}" style="text-decoration:none;">'
                       f'<span style="background-color:{c["chip_bg"]}; color:{c["chip_fg"]}; font-weight:600;">'
                       f'&nbsp;{n}&nbsp;</span></a>&#8202;')
        pos = m.end()
    out.append(html.escape(text[pos:]))
    return "".join(out)


def answer_html(ans, turn: int, *, dark: bool = False) -> str:
    """The answer's text with citation chips and unsupported sentences marked, then how it was made."""
    c = _colors(dark)
    text = ans.text
    parts, pos = [], 0
    for s in sorted(ans.sentences, key=lambda s: s.start):
        if s.start < pos or s.end > len(text):
            continue
        parts.append(_chips(text[pos:s.start], turn, c))
        body = _chips(text[s.start:s.end], turn, c)
        if s.supported:
            parts.append(body)
        else:
            parts.append(f'<span style="background-color:{c["bad_bg"]}; color:{c["bad_fg"]};" '
                         f'title="No passage in your documents supports this sentence">{body}</span>'
                         f'<span style="color:{c["bad_fg"]}; font-size:small; font-style:italic;"> '
                         f'(unsupported)</span>')
        pos = s.end
    parts.append(_chips(text[pos:], turn, c))
    body = "".join(parts).replace("\n", "<br>")
    total = ans.timings.get("total") if ans.timings else None
    meta = [f"route: {ans.route}"]
    if total is not None:
        meta.append(f"{total:.1f} s")
    if ans.model:
        meta.append(html.escape(ans.model))
    if ans.declined:
        meta.append("not found in your documents")
    if ans.cancelled:
        meta.append("stopped")
    if ans.unsupported:
        meta.append(f"{len(ans.unsupported)} unsupported sentence{'s' if len(ans.unsupported) > 1 else ''}")
    meta_html = " · ".join(meta) + f' · <a href="copy:{turn}">copy with sources</a>'
    extra = ""
    if ans.sql:
        extra += f'<div style="color:{c["meta"]}; font-family:monospace; font-size:small;">' \
                 f'{html.escape(ans.sql)}</div>'
    rewrites = [f"{k}: {'; '.join(v)}" for k, v in (ans.rewrites or {}).items() if v]
    if rewrites:
        extra += f'<div style="color:{c["meta"]}; font-size:small;">rewrites — ' \
                 f'{html.escape(" | ".join(rewrites))}</div>'
    sources = []
    for cit in ans.citations:
        where = f"p. {cit.page}" if cit.page else (f"table {cit.table}" if cit.table else "")
        snippet = cit.text if len(cit.text) <= 160 else cit.text[:157] + "…"
        sources.append(f'<div style="color:{c["src"]}; font-size:small;">'
                       f'{_chips(f"[{cit.n}]", turn, c)} {html.escape(cit.document)}, {where} — '
                       f'<i>{html.escape(snippet)}</i></div>')
    return (f"<div>{body}</div>{extra}{''.join(sources)}"
            f'<div style="color:{c["meta"]}; font-size:small;">{meta_html}</div>')


def answer_with_sources(ans) -> str:
    """Plain text for the clipboard: the answer, then each numbered source."""
    lines = [ans.text.strip(), ""]
    if ans.citations:
        lines.append("Sources:")
    for cit in ans.citations:
        where = f", page {cit.page}" if cit.page else (f", table {cit.table}" if cit.table else "")
        lines.append(f"[{cit.n}] {cit.document}{where}: \"{cit.text.strip()}\"")
    return "\n".join(lines).strip() + "\n"


class ChatPanel(QWidget):
    """Questions and answers of one knowledge base; history is kept in its folder."""

    citation_clicked = Signal(object, int)
    """(Turn, citation number or hit rank)."""
    answered = Signal(object)
    """The finished ``Answer``."""
    searched = Signal(object)
    """A finished search-only ``Turn``."""
    ask_failed = Signal(object)
    """A ``JobError``."""

    def __init__(self, runner, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.runner = runner
        self.kb = None
        self.turns: list[Turn] = []
        self.job = None
        self.llm = None
        """The chat model, loaded once and shared by every knowledge base."""
        self.options_fn = lambda: None
        """Returns the ``AskOptions`` to use (the window reads them from the settings)."""
        self.suggestion = ""
        self.dark = False

        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        self.view = QTextBrowser(self)
        self.view.setOpenLinks(False)
        self.view.setAcceptDrops(False)
        self.view.anchorClicked.connect(self._link)
        lay.addWidget(self.view, 1)
        self.status = QLabel(self)
        lay.addWidget(self.status)
        row = QHBoxLayout()
        self.input = QLineEdit(self)
        self.input.setPlaceholderText("Ask a question about your documents (Ctrl+L)")
        self.input.setAcceptDrops(False)
        self.input.returnPressed.connect(self.ask_current)
        self.ask_btn = QPushButton("Ask", self)
        self.ask_btn.clicked.connect(self.ask_current)
        self.stop_btn = QPushButton("Stop", self)
        self.stop_btn.clicked.connect(self.stop)
        self.copy_btn = QPushButton("Copy", self)
        self.copy_btn.setToolTip("Copy the last answer with its sources")
        self.copy_btn.clicked.connect(lambda: self.copy_turn(len(self.turns) - 1))
        self.clear_btn = QPushButton("Clear", self)
        self.clear_btn.setToolTip("Forget this knowledge base's chat history")
        self.clear_btn.clicked.connect(self.clear_history)
        for w in (self.input,):
            row.addWidget(w, 1)
        for w in (self.ask_btn, self.stop_btn, self.copy_btn, self.clear_btn):
            row.addWidget(w)
        lay.addLayout(row)
        self._update_controls()

    # ------------------------------------------------------------------ knowledge base

    def set_kb(self, kb, *, suggestion: str = "") -> None:
        self.kb = kb
        self.suggestion = suggestion
        self.turns = []
        if kb is not None:
            for e in ChatHistory(kb.folder).load():
                self.turns.append(Turn(e.answer.question, answer=e.answer, at=e.at))
        self.render()
        self._update_controls()

    def clear_history(self) -> None:
        if self.kb is None or self.job is not None:
            return
        ChatHistory(self.kb.folder).clear()
        self.turns = []
        self.render()
        self._update_controls()

    # ------------------------------------------------------------------ asking

    def ask_current(self) -> None:
        q = self.input.text().strip()
        if q:
            self.ask(q)

    @staticmethod
    def can_answer(kb) -> bool:
        return hasattr(type(kb), "ask")

    def ask(self, question: str) -> None:
        kb = self.kb
        if kb is None or self.job is not None:
            return
        self.input.clear()
        turn = Turn(question, running=True, status="searching…")
        self.turns.append(turn)
        idx = len(self.turns) - 1
        if self.can_answer(kb):
            if self.llm is not None:
                kb.set_llm(self.llm)
            options = self.options_fn()

            def op(job):
                def on_status(s: str) -> None:
                    job.progress(Progress("ask", 0, message=s))
                ans = kb.ask(question, options=options, on_token=job.stream, on_status=on_status,
                             cancel=job.cancel_token)
                if ans.text.strip():
                    ChatHistory(kb.folder).append(ans)
                return ans, kb.llm

            self.job = self.runner.run(op, label="answering", on_done=lambda r: self._answered(idx, r),
                                       on_error=lambda e: self._failed(idx, e),
                                       on_cancel=lambda: self._cancelled(idx),
                                       on_progress=lambda p: self._status(idx, p.message))
            self.job.streamed.connect(lambda piece: self._piece(idx, piece))
        else:
            def op(job):
                return kb.search(question, k=8)

            self.job = self.runner.run(op, label="searching", on_done=lambda hits: self._hits(idx, hits),
                                       on_error=lambda e: self._failed(idx, e), on_cancel=lambda: self._cancelled(idx))
        self.job.done.connect(self._job_done)
        self.render()
        self._update_controls()

    def stop(self) -> None:
        if self.job is not None:
            self.job.cancel()
            self.stop_btn.setEnabled(False)

    def _job_done(self) -> None:
        self.job = None
        self._update_controls()

    def _status(self, idx: int, text: str) -> None:
        if text and idx < len(self.turns):
            self.turns[idx].status = text
            self.status.setText(text)
            self.render()

    def _piece(self, idx: int, piece: str) -> None:
        if idx < len(self.turns):
            self.turns[idx].streamed += piece
            self.render()

    def _answered(self, idx: int, result) -> None:
        ans, llm = result
        self.llm = llm
        t = self.turns[idx]
        t.answer, t.running, t.status = ans, False, ""
        self._job_done()  # controls are ready before anyone hears of the answer
        self.status.setText("")
        self.render()
        self.answered.emit(ans)

    def _hits(self, idx: int, hits) -> None:
        t = self.turns[idx]
        t.hits, t.running, t.status = list(hits), False, ""
        self._job_done()
        self.status.setText("")
        self.render()
        self.searched.emit(t)

    def _failed(self, idx: int, err) -> None:
        t = self.turns[idx]
        t.running, t.status = False, ""
        t.error = str(err.error.args[0] if err.known and err.error.args else err.error)
        self.status.setText("")
        self.render()
        self.ask_failed.emit(err)

    def _cancelled(self, idx: int) -> None:
        t = self.turns[idx]
        t.running, t.status, t.error = False, "", "stopped"
        self.status.setText("")
        self.render()

    # ------------------------------------------------------------------ transcript

    def render(self) -> None:
        c = _colors(self.dark)
        out = []
        if not self.turns:
            out.append('<p style="font-size:large;">Ask a question about the documents in this knowledge base.</p>'
                       f'<p style="color:{c["meta"]};">Answers cite their sources as chips like '
                       f'<span style="background-color:{c["chip_bg"]}; color:{c["chip_fg"]};">&nbsp;1&nbsp;</span>'
                       ': click one to see the passage highlighted on its page.</p>')
            if self.suggestion:
                out.append(f'<p>Try: <a href="ask:{quote(self.suggestion)}">{html.escape(self.suggestion)}</a></p>')
        for i, t in enumerate(self.turns):
            out.append(f'<p style="margin-top:14px; color:{c["q"]}; font-weight:600;">'
                       f'{html.escape(t.question)}</p>')
            if t.answer is not None:
                out.append(answer_html(t.answer, i, dark=self.dark))
            elif t.hits:
                out.append(f'<div style="color:{c["meta"]}; font-size:small;">Answers are not available in this '
                           'build; the best passages:</div>')
                for h in t.hits:
                    where = f"p. {h.page}" if h.page else (h.table or "")
                    snippet = h.text if len(h.text) <= 220 else h.text[:217] + "…"
                    out.append(f'<div>{_chips(f"[{h.rank}]", i, c, "hit")} <b>{html.escape(h.name)}</b> {where} — '
                               f'{html.escape(snippet)}</div>')
            elif t.running:
                body = html.escape(t.streamed).replace("\n", "<br>")
                out.append(f"<div>{body}▍</div>")
                if t.status:
                    out.append(f'<div style="color:{c["meta"]}; font-style:italic;">{html.escape(t.status)}</div>')
            if t.error:
                out.append(f'<div style="color:{c["bad_fg"]};">{html.escape(t.error)}</div>')
        sb = self.view.verticalScrollBar()
        at_end = sb.value() >= sb.maximum() - 4
        self.view.setHtml("".join(out))
        if at_end or (self.turns and self.turns[-1].running):
            self.view.moveCursor(QTextCursor.MoveOperation.End)
            sb.setValue(sb.maximum())

    def _link(self, url: QUrl) -> None:
        s = url.toString()
        scheme, _, rest = s.partition(":")
        if scheme == "ask":
            self.ask(unquote(rest))
        elif scheme in ("cite", "hit"):
            turn, _, n = rest.partition(":")
            if turn.isdigit() and n.isdigit() and int(turn) < len(self.turns):
                self.citation_clicked.emit(self.turns[int(turn)], int(n))
        elif scheme == "copy" and rest.isdigit():
            self.copy_turn(int(rest))

    def copy_turn(self, idx: int) -> str:
        if not 0 <= idx < len(self.turns) or self.turns[idx].answer is None:
            return ""
        text = answer_with_sources(self.turns[idx].answer)
        QGuiApplication.clipboard().setText(text)
        self.status.setText("Answer and sources copied")
        return text

    def focus_input(self) -> None:
        self.input.setFocus()
        self.input.selectAll()

    def _update_controls(self) -> None:
        running = self.job is not None
        self.ask_btn.setEnabled(self.kb is not None and not running)
        self.stop_btn.setEnabled(running)
        self.stop_btn.setVisible(running)
        self.ask_btn.setVisible(not running)
        self.copy_btn.setEnabled(any(t.answer is not None for t in self.turns))
        self.clear_btn.setEnabled(bool(self.turns) and not running)
