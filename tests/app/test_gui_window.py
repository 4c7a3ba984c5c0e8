"""The window as a desktop app: knowledge bases, settings, messages, crash reports, state, jobs."""
from __future__ import annotations

import threading

import pytest

from app.gui import kbfolders
from app.gui.chat import CHIP, answer_html, answer_with_sources
from app.gui.jobs import JobRunner
from app.gui.library import format_eta, progress_text
from app.gui.qt import QApplication, QKeySequence
from app.gui.settings import ask_options
from app.gui.window import MainWindow, gui_settings
from core import config
from core.answer.types import Answer, AnswerSentence, Citation
from core.errors import Cancelled, StoreError
from core.jobs import Progress
from tests.app.test_gui import OPEN_TIMEOUT, data_dir, open_window  # noqa: F401 - fixtures


# ---------------------------------------------------------------------------------------------- jobs


def test_a_job_runs_off_the_gui_thread_and_reports_plain_data(qtbot):
    runner = JobRunner()
    gui = threading.get_ident()
    seen = {}

    def op(job):
        seen["thread"] = threading.get_ident()
        for i in range(3):
            job.progress(Progress("count", i + 1, 3, unit="steps"))
        job.stream("a")
        job.stream("b")
        job.publish({"k": 1})
        return 42

    job = runner.run(op, label="counting")
    got = {"progress": [], "text": [], "published": []}
    job.progressed.connect(got["progress"].append)
    job.streamed.connect(got["text"].append)
    job.published.connect(got["published"].append)
    with qtbot.waitSignal(job.finished, timeout=10_000) as blocker:
        pass
    assert blocker.args == [42]
    assert seen["thread"] != gui
    assert got["progress"][-1].done == 3 and "".join(got["text"]) == "ab" and got["published"] == [{"k": 1}]


def test_cancel_ends_quietly_known_errors_and_bugs_are_told_apart(qtbot):
    runner = JobRunner()

    def waits(job):
        while True:
            job.cancel_token.raise_if_cancelled()
            job.cancel_token._event.wait(0.01)

    job = runner.run(waits, label="waiting")
    with qtbot.waitSignal(job.cancelled, timeout=10_000):
        job.cancel()

    def known(job):
        raise StoreError("the folder is read-only", fix="choose another")

    with qtbot.waitSignal(runner.job_failed, timeout=10_000) as blocker:
        runner.run(known, label="writing")
    err = blocker.args[0]
    assert err.known and "read-only" in str(err.error) and err.label == "writing"

    with qtbot.waitSignal(runner.job_failed, timeout=10_000) as blocker:
        runner.run(lambda job: {}["missing"], label="a bug")
    err = blocker.args[0]
    assert not err.known and "KeyError" in err.traceback
    assert isinstance(Cancelled("x"), Exception)


def test_progress_line_has_files_pages_rate_and_eta():
    p = Progress("add", 500, 1000, unit="bytes", message="a.pdf done; parsing b.pdf", elapsed_s=10.0,
                 detail={"files": 1, "files_total": 4, "pages": 20, "chunks": 80})
    text = progress_text(p)
    assert "1/4 files" in text and "20 pages" in text and "2.0 pages/s" in text and "ETA 0:10" in text
    assert "parsing b.pdf" in text
    assert format_eta(3725) == "1:02:05"


# ---------------------------------------------------------------------------------------------- chat rendering


def _answer() -> Answer:
    c1 = Citation(n=1, kind="text", document="a.pdf", path="/a.pdf", doc_id=1, text="The pilot failed.", page=2,
                  start=0, end=17, rects=((1, 2, 3, 4),))
    c2 = Citation(n=2, kind="table", document="t.csv", path="/t.csv", doc_id=2, text="row 1: age: 52",
                  table="t_2", rows=(1,), columns=("age",))
    text = "The pilot failed to keep control [1]. He was 52 [1, 2]. It was a Tuesday."
    return Answer(question="q", text=text, citations=(c1, c2),
                  sentences=(AnswerSentence(text[:37], 0, 37, (1,)), AnswerSentence(text[38:55], 38, 55, (1, 2)),
                             AnswerSentence(text[56:], 56, len(text), (), supported=False)),
                  route="passages", timings={"total": 2.25}, model="qwen")


def test_answer_html_has_chips_marks_unsupported_and_shows_route_and_time():
    html = answer_html(_answer(), 3)
    assert html.count('href="cite:3:1"') == 3  # two in the text, one in the sources
    assert 'href="cite:3:2"' in html
    assert "(unsupported)" in html and "It was a Tuesday." in html
    assert "route: passages" in html and "2.2 s" in html or "2.3 s" in html
    assert [m.group(1) for m in CHIP.finditer(_answer().text)] == ["1", "1, 2"]


def test_copy_gives_the_answer_with_numbered_sources():
    text = answer_with_sources(_answer())
    assert text.startswith("The pilot failed to keep control [1].")
    assert '[1] a.pdf, page 2: "The pilot failed."' in text
    assert "[2] t.csv, table t_2" in text


def test_ask_options_come_from_the_settings(data_dir):
    s = config.Settings().with_(extra={"ask": {"multi_query": True, "k": 7, "bogus": 1,
                                               "search_options": {"stages": ["bm25"], "fusion": "rrf"}}})
    o = ask_options(s)
    assert o.multi_query and o.k == 7 and o.search_options == {"stages": ("bm25",), "fusion": "rrf"}
    assert ask_options(config.Settings()).k == 5


# ---------------------------------------------------------------------------------------------- window


def test_knowledge_bases_are_created_switched_renamed_and_deleted(qtbot, data_dir):
    w = open_window(qtbot, None)
    assert w.kb_name == kbfolders.DEMO_NAME  # no knowledge base yet: the demo one is made
    with qtbot.waitSignal(w.kb_opened, timeout=OPEN_TIMEOUT):
        w.create_kb("Papers")
    assert w.kb.folder == data_dir / "kbs" / "Papers" and w.kb_name == "Papers"
    assert [w.library.kb_combo.itemText(i) for i in range(w.library.kb_combo.count())] == ["Demo", "Papers"]
    w.create_kb("Papers")
    assert any("already exists" in t for t in w.messages.texts())
    w.create_kb("a/b")
    assert any("cannot be the name" in t for t in w.messages.texts())
    with qtbot.waitSignal(w.kb_opened, timeout=OPEN_TIMEOUT):
        w.rename_kb("Reports")
    assert w.kb.folder == data_dir / "kbs" / "Reports" and not (data_dir / "kbs" / "Papers").exists()
    with qtbot.waitSignal(w.kb_opened, timeout=OPEN_TIMEOUT):
        w.switch_kb("Demo")
    assert w.kb_name == "Demo"
    w.delete_kb("Reports")
    assert kbfolders.list_kbs() == ["Demo"] and w.kb_name == "Demo"


def test_first_run_opens_the_demo_with_the_suggested_question(qtbot, data_dir):
    w = MainWindow(first_run=True)
    qtbot.addWidget(w)
    with qtbot.waitSignal(w.kb_opened, timeout=OPEN_TIMEOUT):
        pass
    assert w.kb_name == kbfolders.DEMO_NAME
    assert w.library.busy, "the demo documents should be being added"
    assert w.chat.input.text() == kbfolders.SAMPLE_QUESTION
    assert kbfolders.SAMPLE_QUESTION in w.chat.view.toHtml() or "Tallahassee" in w.chat.view.toPlainText()
    with qtbot.waitSignal(w.library.job_ended, timeout=120_000):
        w.library.cancel()
    assert gui_settings().value("first_run_done", False, type=bool)
    assert w.kb.counts().consistent


def test_window_state_is_remembered(qtbot, data_dir):
    w = open_window(qtbot, data_dir / "kbs" / "One")
    w.resize(w.width(), 531)  # the offscreen screen is narrower than the window's minimum width
    w.splitter.setSizes([500, 300, 700])
    state = w.splitter.saveState()
    w.close()
    assert gui_settings().value("splitter") == state
    w2 = open_window(qtbot, None)
    assert w2.height() == 531
    assert w2.state.value("splitter") == state
    assert w2.kb_name == "One"


def test_shortcuts_focus_the_question_and_the_find_box(qtbot, data_dir):
    w = open_window(qtbot, data_dir / "kbs" / "Keys")
    w.activateWindow()
    keys = {a.shortcut().toString(): a for a in w.findChildren(type(w.add_action))}
    assert QKeySequence(QKeySequence.StandardKey.Open).toString() == "Ctrl+O" and "Ctrl+O" in keys
    assert "Ctrl+L" in keys and "Ctrl+F" in keys
    keys["Ctrl+L"].trigger()
    assert w.focusWidget() is w.chat.input
    keys["Ctrl+F"].trigger()
    assert w.focusWidget() is w.evidence.find_edit


def test_known_errors_go_to_the_message_area_and_bugs_to_the_crash_dialog(qtbot, data_dir):
    w = open_window(qtbot, data_dir / "kbs" / "Errors")

    def known(job):
        raise StoreError("the disk is full", fix="free some space")

    with qtbot.waitSignal(w.messages.shown, timeout=10_000) as blocker:
        w.runner.run(known, label="writing")
    assert blocker.args[0] == "error" and "the disk is full — free some space" in blocker.args[1]
    assert not w.crash_dialogs and w.messages.isVisible()

    with qtbot.waitSignal(w.crashed, timeout=10_000) as blocker:
        w.runner.run(lambda job: 1 / 0, label="dividing")
    report = blocker.args[0]
    assert "ZeroDivisionError" in report and "while dividing" in report and "PySide6" in report
    dlg = w.crash_dialogs[-1]
    dlg.copy()
    assert QApplication.clipboard().text() == report
    dlg.close()


def test_settings_dialog_saves_switches_device_and_tier(qtbot, data_dir):
    w = open_window(qtbot, data_dir / "kbs" / "Set")
    dlg = w.open_settings()
    assert dlg.models.rowCount() >= 3
    names = [dlg.models.item(r, 0).text() for r in range(dlg.models.rowCount())]
    assert "minilm-l6" in names
    states = {dlg.models.item(r, 0).text(): dlg.models.item(r, 5).text() for r in range(dlg.models.rowCount())}
    assert states["minilm-l6"] == "in use"
    dlg.switches["multi_query"].setChecked(True)
    dlg.k.setValue(8)
    dlg.tier.setCurrentText("quality")
    with qtbot.waitSignal(w.messages.shown, timeout=10_000):
        dlg._save()
    s = config.Settings.load()
    assert s.llm_tier == "quality" and s.extra["ask"]["multi_query"] is True and s.extra["ask"]["k"] == 8
    assert w._ask_options().multi_query and w._ask_options().k == 8


def test_about_names_versions_and_models(qtbot, data_dir):
    w = open_window(qtbot, data_dir / "kbs" / "About")
    text = w.about_text()
    assert "PySide6" in text and "Qt " in text and "minilm-l6" in text and "pymupdf" in text


def test_history_file_lives_in_the_kb_folder_and_is_shown_after_restart(qtbot, data_dir):
    from core.history import ChatHistory

    folder = data_dir / "kbs" / "Hist"
    w = open_window(qtbot, folder)
    ChatHistory(folder).append(_answer())
    w.close()
    w2 = open_window(qtbot, folder)
    assert len(w2.chat.turns) == 1 and w2.chat.turns[0].answer == _answer()
    assert "It was a Tuesday." in w2.chat.view.toPlainText()
    w2.chat.clear_history()
    assert ChatHistory(folder).load() == []


def test_sift_gui_opens_the_window_on_a_knowledge_base(tmp_path):
    """`sift gui` as a user starts it (offscreen), with --check to exit once the knowledge base is open."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    sift = Path(sys.executable).with_name("sift")
    env = {**os.environ, "SIFT_DATA_DIR": str(tmp_path / "data"), "QT_QPA_PLATFORM": "offscreen"}
    r = subprocess.run([str(sift), "--kb", str(tmp_path / "kb"), "gui", "--check"], capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"opened {tmp_path / 'kb'}" in r.stdout
