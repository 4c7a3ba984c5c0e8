"""Extracted tables as real SQLite tables, described in a catalogue, plus their retrieval chunks.

Every ExtractedTable (a CSV file, an XLSX sheet, a table on a PDF page) becomes one SQLite
table ``t_<doc_id>_<slug>`` whose columns are the snake_case header names with inferred
types (INTEGER, REAL, DATE as ISO text, TEXT), so a later step can let an LLM write
``SELECT`` queries over them. Each table has:

* ``row_num INTEGER PRIMARY KEY`` — the row's 1-based position in the source table. It is
  the rowid (an alias, so it survives VACUUM), the id table chunks cite, and it answers
  "first / last / next row" questions that WikiTableQuestions-style data asks.
* ``__raw`` — the row's cells exactly as shown, a JSON list of strings. Typed columns lose
  the look of a value ("$1,234.50" is stored as 1234.5, "Bye" in a number column as NULL);
  citations and highlights need the original text, and one JSON column keeps the schema the
  LLM reads short (no ``<col>__raw`` twin per column) and travels with its row.
* ``__rects`` — for PDF tables only: a JSON list with each cell's rectangle (or null).

The ``sql_tables`` catalogue (self-contained, created on first use) lists every such table
with its document, title, page/sheet, original header, SQL column names and types.
"""
from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from typing import Callable, Sequence

import sqlite_utils
from sqlite_utils.db import quote_identifier

from core.ingest.tables import infer_column
from core.types import Chunk, ExtractedTable

__all__ = [
    "CATALOGUE", "ROW_ID", "RAW_COLUMN", "RECTS_COLUMN", "SqlTable",
    "ensure_catalogue", "create_sql_table", "drop_sql_tables", "list_sql_tables", "raw_rows",
    "table_chunks", "sql_identifier",
]

CATALOGUE = "sql_tables"
ROW_ID = "row_num"
RAW_COLUMN = "__raw"
RECTS_COLUMN = "__rects"
_MAX_IDENT = 48

# Words an LLM would have to quote; a column named after one gets a trailing underscore.
_SQL_KEYWORDS = frozenset("""
abort action add after all alter always analyze and as asc attach autoincrement before begin between by
cascade case cast check collate column commit conflict constraint create cross current current_date
current_time current_timestamp database default deferrable deferred delete desc detach distinct do drop
each else end escape except exclude exclusive exists explain fail filter first following for foreign from
full generated glob group groups having if ignore immediate in index indexed initially inner insert
instead intersect into is isnull join key last left like limit match materialized natural no not nothing
notnull null nulls of offset on or order others outer over partition plan pragma preceding primary query
raise range recursive references regexp reindex release rename replace restrict returning right rollback
row rows savepoint select set table temp temporary then ties to transaction trigger unbounded union unique
update using vacuum values view virtual when where window with without rowid oid _rowid_
""".split())


@dataclass(frozen=True)
class SqlTable:
    """One ExtractedTable as it was written to SQLite."""

    name: str
    """The SQLite table name, e.g. ``t_12_revenue_by_segment``."""
    doc_id: int
    title: str
    """The ExtractedTable's human name (file stem, sheet name, ``p3-t1``)."""
    header: tuple[str, ...]
    """The original header texts."""
    columns: tuple[str, ...]
    """The SQL column names, one per header entry (``row_num``/``__raw``/``__rects`` not included)."""
    types: tuple[str, ...]
    """``INTEGER``, ``REAL``, ``DATE`` or ``TEXT`` per column."""
    row_ids: tuple[int, ...]
    """The ``row_num`` (= rowid) of each source row, in order."""
    page: int | None = None
    sheet: str | None = None


def ensure_catalogue(db: sqlite_utils.Database) -> None:
    """Create the ``sql_tables`` catalogue if it is missing."""
    db.execute(f"""
        CREATE TABLE IF NOT EXISTS {CATALOGUE} (
            name TEXT PRIMARY KEY,
            doc_id INTEGER NOT NULL,
            title TEXT NOT NULL,
            page INTEGER,
            sheet TEXT,
            header TEXT NOT NULL,   -- JSON list: original header texts
            columns TEXT NOT NULL,  -- JSON list: SQL column names
            types TEXT NOT NULL,    -- JSON list: INTEGER / REAL / DATE / TEXT
            n_rows INTEGER NOT NULL,
            bbox TEXT,              -- JSON [x0, y0, x1, y1] for PDF tables
            header_rects TEXT       -- JSON list of [x0, y0, x1, y1] or null, for PDF tables
        )""")
    db.execute(f"CREATE INDEX IF NOT EXISTS {CATALOGUE}_doc ON {CATALOGUE}(doc_id)")


def sql_identifier(text: str, *, fallback: str) -> str:
    """A readable snake_case identifier: "Total Sales ($m)" → ``total_sales_m``, "2019" → ``c_2019``."""
    s = unicodedata.normalize("NFKC", text).lower()
    s = s.replace("%", " pct ").replace("#", " no ").replace("&", " and ")
    s = re.sub(r"[^\w]+", "_", s).strip("_")
    s = re.sub(r"_+", "_", s)[:_MAX_IDENT].rstrip("_")
    if not s:
        return fallback
    if s[0].isdigit():
        s = f"c_{s}"
    if s in _SQL_KEYWORDS:
        s = f"{s}_"
    return s


def _table_slug(text: str) -> str:
    # Table names stay ASCII: the LLM has to type them, and they appear in logs.
    ascii_ = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "_", ascii_.lower()).strip("_")[:40].rstrip("_")
    return slug or "table"


def _column_names(header: Sequence[str]) -> tuple[str, ...]:
    taken = {ROW_ID, RAW_COLUMN, RECTS_COLUMN, "rowid", "oid", "_rowid_"}
    out: list[str] = []
    for j, h in enumerate(header):
        base = sql_identifier(h, fallback=f"col{j + 1}")  # never starts with "_": no clash with __raw
        name, k = base, 2
        while name.casefold() in taken:  # SQLite identifiers are case-insensitive
            name, k = f"{base}_{k}", k + 1
        taken.add(name.casefold())
        out.append(name)
    return tuple(out)


def _unique_table_name(db: sqlite_utils.Database, base: str) -> str:
    existing = {n.casefold() for n in db.table_names()} | {n.casefold() for n in db.view_names()}
    name, k = base, 2
    while name.casefold() in existing:
        name, k = f"{base}_{k}", k + 1
    return name


def create_sql_table(db: sqlite_utils.Database, table: ExtractedTable, *, doc_id: int,
                     base_name: str | None = None) -> SqlTable:
    """Write ``table`` as a new SQLite table with inferred column types and catalogue it.

    The name is ``t_<doc_id>_<slug of base_name or table.name>``, made unique. Runs in one
    transaction (a savepoint when the caller already holds one), so a failure leaves nothing.
    """
    n = len(table.header)
    if any(len(r) != n for r in table.rows):
        raise ValueError(f"table {table.name!r}: every row must have {n} cells")
    columns = _column_names(table.header)
    inferred = [infer_column([r[j] for r in table.rows]) for j in range(n)]
    types = tuple(c.type for c in inferred)
    has_rects = table.cell_rects is not None

    with db.atomic():
        ensure_catalogue(db)
        name = _unique_table_name(db, f"t_{int(doc_id)}_{_table_slug(base_name or table.name)}")
        # DATE is declared as such so any schema dump tells the reader what the column holds;
        # its ISO strings never look numeric, so SQLite's NUMERIC affinity keeps them as text.
        defs = [f"{quote_identifier(ROW_ID)} INTEGER PRIMARY KEY"]
        defs += [f"{quote_identifier(c)} {t}" for c, t in zip(columns, types)]
        defs.append(f"{quote_identifier(RAW_COLUMN)} TEXT NOT NULL")
        if has_rects:
            defs.append(f"{quote_identifier(RECTS_COLUMN)} TEXT")
        db.execute(f"CREATE TABLE {quote_identifier(name)} (\n  " + ",\n  ".join(defs) + "\n)")

        names = [ROW_ID, *columns, RAW_COLUMN] + ([RECTS_COLUMN] if has_rects else [])
        sql = (f"INSERT INTO {quote_identifier(name)} ({', '.join(map(quote_identifier, names))}) "
               f"VALUES ({', '.join('?' * len(names))})")
        row_ids = tuple(range(1, len(table.rows) + 1))

        def records():
            for i, row in enumerate(table.rows):
                rec = [row_ids[i], *(col.values[i] for col in inferred), json.dumps(list(row), ensure_ascii=False)]
                if has_rects:
                    rects = table.cell_rects[i] if i < len(table.cell_rects) else ()
                    rec.append(json.dumps([list(r) if r is not None else None for r in rects]))
                yield rec

        db.conn.executemany(sql, records())
        db[CATALOGUE].insert({
            "name": name, "doc_id": int(doc_id), "title": table.name, "page": table.page, "sheet": table.sheet,
            "header": json.dumps(list(table.header), ensure_ascii=False),
            "columns": json.dumps(list(columns), ensure_ascii=False),
            "types": json.dumps(list(types)), "n_rows": len(table.rows),
            "bbox": json.dumps(list(table.bbox)) if table.bbox is not None else None,
            "header_rects": (json.dumps([list(r) if r is not None else None for r in table.header_rects])
                             if table.header_rects is not None else None),
        })
    return SqlTable(name=name, doc_id=int(doc_id), title=table.name, header=tuple(table.header), columns=columns,
                    types=types, row_ids=row_ids, page=table.page, sheet=table.sheet)


def drop_sql_tables(db: sqlite_utils.Database, doc_id: int) -> list[str]:
    """Drop every SQL table of ``doc_id`` and its catalogue rows; returns the names dropped."""
    with db.atomic():
        ensure_catalogue(db)
        names = [r[0] for r in db.execute(f"SELECT name FROM {CATALOGUE} WHERE doc_id = ?", [int(doc_id)])]
        for name in names:
            db.execute(f"DROP TABLE IF EXISTS {quote_identifier(name)}")
        db.execute(f"DELETE FROM {CATALOGUE} WHERE doc_id = ?", [int(doc_id)])
    return names


def list_sql_tables(db: sqlite_utils.Database, doc_id: int | None = None) -> list[SqlTable]:
    """The catalogued tables (of one document, or all), as SqlTable values."""
    ensure_catalogue(db)
    where, params = ("WHERE doc_id = ?", [int(doc_id)]) if doc_id is not None else ("", [])
    out = []
    for name, d, title, page, sheet, header, columns, types in db.execute(
            f"SELECT name, doc_id, title, page, sheet, header, columns, types FROM {CATALOGUE} {where} "
            "ORDER BY doc_id, rowid", params).fetchall():
        ids = tuple(r[0] for r in db.execute(f"SELECT {ROW_ID} FROM {quote_identifier(name)} ORDER BY {ROW_ID}"))
        out.append(SqlTable(name=name, doc_id=d, title=title, header=tuple(json.loads(header)),
                            columns=tuple(json.loads(columns)), types=tuple(json.loads(types)), row_ids=ids,
                            page=page, sheet=sheet))
    return out


def raw_rows(db: sqlite_utils.Database, name: str, row_ids: Sequence[int]) -> dict[int, tuple[str, ...]]:
    """The cells of the given rows exactly as shown in the source, keyed by row id."""
    if name.casefold() not in {r[0].casefold() for r in db.execute(f"SELECT name FROM {CATALOGUE}")}:
        raise KeyError(name)
    out: dict[int, tuple[str, ...]] = {}
    ids = [int(i) for i in row_ids]
    for k in range(0, len(ids), 500):  # stay under SQLite's bound-parameter limit
        part = ids[k:k + 500]
        for rid, raw in db.execute(
                f"SELECT {ROW_ID}, {quote_identifier(RAW_COLUMN)} FROM {quote_identifier(name)} "
                f"WHERE {ROW_ID} IN ({', '.join('?' * len(part))})", part):
            out[rid] = tuple(json.loads(raw))
    return out


# --------------------------------------------------------------------------- retrieval chunks


def _title_line(table: ExtractedTable) -> str:
    where = f" (sheet {table.sheet})" if table.sheet and table.sheet != table.name else ""
    if table.page is not None:
        where = f" (page {table.page})"
    return f"Table: {table.name}{where}"


def _row_line(header: Sequence[str], row: Sequence[str]) -> str:
    # "Column: value" pairs keep every value next to its column name, which is what a dense
    # embedding of one row needs to match "what was the attendance against Derby County".
    cells = [f"{h}: {v}" for h, v in zip(header, row) if v]
    return "; ".join(cells) if cells else "(empty row)"


def table_chunks(table: ExtractedTable, sql: SqlTable | str, *, count_tokens: Callable[[str], int],
                 max_tokens: int = 256) -> list[Chunk]:
    """Row-group chunks for retrieval: the table's title line, then one "Column: value; ..." line per row.

    As many rows as fit ``max_tokens`` (as ``count_tokens`` counts them, special tokens included)
    go into each chunk; a row too long on its own becomes one chunk, cut at a word boundary.
    ``row_ids`` are the SQL row ids rendered, so a hit can be highlighted cell by cell.

    ``sql`` may be just a table name: ``create_sql_table`` always numbers rows 1..n, so chunks
    can be made (and embedded) before the document id and the real table name exist, under a
    provisional name the store renames when it writes the table.
    """
    if isinstance(sql, str):
        name, row_ids = sql, tuple(range(1, len(table.rows) + 1))
    else:
        name, row_ids = sql.name, sql.row_ids
    if len(row_ids) != len(table.rows):
        raise ValueError(f"{name}: {len(row_ids)} row ids for {len(table.rows)} rows")
    overhead = count_tokens("")
    budget = max_tokens - overhead
    if budget < 8:
        raise ValueError(f"max_tokens={max_tokens} leaves no room for text")
    title = _title_line(table)
    title_tokens = count_tokens(title) - overhead
    if title_tokens > budget // 4:
        title = _cut_to_tokens(title, budget // 4, count_tokens, overhead)
        title_tokens = count_tokens(title) - overhead
    row_budget = budget - title_tokens

    lines = [_row_line(table.header, r) for r in table.rows]
    costs = [count_tokens(line) - overhead for line in lines]  # once per row; chunks sum them

    chunks: list[Chunk] = []
    i = 0
    while i < len(lines):
        j, total = i, 0
        while j < len(lines) and (j == i or total + costs[j] <= row_budget):
            total += costs[j]
            j += 1
        body = lines[i:j]
        if j == i + 1 and costs[i] > row_budget:
            body = [_cut_to_tokens(lines[i], row_budget, count_tokens, overhead)]
        text = "\n".join([title, *body])
        n = count_tokens(text)
        while n > max_tokens and j - i > 1:  # a tokenizer that is not additive over lines
            j -= 1
            body = lines[i:j]
            text = "\n".join([title, *body])
            n = count_tokens(text)
        if n > max_tokens:
            text = _cut_to_tokens(text, budget, count_tokens, overhead)
            n = count_tokens(text)
        chunks.append(Chunk(text=text, spans=(), heading=table.name, kind="table", table=name,
                            row_ids=tuple(row_ids[i:j]), n_tokens=n))
        i = j
    return chunks


def _cut_to_tokens(text: str, budget: int, count_tokens: Callable[[str], int], overhead: int) -> str:
    """The longest prefix of ``text`` (at a word end when one fits) within ``budget`` tokens."""

    def fits(end: int) -> bool:
        return count_tokens(text[:end]) - overhead <= budget

    if fits(len(text)):
        return text
    end = _last_true([m.end() for m in re.finditer(r"\S+", text)], fits)
    if end is None:  # the first word alone is too long: cut inside it
        end = _last_true(range(1, len(text) + 1), fits) or 1
    return text[:end]


def _last_true(cuts: Sequence[int], ok: Callable[[int], bool]) -> int | None:
    """Binary search for the last cut where ``ok`` holds; ``ok`` must be monotone (true, then false)."""
    lo, hi, best = 0, len(cuts) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        if ok(cuts[mid]):
            best, lo = cuts[mid], mid + 1
        else:
            hi = mid - 1
    return best
