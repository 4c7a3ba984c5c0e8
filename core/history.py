"""Chat history of one knowledge base: every finished answer, kept in the knowledge base's folder.

One JSON object per line in ``<kb>/chat-history.jsonl``, appended and fsynced per answer, so a
crash can lose at most the answer being written; a torn last line is skipped when reading. The
lines hold whole ``Answer`` values (citations with their rectangles), so a restored answer can
still be clicked through to its evidence.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path

from core.answer.types import Answer, AnswerSentence, Citation

__all__ = ["HISTORY_NAME", "HistoryEntry", "ChatHistory", "answer_to_dict", "answer_from_dict"]

HISTORY_NAME = "chat-history.jsonl"
FORMAT = 1


@dataclass(frozen=True)
class HistoryEntry:
    """One question and its answer."""

    answer: Answer
    at: str
    """When it was answered (ISO 8601, UTC)."""


def answer_to_dict(a: Answer) -> dict:
    """A JSON-ready dict of every field of ``a`` (``answer_from_dict`` reverses it)."""
    d = asdict(a)
    d["rewrites"] = {k: list(v) for k, v in a.rewrites.items()}
    d["timings"] = dict(a.timings)
    return d


def _known(cls, raw: dict) -> dict:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in raw.items() if k in names}


def _citation(raw: dict) -> Citation:
    c = _known(Citation, raw)
    c["rects"] = tuple(tuple(float(x) for x in r) for r in c.get("rects", ()))
    c["rows"] = tuple(int(r) for r in c.get("rows", ()))
    c["columns"] = tuple(c.get("columns", ()))
    return Citation(**c)


def answer_from_dict(raw: dict) -> Answer:
    a = _known(Answer, raw)
    a["citations"] = tuple(_citation(c) for c in raw.get("citations", ()))
    a["sentences"] = tuple(AnswerSentence(**{**_known(AnswerSentence, s), "citations": tuple(s.get("citations", ()))})
                           for s in raw.get("sentences", ()))
    a["rewrites"] = {k: tuple(v) for k, v in raw.get("rewrites", {}).items()}
    a["timings"] = {k: float(v) for k, v in raw.get("timings", {}).items()}
    return Answer(**a)


class ChatHistory:
    """The answers asked in one knowledge base folder, oldest first."""

    def __init__(self, kb_folder: str | os.PathLike) -> None:
        self.path = Path(kb_folder) / HISTORY_NAME

    def load(self) -> list[HistoryEntry]:
        """Every readable entry; lines that cannot be read (a torn last write) are skipped."""
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        out: list[HistoryEntry] = []
        for line in lines:
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
                out.append(HistoryEntry(answer_from_dict(raw["answer"]), str(raw.get("at", ""))))
            except (ValueError, KeyError, TypeError):
                continue
        return out

    def append(self, answer: Answer) -> HistoryEntry:
        entry = HistoryEntry(answer, datetime.now(timezone.utc).isoformat(timespec="seconds"))
        line = json.dumps({"v": FORMAT, "at": entry.at, "answer": answer_to_dict(answer)}, ensure_ascii=False)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            if f.tell() > 0:  # a torn last line must not swallow this one
                with open(self.path, "rb") as r:
                    r.seek(-1, os.SEEK_END)
                    if r.read(1) != b"\n":
                        f.write("\n")
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        return entry

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
