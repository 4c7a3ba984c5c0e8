"""Table questions in WikiTableQuestions format: load them, ask them through the table route, score them.

A WTQ folder holds ``questions.tsv`` (a header, then ``id``, ``utterance``, ``context``,
``targetValue`` columns; extra columns are kept as ``extra``) and the CSV files that
``context`` names, relative to the folder. ``context`` may name several files separated by
``|`` (Sift's extension, used for TAT-QA's table plus paragraphs); the question may use the
tables of all of them. ``targetValue`` is a ``|``-separated list, TSV-escaped as WTQ does
(``\\n``, ``\\p`` for ``|``, ``\\\\``).

Scoring is denotation accuracy with the logic of WTQ's official ``evaluator.py`` (Pasupat &
Liang, 2015), ported below: each value is normalised (accents, quotes, dashes, trailing
citations and parentheticals, a final period, case, white space), read as a number or a
``yyyy-mm-dd`` date where it parses, and the predicted and target lists match when they have
the same size and every target matches some prediction. Differences from the official run:
the official script also uses CoreNLP's normalised values of the targets
(``tagged/data/*.tagged``), which are not in the shared folder; of those, only the one that
follows from the text alone is applied: a number written with thousands separators
("17,204") is also read as the number (``tagged_value``; ``tagged=False`` turns it off).
``decimals`` (off by default) rounds numeric predictions before scoring, for data sets such
as TAT-QA whose gold arithmetic answers are rounded.
"""
from __future__ import annotations

import re
import time
import unicodedata
from dataclasses import dataclass, field
from math import isinf, isnan
from pathlib import Path
from typing import Callable, Mapping, Sequence

from core.errors import KnownError
from core.jobs import CancelToken, ProgressFn, check, report

__all__ = [
    "TableDatasetError", "TableQuestion", "TableItem", "TablesReport", "load_questions", "ingest_tables",
    "evaluate_tables", "normalize", "StringValue", "NumberValue", "DateValue", "to_value", "to_value_list",
    "check_denotation", "tsv_unescape", "tsv_unescape_list", "denotation_matches", "tagged_value", "rescore",
]


class TableDatasetError(KnownError):
    """A folder that is not readable WikiTableQuestions-format data."""


# --------------------------------------------------------------------------- WTQ evaluator (ported)


def normalize(x: str) -> str:
    """WTQ's string normalisation."""
    # Remove diacritics
    x = "".join(c for c in unicodedata.normalize("NFKD", x) if unicodedata.category(c) != "Mn")
    # Normalize quotes and dashes
    x = re.sub(r"[‘’´`]", "'", x)
    x = re.sub(r"[“”]", '"', x)
    x = re.sub(r"[‐‑‒–—−]", "-", x)
    while True:
        old_x = x
        # Remove citations
        x = re.sub(r"((?<!^)\[[^\]]*\]|\[\d+\]|[•♦†‡*#+])*$", "", x.strip())
        # Remove details in parenthesis
        x = re.sub(r"(?<!^)( \([^)]*\))*$", "", x.strip())
        # Remove outermost quotation mark
        x = re.sub(r'^"([^"]*)"$', r"\1", x.strip())
        if x == old_x:
            break
    # Remove final '.'
    if x and x[-1] == ".":
        x = x[:-1]
    # Collapse whitespaces and convert to lower case
    x = re.sub(r"\s+", " ", x, flags=re.U).lower().strip()
    return x


class Value:
    """A denotation value; ``match`` is WTQ's comparison."""

    _normalized: str = ""

    @property
    def normalized(self) -> str:
        return self._normalized

    def match(self, other: "Value") -> bool:
        raise NotImplementedError


class StringValue(Value):
    def __init__(self, content: str) -> None:
        self._normalized = normalize(content)
        self._hash = hash(self._normalized)

    def __eq__(self, other) -> bool:
        return isinstance(other, StringValue) and self.normalized == other.normalized

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        return "S" + str([self.normalized])

    def match(self, other: Value) -> bool:
        return self.normalized == other.normalized


class NumberValue(Value):
    def __init__(self, amount: int | float, original_string: str | None = None) -> None:
        if abs(amount - round(amount)) < 1e-6:
            self._amount: int | float = int(amount)
        else:
            self._amount = float(amount)
        self._normalized = normalize(original_string) if original_string else str(self._amount)
        self._hash = hash(self._amount)

    @property
    def amount(self) -> int | float:
        return self._amount

    def __eq__(self, other) -> bool:
        return isinstance(other, NumberValue) and self.amount == other.amount

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        return f"N({self.amount:f})" + str([self.normalized])

    def match(self, other: Value) -> bool:
        if self.normalized == other.normalized:
            return True
        if isinstance(other, NumberValue):
            return abs(self.amount - other.amount) < 1e-6
        return False

    @staticmethod
    def parse(text: str) -> int | float | None:
        """The number ``text`` spells (Python's int/float syntax), else None."""
        try:
            return int(text)
        except ValueError:
            try:
                amount = float(text)
            except ValueError:
                return None
            return None if isnan(amount) or isinf(amount) else amount


class DateValue(Value):
    def __init__(self, year: int, month: int, day: int, original_string: str | None = None) -> None:
        """Placeholders are -1."""
        assert not (year == month == day == -1)
        self._year, self._month, self._day = year, month, day
        if not original_string:
            self._normalized = "{}-{}-{}".format(year if year != -1 else "xx", month if month != -1 else "xx",
                                                 day if day != -1 else "xx")
        else:
            self._normalized = normalize(original_string)
        self._hash = hash((self._year, self._month, self._day))

    @property
    def ymd(self) -> tuple[int, int, int]:
        return (self._year, self._month, self._day)

    def __eq__(self, other) -> bool:
        return isinstance(other, DateValue) and self.ymd == other.ymd

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        return f"D({self._year},{self._month},{self._day})" + str([self._normalized])

    def match(self, other: Value) -> bool:
        if self.normalized == other.normalized:
            return True
        if isinstance(other, DateValue):
            return self.ymd == other.ymd
        return False

    @staticmethod
    def parse(text: str) -> tuple[int, int, int] | None:
        """``yyyy-mm-dd`` with ``xx`` placeholders → (year, month, day), else None."""
        try:
            ymd = text.lower().split("-")
            if len(ymd) != 3:
                return None
            year = -1 if ymd[0] in ("xx", "xxxx") else int(ymd[0])
            month = -1 if ymd[1] == "xx" else int(ymd[1])
            day = -1 if ymd[2] == "xx" else int(ymd[2])
        except ValueError:
            return None
        if year == month == day == -1:
            return None
        if not (month == -1 or 1 <= month <= 12) or not (day == -1 or 1 <= day <= 31):
            return None
        return (year, month, day)


def to_value(original_string: str | Value, corenlp_value: str | None = None) -> Value:
    """A string as a NumberValue, DateValue or StringValue, as WTQ reads it."""
    if isinstance(original_string, Value):
        return original_string
    if not corenlp_value:
        corenlp_value = original_string
    amount = NumberValue.parse(corenlp_value)
    if amount is not None:
        return NumberValue(amount, original_string)
    ymd = DateValue.parse(corenlp_value)
    if ymd is not None:
        if ymd[1] == ymd[2] == -1:
            return NumberValue(ymd[0], original_string)
        return DateValue(ymd[0], ymd[1], ymd[2], original_string)
    return StringValue(original_string)


def to_value_list(original_strings: Sequence[str], corenlp_values: Sequence[str | None] | None = None) -> list[Value]:
    """Distinct values of a list of strings (a set, as in WTQ)."""
    if corenlp_values is not None:
        assert len(original_strings) == len(corenlp_values)
        return list(set(to_value(x, y) for x, y in zip(original_strings, corenlp_values)))
    return list(set(to_value(x) for x in original_strings))


def check_denotation(target_values: Sequence[Value], predicted_values: Sequence[Value]) -> bool:
    """True when the predicted denotation is correct: same size, every target matched."""
    if len(target_values) != len(predicted_values):
        return False
    for target in target_values:
        if not any(target.match(pred) for pred in predicted_values):
            return False
    return True


def tsv_unescape(x: str) -> str:
    r"""WTQ's TSV escapes: ``\n`` newline, ``\p`` vertical bar, ``\\`` backslash."""
    return x.replace(r"\n", "\n").replace(r"\p", "|").replace("\\\\", "\\")


def tsv_unescape_list(x: str) -> list[str]:
    """A ``|``-separated TSV list, unescaped."""
    return [tsv_unescape(y) for y in x.split("|")]


def _rounded(text: str, decimals: int | None) -> str:
    if decimals is None:
        return text
    amount = NumberValue.parse(text)
    if amount is None or isinstance(amount, int):
        return text
    r = round(amount, decimals)
    return str(int(r)) if r == int(r) else f"{r:.{decimals}f}".rstrip("0")


_GROUPED_NUMBER = re.compile(r"^[-+]?\d{1,3}(,\d{3})+(\.\d+)?$")


def tagged_value(text: str) -> str | None:
    """What CoreNLP's tag gives for a target the official run reads from ``tagged/data``, where it
    can be derived from the text: "1,296,660" → "1296660"; None otherwise (the text is used)."""
    t = text.strip()
    return t.replace(",", "") if _GROUPED_NUMBER.match(t) else None


def denotation_matches(target: Sequence[str], predicted: Sequence[str], *, decimals: int | None = None,
                       tagged: bool = True) -> bool:
    """WTQ's check of a predicted list of strings against the target list. With ``tagged``, a
    target written with thousands separators is also read as the number (``tagged_value``)."""
    tv = to_value_list(list(target), [tagged_value(t) for t in target]) if tagged else to_value_list(list(target))
    return check_denotation(tv, to_value_list([_rounded(p, decimals) for p in predicted]))


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class TableQuestion:
    """One line of ``questions.tsv``."""

    id: str
    utterance: str
    contexts: tuple[str, ...]
    """Files the question is about, relative to the folder."""
    target: tuple[str, ...]
    """The gold denotation, unescaped."""
    extra: Mapping[str, str] = field(default_factory=dict)
    """Other columns of the line (e.g. TAT-QA's ``answer_from``)."""


def load_questions(folder: str | Path, *, limit: int | None = None, offset: int = 0) -> list[TableQuestion]:
    """The questions of a WTQ-format folder: ``limit`` of them (default all) after the first
    ``offset`` (in file order), so a data set can be split into tuning and held-out ranges."""
    if offset < 0 or (limit is not None and limit < 0):
        raise TableDatasetError(f"{folder}: offset and limit must not be negative (got {offset}, {limit})")
    folder = Path(folder)
    path = folder / "questions.tsv"
    if not path.is_file():
        raise TableDatasetError(f"{folder}: no questions.tsv there",
                                fix="a WikiTableQuestions folder has questions.tsv and the csv/ it names")
    out: list[TableQuestion] = []
    skipped = 0
    with open(path, encoding="utf-8", newline="") as f:
        lines = f.read().splitlines()
    if not lines:
        raise TableDatasetError(f"{path}: empty")
    head = lines[0].split("\t")
    need = ("id", "utterance", "context", "targetValue")
    if any(h not in head for h in need):
        raise TableDatasetError(f"{path}: the header must name {', '.join(need)}; it has {', '.join(head)}")
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cells = line.split("\t")
        if len(cells) < len(head):
            raise TableDatasetError(f"{path}: line {n} has {len(cells)} fields, the header {len(head)}")
        row = dict(zip(head, cells))
        if skipped < offset:
            skipped += 1
            continue
        contexts = tuple(c.strip() for c in row["context"].split("|") if c.strip())
        for c in contexts:
            if not (folder / c).is_file():
                raise TableDatasetError(f"{path}: line {n} names {c}, which is not in {folder}")
        out.append(TableQuestion(id=row["id"], utterance=tsv_unescape(row["utterance"]), contexts=contexts,
                                 target=tuple(tsv_unescape_list(row["targetValue"])),
                                 extra={k: v for k, v in row.items() if k not in need}))
        if limit is not None and len(out) >= limit:
            break
    return out


# --------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class TableItem:
    """The outcome of one question."""

    id: str
    question: str
    target: tuple[str, ...]
    predicted: tuple[str, ...]
    correct: bool
    sql: str
    error: str | None
    ms: float
    attempts: int
    table: str | None
    row_ids: tuple[int, ...]
    extra: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"id": self.id, "question": self.question, "target": list(self.target),
                "predicted": list(self.predicted), "correct": self.correct, "sql": self.sql, "error": self.error,
                "ms": round(self.ms, 1), "attempts": self.attempts, "table": self.table,
                "row_ids": list(self.row_ids), **({"extra": dict(self.extra)} if self.extra else {})}


@dataclass(frozen=True)
class TablesReport:
    """Denotation accuracy and latency over a folder's questions."""

    dataset: str
    n: int
    accuracy: float
    p50_ms: float
    p95_ms: float
    errors: int
    """Questions where no query the model wrote ran (counted as wrong)."""
    retried: int
    """Questions where the model wrote more than one query (the first failed or found nothing)."""
    by: Mapping[str, Mapping[str, dict]] = field(default_factory=dict)
    """Accuracy per value of each extra column with few values:
    ``{"answer_from": {"table": {"n": …, "accuracy": …}}}``."""
    model: str = ""
    items: tuple[TableItem, ...] = ()

    def to_json(self, *, items: bool = False) -> dict:
        d = {"dataset": self.dataset, "n": self.n, "accuracy": round(self.accuracy, 4), "p50_ms": round(self.p50_ms, 1),
             "p95_ms": round(self.p95_ms, 1), "errors": self.errors, "retried": self.retried, "model": self.model}
        if self.by:
            d["by"] = {k: dict(v) for k, v in self.by.items()}
        if items:
            d["items"] = [i.to_json() for i in self.items]
        return d


def ingest_tables(kb, folder: str | Path, questions: Sequence[TableQuestion], *, progress: ProgressFn | None = None,
                  cancel: CancelToken | None = None) -> dict[str, list]:
    """Add every file the questions name to ``kb``; returns file (as named in ``context``) → its SqlTables."""
    from core.store.sqltables import list_sql_tables

    folder = Path(folder).resolve()
    names = sorted({c for q in questions for c in q.contexts})
    rep = kb.add([folder / n for n in names], progress=progress, cancel=cancel)
    if rep.cancelled:
        from core.errors import Cancelled

        raise Cancelled("cancelled")
    outcome = {o.path: o for o in rep.files}
    st = kb.store
    out: dict[str, list] = {}
    for n in names:
        p = str((folder / n).resolve())
        o = outcome.get(p)
        doc_id = o.doc_id if o is not None else None
        if doc_id is None:  # a duplicate of a file added in the same batch
            rec = st.find_by_path(p)
            doc_id = rec.id if rec is not None and rec.state == "ready" else None
            if doc_id is None:
                from core.kb import sha256_of

                twin = next((d for d in st.find_by_sha(sha256_of(Path(p))) if d.state == "ready"), None)
                doc_id = twin.id if twin is not None else None
        out[n] = list_sql_tables(st.db, doc_id) if doc_id is not None else []
    return out


def _percentile(values: Sequence[float], p: float) -> float:
    from core.eval.metrics import percentile

    return percentile(values, p) if values else 0.0


def evaluate_tables(kb, folder: str | Path, *, limit: int | None = None, offset: int = 0,
                    decimals: int | None = None, progress: ProgressFn | None = None, cancel: CancelToken | None = None,
                    questions: Sequence[TableQuestion] | None = None,
                    on_item: Callable[[TableItem], None] | None = None) -> TablesReport:
    """Ingest the tables a WTQ-format folder's questions use, ask each question through
    ``core.answer.table_sql.ask_table`` with its own tables, and score the denotations.
    ``on_item`` receives each question's outcome as soon as it is scored."""
    from core.answer.table_sql import ask_table, denotation

    folder = Path(folder)
    qs = list(questions) if questions is not None else load_questions(folder, limit=limit, offset=offset)
    if not qs:
        raise TableDatasetError(f"{folder}: no questions")
    tables = ingest_tables(kb, folder, qs, progress=progress, cancel=cancel)
    llm = kb.llm
    items: list[TableItem] = []
    t_start = time.monotonic()
    for i, q in enumerate(qs):
        check(cancel)
        ts = [t for c in q.contexts for t in tables.get(c, [])]
        t0 = time.monotonic()
        if not ts:
            res = None
            err = f"no table could be read from {', '.join(q.contexts)}"
        else:
            res = ask_table(kb.store, llm, q.utterance, tables=ts, cancel=cancel)
            err = res.error
        ms = (time.monotonic() - t0) * 1000
        pred = tuple(denotation(res)) if res is not None else ()
        ok = bool(pred) and denotation_matches(q.target, pred, decimals=decimals)
        items.append(TableItem(id=q.id, question=q.utterance, target=q.target, predicted=pred, correct=ok,
                               sql=res.sql if res is not None else "", error=err, ms=ms,
                               attempts=len(res.attempts) if res is not None else 0,
                               table=res.table if res is not None else None,
                               row_ids=res.row_ids if res is not None else (), extra=q.extra))
        if on_item is not None:
            on_item(items[-1])
        acc = sum(it.correct for it in items) / len(items)
        report(progress, "ask", i + 1, len(qs), unit="questions", message=f"accuracy {acc:.3f}", started=t_start)
    return _report(folder.resolve().name, items, model=getattr(llm, "name", ""))


def _report(dataset: str, items: Sequence[TableItem], *, model: str) -> TablesReport:
    if not items:
        raise TableDatasetError(f"{dataset}: no questions were scored")
    by: dict[str, dict[str, dict]] = {}
    for key in sorted({k for it in items for k in it.extra}):
        groups: dict[str, list[TableItem]] = {}
        for it in items:
            groups.setdefault(it.extra.get(key, ""), []).append(it)
        if 1 < len(groups) <= 12:
            by[key] = {g: {"n": len(v), "accuracy": round(sum(x.correct for x in v) / len(v), 4)}
                       for g, v in sorted(groups.items())}
    ms = [it.ms for it in items]
    return TablesReport(dataset=dataset, n=len(items), accuracy=sum(it.correct for it in items) / len(items),
                        p50_ms=_percentile(ms, 50), p95_ms=_percentile(ms, 95),
                        errors=sum(1 for it in items if it.error), retried=sum(1 for it in items if it.attempts > 1),
                        by=by, model=model, items=tuple(items))


def rescore(items: Sequence[Mapping], *, dataset: str = "", decimals: int | None = None) -> TablesReport:
    """A report from saved per-question outcomes (``TableItem.to_json`` lines, as ``--out`` writes
    them), scored again: for a changed scorer or a run stopped part way, without asking again."""
    out = []
    for d in items:
        pred = tuple(d.get("predicted") or ())
        out.append(TableItem(id=d["id"], question=d.get("question", ""), target=tuple(d["target"]), predicted=pred,
                             correct=bool(pred) and denotation_matches(d["target"], pred, decimals=decimals),
                             sql=d.get("sql", ""), error=d.get("error"), ms=float(d.get("ms", 0.0)),
                             attempts=int(d.get("attempts", 0)), table=d.get("table"),
                             row_ids=tuple(d.get("row_ids") or ()), extra=d.get("extra") or {}))
    return _report(dataset, out, model="")
