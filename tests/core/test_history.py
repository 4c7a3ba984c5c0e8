"""Chat history: answers survive a restart with their evidence; a torn write loses only itself."""
from __future__ import annotations

from core.answer.types import Answer, AnswerSentence, Citation
from core.history import HISTORY_NAME, ChatHistory


def _answer(q: str = "Why did it crash?") -> Answer:
    cite = Citation(n=1, kind="text", document="a.pdf", path="/x/a.pdf", doc_id=3, text="The pilot failed.",
                    page=2, start=10, end=27, rects=((1.0, 2.0, 3.0, 4.0),), chunk_id=7, score=0.8)
    table = Citation(n=2, kind="table", document="t.csv", path="/x/t.csv", doc_id=4, text="row 1",
                     table="t_4_t", rows=(1, 2), columns=("age",))
    return Answer(question=q, text="The pilot failed [1]. Age 52 [2]. Unclear bit.", citations=(cite, table),
                  sentences=(AnswerSentence("The pilot failed [1].", 0, 21, (1,)),
                             AnswerSentence("Age 52 [2].", 22, 33, (2,)),
                             AnswerSentence("Unclear bit.", 34, 46, (), supported=False)),
                  route="passages", rewrites={"multi_query": ("a", "b")}, timings={"total": 1.5}, model="m")


def test_answers_round_trip_through_the_file(tmp_path):
    h = ChatHistory(tmp_path)
    assert h.load() == []
    a = _answer()
    h.append(a)
    h.append(_answer("second"))
    again = ChatHistory(tmp_path).load()
    assert [e.answer for e in again] == [a, _answer("second")]
    assert again[0].answer.citation(1).rects == ((1.0, 2.0, 3.0, 4.0),)
    assert again[0].answer.unsupported == ("Unclear bit.",)
    assert again[0].at


def test_a_torn_last_line_is_skipped_and_the_next_answer_kept(tmp_path):
    h = ChatHistory(tmp_path)
    h.append(_answer("one"))
    with open(tmp_path / HISTORY_NAME, "a", encoding="utf-8") as f:
        f.write('{"v": 1, "answer": {"question": "tor')
    assert [e.answer.question for e in h.load()] == ["one"]
    h.append(_answer("three"))
    assert [e.answer.question for e in h.load()] == ["one", "three"]
    h.clear()
    assert h.load() == []
