"""Query rewriting: multi-query, step-back, HyDE and decomposition, written by the local LLM.

Each kind is one short generation, cached (in memory and in ``rewrites.json`` in the
knowledge-base folder, keyed by kind, model and question), so asking the same thing
again costs nothing. Rewrites are searched beside the original question and the lists
are fused by reciprocal rank fusion; the original question's list gets the most weight,
so a poor rewrite can add candidates but hardly push a good hit out.

A question with one clause is not decomposed (there is nothing to split), so switching
decomposition on does not slow simple questions.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from pathlib import Path
from typing import Sequence

from core.jobs import CancelToken

__all__ = ["KINDS", "RewriteCache", "rewrite", "parse_lines", "needs_decomposition"]

KINDS = ("multi_query", "step_back", "hyde", "decompose")
PROMPT_VERSION = 1
PROMPTS = {
    "multi_query": ("Rewrite the user's search question in 3 different ways that ask for the same information, "
                    "using other words. Write one question per line, no numbering, nothing else."),
    "step_back": ("Write one more general question about the background concept or topic behind the user's "
                  "question. Write only that question."),
    "hyde": ("Write a short factual passage of 2 or 3 sentences, as it might appear in a report or paper, "
             "that answers the user's question. Write only the passage."),
    "decompose": ("Split the user's question into at most 3 simpler sub-questions that can each be answered "
                  "from one passage. Write one sub-question per line, no numbering, nothing else. If the "
                  "question is already simple, write it unchanged."),
}
MAX_TOKENS = {"multi_query": 120, "step_back": 48, "hyde": 128, "decompose": 120}
_MULTI_CLAUSE = re.compile(r"\b(?:and|compare|comparison|versus|vs\.?|both|difference|differ|while|whereas)\b|[;?].+\?",
                           re.IGNORECASE)


def needs_decomposition(question: str) -> bool:
    """Whether a question has more than one part worth splitting."""
    return len(question.split()) >= 8 and bool(_MULTI_CLAUSE.search(question))


def parse_lines(text: str, *, limit: int = 3) -> list[str]:
    """Non-empty lines of a model reply with list numbering and quotes removed."""
    out = []
    for line in text.splitlines():
        line = re.sub(r"^\s*(?:[-*•]|\d+[.)]|Q\d*[:.])\s*", "", line).strip().strip('"').strip()
        if len(line) >= 4 and line not in out:
            out.append(line)
    return out[:limit]


class RewriteCache:
    """Rewrites by (kind, model, question), kept in memory and in a JSON file."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._data: dict[str, list[str]] = {}
        if path is not None and path.exists():
            try:
                self._data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                self._data = {}  # a damaged cache is only lost work

    @staticmethod
    def key(kind: str, model: str, question: str) -> str:
        raw = f"{PROMPT_VERSION}\x00{kind}\x00{model}\x00{question.strip()}"
        return hashlib.sha256(raw.encode("utf-8")).hexdigest()[:32]

    def get(self, kind: str, model: str, question: str) -> list[str] | None:
        with self._lock:
            v = self._data.get(self.key(kind, model, question))
            return list(v) if v is not None else None

    def put(self, kind: str, model: str, question: str, value: Sequence[str]) -> None:
        with self._lock:
            self._data[self.key(kind, model, question)] = list(value)
            if self.path is None:
                return
            tmp = self.path.with_suffix(".tmp")
            try:
                tmp.write_text(json.dumps(self._data), encoding="utf-8")
                os.replace(tmp, self.path)
            except OSError:
                pass  # the cache is an optimisation; a read-only folder must not fail the question


def rewrite(llm, kind: str, question: str, *, cache: RewriteCache | None = None,
            cancel: CancelToken | None = None) -> list[str]:
    """The rewrites of ``kind`` for ``question`` (empty when the model gave nothing usable)."""
    from core.models.llm import ChatMessage

    if kind not in KINDS:
        raise ValueError(f"unknown rewrite {kind!r}; expected one of {KINDS}")
    if kind == "decompose" and not needs_decomposition(question):
        return []
    model = getattr(llm, "name", "") or str(getattr(llm, "path", ""))
    if cache is not None:
        hit = cache.get(kind, model, question)
        if hit is not None:
            return hit
    reply = llm.chat([ChatMessage("system", PROMPTS[kind]), ChatMessage("user", question)],
                     max_tokens=MAX_TOKENS[kind], temperature=0.0, cancel=cancel)
    if kind == "hyde":
        text = " ".join(reply.split())
        out = [text] if len(text) >= 20 else []
    else:
        lines = parse_lines(reply, limit=1 if kind == "step_back" else 3)
        norm = question.strip().lower().rstrip("?")
        out = [x for x in lines if x.lower().rstrip("?") != norm]
        if kind == "decompose" and len(out) < 2:
            out = []  # one "sub-question" is just the question again
    if cache is not None and not (cancel is not None and cancel.cancelled):
        cache.put(kind, model, question, out)
    return out
