"""Questions over tables: the chat model writes one SELECT, Sift checks it, runs it read-only, cites rows.

The path of a table question:

1. ``table_context`` shows the model each table's ``CREATE TABLE`` (columns with their types,
   the original header beside a column whose name differs, the values of a TEXT column that
   holds few) and a few rows: the first ones and the rows that share the most words with the
   question, so the model sees the spelling of the values it has to compare against. The
   system prompt holds the rules and worked examples over a made-up table.
2. The model writes one query; ``extract_sql`` takes it out of the reply (a fenced block, or
   the text from the first SELECT/WITH).
3. ``validate_sql``: one statement, starting with SELECT or WITH; ``check_names``: a quoted
   name that is no column (which SQLite would read as a string) is an error, or a string where
   a value goes. Then SQLite's authorizer, on a connection opened ``mode=ro``, allows nothing
   but reading the tables the question may use and calling functions: no writes, PRAGMA,
   ATTACH, or reads of Sift's own tables.
4. It runs with a time limit (a progress handler aborts it) and a row limit. A failure is
   shown to the model, with the error (and the real column names for an unknown column), for
   another try. A result with nothing in it is first retried with text compared case-blind,
   then as a substring (``relaxed_queries``), then shown to the model once. At most three
   queries are written.
5. The result is mapped back to source rows: the query is run again with ``row_num`` (or, for
   COUNT/SUM/AVG/GROUP BY, ``group_concat(row_num)``) appended to its select list, and that
   provenance is kept only when the rest of the result is unchanged. Otherwise result values
   are looked up in the columns the query read. Cells that are plain copies of a table cell
   are shown as written in the source (``__raw``), e.g. "15 August 1987" rather than the
   ISO date SQLite holds.
"""
from __future__ import annotations

import json
import re
import sqlite3
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence
from urllib.parse import quote

from core.errors import Cancelled, KnownError
from core.jobs import CancelToken
from core.store.db import DB_NAME
from core.store.sqltables import CATALOGUE, RAW_COLUMN, RECTS_COLUMN, ROW_ID, SqlTable, list_sql_tables

__all__ = [
    "TableSqlError", "NoTables", "TableResult", "TableContext", "table_context", "ask_table", "extract_sql",
    "validate_sql", "run_select", "format_answer", "denotation", "format_value", "DEFAULT_TIME_LIMIT_MS",
    "DEFAULT_MAX_ROWS", "table_citation", "check_names", "relaxed_queries",
]

DEFAULT_TIME_LIMIT_MS = 2000
DEFAULT_MAX_ROWS = 200
MAX_CITED_ROWS = 200
"""Row ids kept per result (a COUNT over a large table would otherwise cite all of it)."""
_RID = "__sift_rid"
_SCAN_ROWS = 20_000
"""Rows read per table when choosing sample rows by word overlap."""
_CELL_CHARS = 60
"""Sample cells longer than this are cut in the prompt."""
_HINT_VALUES = 6
"""A TEXT column with at most this many distinct values lists them in the schema."""

_STOP = frozenset("""a an the of in on at to for from by with and or is are was were be been what which who whom
whose when where how many much does did do has have had that this these those it its as than then there their
they he she his her list name give tell me number total all any each one ones""".split())
_AGGREGATES = frozenset({"count", "sum", "avg", "total", "group_concat", "min", "max"})


class TableSqlError(KnownError):
    """The model's query cannot be used: not a single SELECT, a table Sift does not know, a failure, a timeout."""


class NoTables(KnownError):
    """There are no tables to ask about."""


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class TableResult:
    """The outcome of one table question."""

    question: str
    sql: str
    """The last query the model wrote (the one that ran, when it succeeded)."""
    columns: tuple[str, ...] = ()
    """Result column names, as SQLite names them."""
    rows: tuple[tuple, ...] = ()
    """Result rows. A cell that copies a table cell is shown as written in the source."""
    values: tuple[tuple, ...] = ()
    """Result rows exactly as SQLite returned them (numbers as numbers, dates as ISO text)."""
    table: str | None = None
    """The cited SQLite table (the one the query read; the first of several)."""
    doc_id: int | None = None
    """Document of ``table``."""
    row_ids: tuple[int, ...] = ()
    """``row_num`` of the cited source rows (at most ``MAX_CITED_ROWS``)."""
    row_map: tuple[tuple[int, ...], ...] = ()
    """Per result row, the source rows it came from (empty where unknown)."""
    cited_columns: tuple[str, ...] = ()
    """SQL names of the cited columns of ``table``: those the query read (empty: whole rows)."""
    tables_read: tuple[str, ...] = ()
    truncated: bool = False
    """True when the result had more than the row limit and was cut."""
    error: str | None = None
    """Why no answer came out (None when the query ran)."""
    attempts: tuple[str, ...] = ()
    """Every query the model wrote, in order (more than one after a failure or an empty result)."""
    provenance: str = ""
    """How rows were mapped back: ``rowid``, ``argmax``, ``group``, ``lookup`` or ``none``."""
    timings: Mapping[str, float] = field(default_factory=dict)
    """Seconds: ``context``, ``generate``, ``execute``, ``total``."""

    @property
    def ok(self) -> bool:
        return self.error is None

    def raise_for_error(self) -> "TableResult":
        if self.error is not None:
            raise TableSqlError(self.error)
        return self


@dataclass(frozen=True)
class TableContext:
    """What the model is shown about the tables."""

    text: str
    tables: tuple[SqlTable, ...]
    """Tables shown, in the order shown."""
    sample_rows: Mapping[str, tuple[int, ...]]
    """Row ids shown per table."""
    n_tokens: int


# --------------------------------------------------------------------------- connections


def _db_path(store) -> Path:
    if isinstance(store, (str, Path)):
        p = Path(store)
        return p / DB_NAME if p.is_dir() else p
    return Path(store.folder) / DB_NAME


def _connect_ro(store) -> sqlite3.Connection:
    path = _db_path(store)
    if not path.is_file():
        raise NoTables(f"{path}: no knowledge-base database there")
    conn = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True, check_same_thread=False)
    conn.execute("PRAGMA query_only = 1")
    conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 10_000_000)  # no giant strings from randomblob/printf
    return conn


def _catalogued(conn: sqlite3.Connection, doc_id: int | None = None) -> list[SqlTable]:
    import sqlite_utils

    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", [CATALOGUE]).fetchone() is None:
        return []
    return list_sql_tables(sqlite_utils.Database(conn), doc_id)


def _resolve_tables(conn: sqlite3.Connection, tables) -> list[SqlTable]:
    known = _catalogued(conn)
    if tables is None:
        return known
    by_name = {t.name.casefold(): t for t in known}
    out = []
    for t in tables:
        name = t.name if isinstance(t, SqlTable) else str(t)
        if name.casefold() not in by_name:
            raise NoTables(f"no table {name!r} in this knowledge base")
        out.append(by_name[name.casefold()])
    return out


# --------------------------------------------------------------------------- prompt context


def _words(text: str) -> set[str]:
    text = unicodedata.normalize("NFKC", text).casefold()
    return {w for w in re.findall(r"\w+", text) if w not in _STOP and (len(w) > 1 or w.isdigit())}


def _sql_literal(v) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, (int, float)):
        return format_value(v)
    s = str(v)
    if len(s) > _CELL_CHARS:
        s = s[:_CELL_CHARS] + "…"
    return "'" + s.replace("'", "''") + "'"


def _same_name(header: str, column: str) -> bool:
    return re.sub(r"[^a-z0-9]", "", header.casefold()) == re.sub(r"[^a-z0-9]", "", column.casefold())


def _value_hints(conn: sqlite3.Connection, t: SqlTable) -> dict[str, list[str]]:
    """TEXT columns with few distinct values (at most ``_HINT_VALUES``, repeated across rows):
    column → its values, so the model copies their spelling instead of the question's."""
    out: dict[str, list[str]] = {}
    n = len(t.row_ids)
    if n < 4:
        return out
    for c, typ in zip(t.columns, t.types):
        if typ != "TEXT":
            continue
        vals = [v for (v,) in conn.execute(
            f'SELECT "{c}" FROM "{t.name}" WHERE "{c}" IS NOT NULL GROUP BY "{c}" ORDER BY COUNT(*) DESC, '
            f'MIN({ROW_ID}) LIMIT ?', [_HINT_VALUES + 1])]
        if 1 < len(vals) <= _HINT_VALUES and len(vals) * 2 <= n and all(len(str(v)) <= 30 for v in vals):
            out[c] = [str(v) for v in vals]
    return out


def _schema(t: SqlTable, hints: Mapping[str, Sequence[str]] | None = None) -> str:
    hints = hints or {}
    parts = [(f"{ROW_ID} INTEGER PRIMARY KEY", f"row position 1..{len(t.row_ids)}")]
    for c, typ, h in zip(t.columns, t.types, t.header):
        notes = [] if _same_name(h, c) else [f'"{h}"']
        if c in hints:
            notes.append("values: " + ", ".join(_sql_literal(v) for v in hints[c]))
        parts.append((f"{c} {typ}", "; ".join(notes)))
    lines = [f"  {d}{',' if i < len(parts) - 1 else ''}{f' -- {note}' if note else ''}"
             for i, (d, note) in enumerate(parts)]
    title = (f" -- {t.title}" + (f", page {t.page}" if t.page else "")) if t.title else ""
    return f"CREATE TABLE {t.name} ({title}\n" + "\n".join(lines) + "\n);"


def _choose_rows(conn: sqlite3.Connection, t: SqlTable, question: str, *, first: int, matched: int) -> list[int]:
    q = _words(question)
    scored: list[tuple[float, int]] = []
    for rid, raw in conn.execute(f'SELECT {ROW_ID}, "{RAW_COLUMN}" FROM "{t.name}" ORDER BY {ROW_ID} LIMIT ?',
                                 [_SCAN_ROWS]):
        if not q:
            break
        cells = json.loads(raw)
        hit = q & _words(" ".join(cells))
        if hit:
            scored.append((sum(len(w) for w in hit), rid))  # longer shared words say more than "1"
    best = [rid for _, rid in sorted(scored, key=lambda x: (-x[0], x[1]))[:matched]]
    head = list(t.row_ids[:first])
    return sorted(set(head) | set(best))


def _rows_text(conn: sqlite3.Connection, t: SqlTable, row_ids: Sequence[int]) -> str:
    if not row_ids:
        return ""
    cols = ", ".join(f'"{c}"' for c in t.columns)
    rows = conn.execute(f'SELECT {ROW_ID}, {cols} FROM "{t.name}" WHERE {ROW_ID} IN '
                        f'({", ".join("?" * len(row_ids))}) ORDER BY {ROW_ID}', list(row_ids)).fetchall()
    return "\n".join("(" + ", ".join(_sql_literal(v) for v in r) + ")" for r in rows)


def _table_block(conn, t: SqlTable, row_ids: Sequence[int], hints: Mapping[str, Sequence[str]] | None = None) -> str:
    body = _rows_text(conn, t, row_ids)
    n = len(row_ids)
    head = f"/* {n} of its {len(t.row_ids)} rows ({ROW_ID}, {', '.join(t.columns)}):\n" if n else ""
    return _schema(t, hints) + (f"\n{head}{body}\n*/" if n else "")


def _relevance(conn, t: SqlTable, question: str) -> int:
    q = _words(question)
    meta = _words(" ".join([t.title, *t.header, *t.columns]))
    return 3 * len(q & meta) + len(_choose_rows(conn, t, question, first=0, matched=50))


def table_context(store, tables: Sequence[SqlTable | str] | None, question: str, *,
                  count_tokens: Callable[[str], int] | None = None, max_tokens: int = 1200, first_rows: int = 3,
                  matched_rows: int = 4, value_hints: bool = True) -> TableContext:
    """Schemas and sample rows of ``tables`` (all catalogued tables when None) for ``question``.

    Each table shows its ``first_rows`` first rows and up to ``matched_rows`` rows sharing the
    most words with the question; with ``value_hints``, a TEXT column holding few distinct
    values (e.g. "Home"/"Away") lists them beside its name. Tables are ordered by how much they share with the question;
    rows, then whole tables (least relevant first) are dropped until the text fits
    ``max_tokens`` as ``count_tokens`` counts (default: 4 characters a token). The most
    relevant table's schema is always kept.
    """
    count = count_tokens or (lambda s: len(s) // 4 + 1)
    conn = _connect_ro(store)
    try:
        ts = _resolve_tables(conn, tables)
        if not ts:
            raise NoTables("there are no tables in this knowledge base",
                           fix="add CSV, TSV or XLSX files, or PDFs with tables")
        if len(ts) > 1:
            ts = sorted(ts, key=lambda t: -_relevance(conn, t, question))
        chosen = {t.name: _choose_rows(conn, t, question, first=first_rows, matched=matched_rows) for t in ts}
        hints = {t.name: _value_hints(conn, t) if value_hints else {} for t in ts}
        shown = list(ts)

        def render() -> str:
            return "\n\n".join(_table_block(conn, t, chosen[t.name], hints[t.name]) for t in shown)

        text = render()
        n = count(text)
        while n > max_tokens:
            # cut the row lists first (matched rows last), then drop tables from the end
            fat = [t for t in shown if chosen[t.name]]
            if fat:
                t = max(fat, key=lambda t: len(chosen[t.name]))
                rows = chosen[t.name]
                head = [r for r in rows if r in t.row_ids[:first_rows]]
                extra = [r for r in rows if r not in head]
                chosen[t.name] = head + extra[:-1] if extra else head[:-1]
                chosen[t.name].sort()
            elif len(shown) > 1:
                shown.pop()
            else:
                break
            text = render()
            n = count(text)
        return TableContext(text=text, tables=tuple(shown), sample_rows={t.name: tuple(chosen[t.name]) for t in shown},
                            n_tokens=n)
    finally:
        conn.close()


# --------------------------------------------------------------------------- SQL text


_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<comment>--[^\n]*|/\*.*?(?:\*/|\Z))
  | (?P<str>'(?:[^']|'')*(?:'|\Z))
  | (?P<ident>"(?:[^"]|"")*(?:"|\Z)|`[^`]*(?:`|\Z)|\[[^\]]*(?:\]|\Z))
  | (?P<word>[A-Za-z_][A-Za-z0-9_$]*)
  | (?P<num>\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)
  | (?P<op>.)
""", re.S | re.X)


@dataclass(frozen=True)
class _Tok:
    kind: str
    text: str
    start: int
    depth: int
    """Parenthesis depth at this token (0 = the outer statement)."""

    @property
    def upper(self) -> str:
        return self.text.upper() if self.kind == "word" else ""


def _tokens(sql: str) -> list[_Tok]:
    out: list[_Tok] = []
    depth = 0
    for m in _TOKEN.finditer(sql):
        kind = m.lastgroup
        if kind in ("ws", "comment"):
            continue
        text = m.group()
        if text == ")":
            depth = max(0, depth - 1)
        out.append(_Tok(kind, text, m.start(), depth))
        if text == "(":
            depth += 1
    return out


def extract_sql(reply: str) -> str:
    """The query in a model's reply: a fenced block if there is one, else the text from the
    first SELECT/WITH up to the end of that statement. Trailing semicolons are dropped."""
    text = reply.strip()
    fence = re.search(r"```[ \t]*(?:sql|sqlite)?[ \t]*\n?(.*?)(?:```|\Z)", text, re.S | re.I)
    if fence and re.search(r"\b(select|with)\b", fence.group(1), re.I):
        text = fence.group(1)
    m = re.search(r"\b(select|with)\b", text, re.I)
    if m is None:
        return text.strip().rstrip(";").strip()
    text = text[m.start():]
    # stop at the first top-level semicolon, or at a blank line followed by prose
    end = len(text)
    for t in _tokens(text):
        if t.text == ";":
            end = t.start
            break
    text = text[:end]
    para = re.search(r"\n\s*\n(?=\s*[A-Z][a-z]+\s)", text)
    if para:
        text = text[:para.start()]
    return text.strip().rstrip(";").strip()


def validate_sql(sql: str) -> str:
    """The query, stripped, if it is one SELECT/WITH statement; TableSqlError otherwise.

    This is the syntactic check; what the statement may touch is checked by SQLite's
    authorizer when it runs (``run_select``).
    """
    s = sql.strip()
    toks = _tokens(s)
    while toks and toks[-1].text == ";":
        s = s[:toks[-1].start].rstrip()
        toks.pop()
    if not toks:
        raise TableSqlError("the model wrote no SQL query")
    if any(t.text == ";" for t in toks):
        raise TableSqlError("only one SQL statement may run, and the model wrote several")
    if toks[0].upper not in ("SELECT", "WITH", "VALUES"):
        raise TableSqlError(f"only SELECT queries may run, and the model wrote {toks[0].text.upper()!r}")
    if not sqlite3.complete_statement(s + ";"):
        raise TableSqlError("the SQL query is incomplete (an unclosed quote or comment)")
    return s


# --------------------------------------------------------------------------- running


@dataclass
class _Run:
    columns: tuple[str, ...]
    rows: list[tuple]
    truncated: bool
    reads: dict[str, list[str]]
    """Table (lower case) → columns read, in the order SQLite reported them."""
    functions: list[str]


def _authorizer(allowed: set[str], reads: dict[str, list[str]], functions: list[str], denied: list[str]):
    def auth(action, arg1, arg2, db_name, trigger):
        if action == sqlite3.SQLITE_SELECT:
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_READ:
            table = (arg1 or "").casefold()
            if table in allowed:
                cols = reads.setdefault(table, [])
                if arg2 and arg2 not in cols:
                    cols.append(arg2)
                return sqlite3.SQLITE_OK
            denied.append(f"reading {arg1!r}, which is not one of the tables the question may use")
            return sqlite3.SQLITE_DENY
        if action == sqlite3.SQLITE_FUNCTION:
            name = (arg2 or "").casefold()
            if name in ("load_extension", "readfile", "writefile", "edit", "fts3_tokenizer"):
                denied.append(f"calling {arg2}()")
                return sqlite3.SQLITE_DENY
            functions.append(name)
            return sqlite3.SQLITE_OK
        if action == getattr(sqlite3, "SQLITE_RECURSIVE", 33):
            return sqlite3.SQLITE_OK
        names = {sqlite3.SQLITE_PRAGMA: "PRAGMA", sqlite3.SQLITE_ATTACH: "ATTACH", sqlite3.SQLITE_DETACH: "DETACH",
                 sqlite3.SQLITE_INSERT: "INSERT", sqlite3.SQLITE_UPDATE: "UPDATE", sqlite3.SQLITE_DELETE: "DELETE",
                 sqlite3.SQLITE_TRANSACTION: "a transaction"}
        denied.append(names.get(action, f"statement action {action}"))
        return sqlite3.SQLITE_DENY

    return auth


def run_select(conn: sqlite3.Connection, sql: str, allowed: Sequence[str], *,
               time_limit_ms: int = DEFAULT_TIME_LIMIT_MS, max_rows: int = DEFAULT_MAX_ROWS,
               cancel: CancelToken | None = None) -> _Run:
    """Run a validated query that may only read ``allowed`` tables; TableSqlError on any failure."""
    sql = validate_sql(sql)
    reads: dict[str, list[str]] = {}
    functions: list[str] = []
    denied: list[str] = []
    deadline = time.monotonic() + time_limit_ms / 1000
    why: list[str] = []

    def tick() -> int:
        if cancel is not None and cancel.cancelled:
            why.append("cancel")
            return 1
        if time.monotonic() > deadline:
            why.append("time")
            return 1
        return 0

    conn.set_authorizer(_authorizer({a.casefold() for a in allowed}, reads, functions, denied))
    conn.set_progress_handler(tick, 1000)
    try:
        cur = conn.execute(sql)
        rows = cur.fetchmany(max_rows + 1)
        columns = tuple(d[0] for d in cur.description or ())
        cur.close()
    except sqlite3.Warning as e:  # "You can only execute one statement at a time."
        raise TableSqlError(f"only one SQL statement may run ({e})") from None
    except sqlite3.Error as e:
        if "cancel" in why:
            raise Cancelled("cancelled") from None
        if "time" in why:
            raise TableSqlError(f"the SQL query ran longer than {time_limit_ms} ms and was stopped") from None
        if denied:
            raise TableSqlError(f"the SQL query is not allowed: {denied[0]}") from None
        raise TableSqlError(f"SQLite rejected the query: {e}") from None
    finally:
        conn.set_progress_handler(None, 0)
        conn.set_authorizer(None)
    truncated = len(rows) > max_rows
    return _Run(columns=columns, rows=[tuple(r) for r in rows[:max_rows]], truncated=truncated, reads=reads,
                functions=functions)


# --------------------------------------------------------------------------- provenance


def _select_shape(toks: list[_Tok]) -> tuple[int, bool, bool, list[str]] | None:
    """For a plain ``SELECT ... FROM`` (no WITH, no UNION): the offset where the outer select
    list ends, whether it is DISTINCT, whether it has GROUP BY, and its aggregate calls."""
    if not toks or toks[0].upper != "SELECT":
        return None
    distinct = len(toks) > 1 and toks[1].upper == "DISTINCT"
    end = None
    grouped = False
    aggregates: list[str] = []
    for i, t in enumerate(toks):
        if t.depth != 0:
            continue
        if t.upper in ("UNION", "INTERSECT", "EXCEPT"):
            return None
        if t.upper == "FROM" and end is None:
            end = t.start
        if t.upper == "GROUP" and i + 1 < len(toks) and toks[i + 1].upper == "BY":
            grouped = True
        if t.kind == "word" and t.text.casefold() in _AGGREGATES and i + 1 < len(toks) and toks[i + 1].text == "(":
            args = 1
            for u in toks[i + 2:]:
                if u.depth == 0 and u.text == ")":
                    break
                if u.depth == 1 and u.text == ",":
                    args += 1
            # min(a, b) and max(a, b) with two or more arguments are scalar functions
            if not (t.text.casefold() in ("min", "max") and args > 1):
                aggregates.append(t.text.casefold())
    if end is None:
        return None
    return end, distinct, grouped, aggregates


def _provenance(conn: sqlite3.Connection, sql: str, run: _Run, table: str, allowed: Sequence[str], *,
                time_limit_ms: int) -> tuple[str, list[tuple[int, ...]]]:
    """Source rows per result row, and how they were found."""
    toks = _tokens(sql)
    shape = _select_shape(toks)
    if shape is not None:
        end, distinct, grouped, aggregates = shape
        if not grouped and aggregates in (["min"], ["max"]):
            # SQLite documents that a bare column beside a lone min()/max() comes from the row
            # holding that extreme: exactly the row to cite
            extra, mode = ROW_ID, "argmax"
        elif grouped or aggregates:
            extra, mode = f"group_concat({ROW_ID})", "group"
        elif not distinct:
            extra, mode = ROW_ID, "rowid"
        else:
            extra, mode = None, ""
        if extra is not None:
            aug = f"{sql[:end].rstrip()}, {extra} AS {_RID} {sql[end:]}"
            try:
                again = run_select(conn, aug, allowed, time_limit_ms=time_limit_ms, max_rows=len(run.rows))
            except TableSqlError:
                again = None
            if again is not None and [r[:-1] for r in again.rows] == run.rows:
                out = []
                for r in again.rows:
                    v = r[-1]
                    if v is None:
                        out.append(())
                    elif isinstance(v, int):
                        out.append((v,))
                    else:
                        out.append(tuple(int(x) for x in str(v).split(",") if x.strip().lstrip("-").isdigit()))
                return mode, out
    # Look the result values up in the columns the query read.
    cols = [c for c in run.reads.get(table.casefold(), []) if c not in (ROW_ID, RAW_COLUMN, RECTS_COLUMN)]
    if not cols:
        return "none", [() for _ in run.rows]
    out = []
    for r in run.rows:
        found: list[int] = []
        for v in r:
            if v is None or len(found) >= MAX_CITED_ROWS:
                continue
            for c in cols:
                ids = conn.execute(f'SELECT {ROW_ID} FROM "{table}" WHERE "{c}" = ? ORDER BY {ROW_ID} LIMIT 20',
                                   [v]).fetchall()
                found += [i for (i,) in ids if i not in found]
        out.append(tuple(found))
    return "lookup", out


def _display_rows(conn: sqlite3.Connection, t: SqlTable | None, run: _Run, row_map: list[tuple[int, ...]],
                  mode: str) -> list[tuple]:
    """Result rows with cells that copy one source cell replaced by its text as written."""
    if t is None or mode not in ("rowid", "argmax", "lookup"):
        return list(run.rows)
    read = [c for c in run.reads.get(t.name.casefold(), []) if c in t.columns]
    ids = sorted({r[0] for r in row_map if len(r) == 1})
    if not ids:
        return list(run.rows)
    cols = ", ".join(f'"{c}"' for c in t.columns)
    typed = {r[0]: r[1:] for r in conn.execute(
        f'SELECT {ROW_ID}, {cols} FROM "{t.name}" WHERE {ROW_ID} IN ({", ".join("?" * len(ids))})', ids)}
    raw = {rid: json.loads(r) for rid, r in conn.execute(
        f'SELECT {ROW_ID}, "{RAW_COLUMN}" FROM "{t.name}" WHERE {ROW_ID} IN ({", ".join("?" * len(ids))})', ids)}
    index = {c.casefold(): j for j, c in enumerate(t.columns)}
    out = []
    for vals, rids in zip(run.rows, row_map):
        if len(rids) != 1 or rids[0] not in typed:
            out.append(vals)
            continue
        rid = rids[0]
        row = []
        for name, v in zip(run.columns, vals):
            cand = [index[name.casefold()]] if name.casefold() in index else []
            cand += [index[c.casefold()] for c in read if index[c.casefold()] not in cand]
            j = next((j for j in cand if v is not None and typed[rid][j] == v and j < len(raw[rid])), None)
            row.append(raw[rid][j] if j is not None else v)
        out.append(tuple(row))
    return out


# --------------------------------------------------------------------------- the prompt

_SYSTEM = """You write one SQLite SELECT query that answers a question about the tables given.
Rules:
- Use only the tables and columns shown, spelled exactly as in CREATE TABLE.
- Filter only on what the question names. Compare text with the spelling used in the rows or the \
listed values (questions are often lower case: 'Oslo', not 'oslo'); when unsure use LIKE '%word%'.
- Select the column that holds the answer: a name, a date or a number in a cell. Use COUNT(*) only \
when the question asks how many rows/times/items there are; "how many people attended" is a cell value.
- row_num is the row's position in the table (first row = 1): use it for first, last, next, before, after.
- For "which/who ... most/least/highest/lowest" use ORDER BY the number column with LIMIT 1.
- Reply with the query alone in a ```sql block.

Example table:
CREATE TABLE t_7_tour ( -- tour
  row_num INTEGER PRIMARY KEY, -- row position 1..24
  date DATE,
  city TEXT,
  venue TEXT,
  attendance INTEGER,
  result TEXT -- values: 'Sold out', 'Cancelled', 'Open'
);
/* 2 of its 24 rows (row_num, date, city, venue, attendance, result):
(1, '2009-03-02', 'Oslo', 'Spektrum', 8200, 'Sold out')
(2, '2009-03-04', 'Stockholm', 'Globe Arena', 12500, 'Open')
*/
Examples of questions about it and the query to write:
Question: what venue did they play in stockholm?
```sql
SELECT venue FROM t_7_tour WHERE city = 'Stockholm'
```
Question: how many people attended the show in oslo?
```sql
SELECT attendance FROM t_7_tour WHERE city = 'Oslo'
```
Question: how many shows were sold out?
```sql
SELECT COUNT(*) FROM t_7_tour WHERE result = 'Sold out'
```
Question: which city had the largest crowd?
```sql
SELECT city FROM t_7_tour ORDER BY attendance DESC LIMIT 1
```
Question: where did they play after oslo?
```sql
SELECT city FROM t_7_tour WHERE row_num = (SELECT row_num FROM t_7_tour WHERE city = 'Oslo') + 1
```
Question: what was the last city of the tour?
```sql
SELECT city FROM t_7_tour ORDER BY row_num DESC LIMIT 1
```
Question: which had more people, bergen or oslo?
```sql
SELECT city FROM t_7_tour WHERE city IN ('Bergen', 'Oslo') ORDER BY attendance DESC LIMIT 1
```
Question: how many more people came in oslo than in bergen?
```sql
SELECT (SELECT attendance FROM t_7_tour WHERE city = 'Oslo') - (SELECT attendance FROM t_7_tour WHERE city = 'Bergen')
```"""


def _messages(ctx: TableContext, question: str):
    from core.models.llm import ChatMessage

    return [ChatMessage("system", _SYSTEM),
            ChatMessage("user", f"{ctx.text}\n\nQuestion: {question}")]


# --------------------------------------------------------------------------- repairs


def _end(t: _Tok) -> int:
    return t.start + len(t.text)


def _splice(sql: str, edits: Sequence[tuple[int, int, str]]) -> str:
    """``sql`` with each (start, end, text) range replaced (ranges must not overlap)."""
    for start, end, text in sorted(edits, reverse=True):
        sql = sql[:start] + text + sql[end:]
    return sql


def _known_names(tables: Sequence[SqlTable], toks: Sequence[_Tok]) -> set[str]:
    """Column and table names, plus the names the query defines (``AS x``, ``WITH x AS``), case-folded."""
    names = {ROW_ID, "rowid"}
    for t in tables:
        names.add(t.name.casefold())
        names.update(c.casefold() for c in t.columns)
    for i, t in enumerate(toks):
        if t.upper == "AS":  # an alias after AS; a common table expression's name before it
            names.update(_unquote(toks[j].text).casefold() for j in (i - 1, i + 1) if 0 <= j < len(toks))
    return names


def _unquote(text: str) -> str:
    if text[:1] in ('"', "`") and text[-1:] == text[:1] and len(text) > 1:
        return text[1:-1].replace(text[0] * 2, text[0])
    if text[:1] == "[" and text[-1:] == "]":
        return text[1:-1]
    return text


_VALUE_OPS = frozenset({"=", "<", ">", "LIKE", "GLOB", "IS"})
_LIST_ITEMS = frozenset({"str", "num", "ident"})


def _in_value_position(toks: Sequence[_Tok], i: int) -> bool:
    """True when token ``i`` stands where a value goes: after a comparison, or in an ``IN (…)`` list."""
    if i == 0:
        return False
    j = i - 1
    while j >= 0 and toks[j].depth == toks[i].depth and (toks[j].text == "," or toks[j].kind in _LIST_ITEMS):
        j -= 1
    if j < 0:
        return False
    prev = toks[i - 1]
    if (prev.upper or prev.text) in _VALUE_OPS:
        return True
    return toks[j].text == "(" and j > 0 and toks[j - 1].upper == "IN"


def check_names(sql: str, tables: Sequence[SqlTable]) -> str:
    """The query with quoted names checked before it runs.

    SQLite reads a double-quoted name that is no column as a string, so ``WHERE "Home team" =
    'x'`` would silently compare two strings. A quoted name that is no column, table or alias
    where a value goes (``city = "Oslo"``) is turned into the string it stands for; anywhere else
    it raises TableSqlError naming it and the real columns, for the model's second try.
    """
    toks = _tokens(sql)
    known = _known_names(tables, toks)
    edits = []
    for i, t in enumerate(toks):
        if t.kind != "ident":
            continue
        name = _unquote(t.text)
        if name.casefold() in known:
            continue
        if _in_value_position(toks, i):
            edits.append((t.start, _end(t), "'" + name.replace("'", "''") + "'"))
            continue
        raise TableSqlError(f"no such column: {t.text}")
    return _splice(sql, edits)


def _columns_hint(error: str, tables: Sequence[SqlTable]) -> str:
    if "no such column" not in error:
        return ""
    return "".join(f"\nThe columns of {t.name} are: {', '.join([ROW_ID, *t.columns])}." for t in tables)


def relaxed_queries(sql: str, question: str | None = None) -> list[str]:
    """Looser versions of a query whose text comparisons may have matched nothing: ``= 'x'``
    made case-blind (``LIKE 'x'``), then a substring match (``LIKE '%x%'``), then (given the
    ``question``) that substring match without the ANDed conditions on text the question does
    not mention: a small model copies such filters from the sample rows it was shown. Empty
    when the query compares no text literal with ``=`` or ``LIKE``."""
    toks = _tokens(sql)
    q_words = _words(question) if question is not None else None
    exact, substring, kept, drops = [], [], [], []
    for i, t in enumerate(toks):
        if t.kind != "str" or i == 0:
            continue
        lit = t.text[1:-1]
        if not re.search(r"[^\W\d_]", lit):
            continue  # numbers and dates written as text compare as they are
        prev = toks[i - 1]
        before = toks[i - 2].text if i >= 2 else ""
        if prev.text == "=" and before not in ("!", "<", ">", "="):
            k = i - 1
        elif prev.text == "=" and before == "=":
            k = i - 2
        elif prev.upper == "LIKE":
            k = i - 1
        else:
            continue
        op = (toks[k].start, _end(prev), "LIKE")
        loose = [op, (t.start, _end(t), "'%" + lit.strip("%") + "%'")]
        exact.append(op)
        substring += loose
        if q_words is not None and _copied_filter(toks, k - 1, i, lit, q_words):
            drops.append((toks[k - 1].start, _end(t), "1 = 1"))
        else:
            kept += loose
    out: list[str] = []
    for edits in (exact, substring, kept + drops if drops else []):
        if edits:
            q = _splice(sql, edits)
            if edits is not exact and edits is not substring and _NO_FILTER_LEFT.search(q):
                continue  # every condition dropped: that would answer about the whole table
            if q != sql and q not in out:
                out.append(q)
    return out


_NO_FILTER_LEFT = re.compile(r"\bWHERE\s+1 = 1(?:\s+AND\s+1 = 1)*\s*(?:$|\)|ORDER\b|GROUP\b|LIMIT\b|HAVING\b)",
                             re.I)


def _copied_filter(toks: Sequence[_Tok], c: int, i: int, lit: str, q_words: set[str]) -> bool:
    """True when ``toks[c] <op> toks[i]`` is a whole ANDed condition on a column, comparing with
    text of which no word (of three letters or more) is in the question."""
    words = {w for w in _words(lit) if len(w) >= 3 and not w.isdigit()}
    if not words or words & q_words or c < 1:
        return False
    col = toks[c]
    if col.kind not in ("word", "ident") or (col.kind == "word" and col.text.casefold() in _SQL_WORDS):
        return False
    if toks[c - 1].upper not in ("WHERE", "AND") or toks[c - 1].depth != col.depth:
        return False
    if c >= 2 and toks[c - 2].upper == "BETWEEN":
        return False
    nxt = toks[i + 1] if i + 1 < len(toks) else None
    return nxt is None or nxt.upper in ("AND", "ORDER", "GROUP", "LIMIT", "HAVING") or nxt.text == ")"


_SQL_WORDS = frozenset({"select", "from", "where", "and", "or", "not", "null", "like", "in", "is", "case", "when"})


def _empty(run: _Run, *, zero_counts: bool) -> bool:
    """No rows, only NULLs, or (with ``zero_counts``) one row of zeros, as a COUNT over a filter
    that matched nothing gives."""
    if not run.rows or all(all(v is None for v in r) for r in run.rows):
        return True
    return zero_counts and len(run.rows) == 1 and all(v in (0, None) for v in run.rows[0])


# --------------------------------------------------------------------------- asking


def ask_table(store, llm, question: str, *, tables: Sequence[SqlTable | str] | None = None,
              cancel: CancelToken | None = None, time_limit_ms: int = DEFAULT_TIME_LIMIT_MS,
              max_rows: int = DEFAULT_MAX_ROWS, max_tokens: int = 256, context_tokens: int | None = None,
              status: Callable[[str], None] | None = None, max_attempts: int = 3) -> TableResult:
    """Answer ``question`` with one SELECT over ``tables`` (default: every table of the knowledge base).

    ``store`` is a ``core.store.store.Store`` (or a knowledge-base folder or database path);
    ``llm`` a ``LocalLLM``. The model writes a query; Sift checks its quoted names
    (``check_names``) and runs it. A query that fails is shown to the model with the error (and,
    for an unknown column, the real column names) for another try. A query that runs but finds
    nothing (no rows, NULL, or a COUNT of 0) is first loosened without the model
    (``relaxed_queries``: text compared case-blind, then as a substring); if that finds nothing
    either, the model is told so once and tries again. At most ``max_attempts`` queries are
    written. Raises NoTables when there is nothing to ask and Cancelled when ``cancel`` fires;
    when no query runs, the TableResult's ``error`` says why, with the queries tried in
    ``attempts``. A query that ran but found nothing is returned as such (no rows).
    """
    from core.models.llm import ChatMessage

    t0 = time.monotonic()
    timings: dict[str, float] = {}
    say = status or (lambda s: None)

    def check() -> None:
        if cancel is not None and cancel.cancelled:
            raise Cancelled("cancelled")

    fixed = llm.count_tokens(_SYSTEM) + 40
    budget = context_tokens or max(256, min(1800, llm.n_ctx - max_tokens - fixed - 400))
    ctx = table_context(store, tables, question, count_tokens=llm.count_tokens, max_tokens=budget)
    timings["context"] = time.monotonic() - t0
    allowed = [t.name for t in ctx.tables]
    by_name = {t.name.casefold(): t for t in ctx.tables}
    messages = _messages(ctx, question)
    attempts: list[str] = []
    error: str | None = None
    found_nothing: tuple[str, _Run] | None = None
    told_empty = False
    timings["generate"] = timings["execute"] = 0.0
    conn = _connect_ro(store)
    try:
        for attempt in range(max(1, max_attempts)):
            check()
            say("writing SQL" if attempt == 0 else "correcting SQL")
            tg = time.monotonic()
            reply = llm.chat(messages, max_tokens=max_tokens, temperature=0.0, cancel=cancel)
            timings["generate"] += time.monotonic() - tg
            check()
            sql = extract_sql(reply)
            attempts.append(sql)
            say("running SQL")
            te = time.monotonic()
            try:
                sql = check_names(validate_sql(sql), ctx.tables)
                run = run_select(conn, sql, allowed, time_limit_ms=time_limit_ms, max_rows=max_rows, cancel=cancel)
            except TableSqlError as e:
                timings["execute"] += time.monotonic() - te
                error = str(e)
                messages = [*messages, ChatMessage("assistant", f"```sql\n{sql}\n```"),
                            ChatMessage("user", f"That query failed: {error}{_columns_hint(error, ctx.tables)}\n"
                                                "Write a corrected query.")]
                continue
            if _empty(run, zero_counts=True):
                for loose in relaxed_queries(sql, question):
                    try:
                        again = run_select(conn, loose, allowed, time_limit_ms=time_limit_ms, max_rows=max_rows,
                                           cancel=cancel)
                    except TableSqlError:
                        continue
                    if not _empty(again, zero_counts=True):
                        sql, run = loose, again
                        break
            timings["execute"] += time.monotonic() - te
            if _empty(run, zero_counts=False) and not told_empty and attempt + 1 < max_attempts:
                told_empty = True
                found_nothing = (sql, run)
                what = "no rows" if not run.rows else "only NULL"
                messages = [*messages, ChatMessage("assistant", f"```sql\n{sql}\n```"),
                            ChatMessage("user", f"That query returned {what}. Check the column and the values "
                                                "you filter on against the rows shown (spelling, case; "
                                                "LIKE '%word%' matches part of a cell) and write a corrected "
                                                "query.")]
                continue
            if _empty(run, zero_counts=False) and found_nothing is not None and run.rows == [] \
                    and found_nothing[1].rows:
                sql, run = found_nothing  # keep the NULL row of the first query rather than nothing
            return _result(conn, question, sql, run, ctx, allowed, by_name, attempts, timings, t0,
                           time_limit_ms=time_limit_ms)
        if found_nothing is not None:  # the retry after an empty result failed: the empty result stands
            sql, run = found_nothing
            return _result(conn, question, sql, run, ctx, allowed, by_name, attempts, timings, t0,
                           time_limit_ms=time_limit_ms)
    finally:
        conn.close()
    timings["total"] = time.monotonic() - t0
    return TableResult(question=question, sql=attempts[-1] if attempts else "", error=error, attempts=tuple(attempts),
                       timings=timings)


def _result(conn, question: str, sql: str, run: _Run, ctx: TableContext, allowed: Sequence[str],
            by_name: Mapping[str, SqlTable], attempts: Sequence[str], timings: dict[str, float], t0: float, *,
            time_limit_ms: int) -> TableResult:
    """The TableResult of a query that ran: cited table, source rows, cells as written."""
    te = time.monotonic()
    read = [t for t in allowed if t.casefold() in run.reads]
    cited = max(read, key=lambda n: len(run.reads[n.casefold()]), default=None) if read else None
    if cited is None and len(allowed) == 1 and re.search(rf"\b{re.escape(allowed[0])}\b", sql, re.I):
        cited = allowed[0]  # SELECT COUNT(*) reads no column, yet counts that table's rows
    t = by_name.get(cited.casefold()) if cited else None
    mode, row_map = ("none", [() for _ in run.rows])
    if t is not None:
        mode, row_map = _provenance(conn, sql, run, t.name, allowed, time_limit_ms=time_limit_ms)
    shown = _display_rows(conn, t, run, row_map, mode)
    timings["execute"] += time.monotonic() - te
    row_ids: list[int] = []
    for ids in row_map:
        for i in ids:
            if i not in row_ids and len(row_ids) < MAX_CITED_ROWS:
                row_ids.append(i)
    cols: list[str] = []
    if t is not None:
        read_cols = [c for c in run.reads.get(t.name.casefold(), []) if c in t.columns]
        first = [c for c in t.columns if c.casefold() in {n.casefold() for n in run.columns} and c in read_cols]
        cols = first + [c for c in read_cols if c not in first]
    timings["total"] = time.monotonic() - t0
    return TableResult(question=question, sql=sql, columns=run.columns, rows=tuple(shown), values=tuple(run.rows),
                       table=t.name if t else None, doc_id=t.doc_id if t else None, row_ids=tuple(row_ids),
                       row_map=tuple(row_map), cited_columns=tuple(cols), tables_read=tuple(read),
                       truncated=run.truncated, attempts=tuple(attempts), provenance=mode, timings=timings)


# --------------------------------------------------------------------------- citations


def table_citation(store, result: TableResult, *, n: int = 1, max_rows: int = 20):
    """The ``core.answer.types.Citation`` for a result: its table, row ids and columns, the cited
    cells as written ("Opponent: Derby County; Date: 15 August 1987", one line per row, at most
    ``max_rows`` rows) and, for a table from a PDF, its page and the cited cells' rectangles.
    None when the result cites no rows."""
    from core.answer.types import Citation

    if result.table is None or not result.row_ids:
        return None
    conn = _connect_ro(store)
    try:
        t = next((x for x in _catalogued(conn) if x.name == result.table), None)
        if t is None:
            return None
        ids = list(result.row_ids[:max_rows])
        has_rects = any(r[1] == RECTS_COLUMN for r in conn.execute(f'PRAGMA table_info("{t.name}")'))
        sel = f'{ROW_ID}, "{RAW_COLUMN}"' + (f', "{RECTS_COLUMN}"' if has_rects else "")
        got = {r[0]: r for r in conn.execute(
            f'SELECT {sel} FROM "{t.name}" WHERE {ROW_ID} IN ({", ".join("?" * len(ids))})', ids)}
    finally:
        conn.close()
    cols = [t.columns.index(c) for c in result.cited_columns if c in t.columns] or list(range(len(t.columns)))
    lines, rects = [], []
    for rid in ids:
        if rid not in got:
            continue
        raw = json.loads(got[rid][1])
        lines.append("; ".join(f"{t.header[j]}: {raw[j]}" for j in cols if j < len(raw) and raw[j]))
        if has_rects and got[rid][2]:
            cell_rects = json.loads(got[rid][2])
            rects += [tuple(cell_rects[j]) for j in cols if j < len(cell_rects) and cell_rects[j]]
    doc = store.get_document(t.doc_id) if hasattr(store, "get_document") else None
    return Citation(n=n, kind="table", document=doc.name if doc else t.title, path=doc.path if doc else "",
                    doc_id=t.doc_id, text="\n".join(lines), page=t.page, rects=tuple(rects), table=t.name,
                    rows=tuple(result.row_ids), columns=tuple(result.cited_columns), score=1.0)


# --------------------------------------------------------------------------- answers


def format_value(v) -> str:
    """A result cell as text: integral floats without ``.0``, no binary noise, NULL as empty."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(int(v))
    if isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")):
            return str(v)
        if abs(v - round(v)) < 1e-9 and abs(v) < 1e15:
            return str(int(round(v)))
        return f"{v:.10g}"
    if isinstance(v, bytes):
        return v.hex()
    return str(v)


def denotation(result: TableResult) -> list[str]:
    """The answer as a list of values (WikiTableQuestions' denotation): the first result column,
    one value per row; empty when the query failed or matched nothing."""
    if not result.ok or not result.rows:
        return []
    return [format_value(r[0]) for r in result.rows if r and r[0] is not None]


def format_answer(result: TableResult) -> str:
    """A short answer: the value, a list of values, or rows as ``a — b``; or why there is none."""
    if not result.ok:
        return f"Sift could not answer this from the tables: {result.error}"
    if not result.rows:
        return "No rows in the tables match the question."
    if len(result.columns) == 1:
        vals = [format_value(r[0]) for r in result.rows]
        text = vals[0] if len(vals) == 1 else ", ".join(vals)
    else:
        text = "; ".join(" — ".join(format_value(v) for v in r) for r in result.rows)
    if result.truncated:
        text += f" (first {len(result.rows)} rows)"
    return text
