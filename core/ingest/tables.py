"""CSV, TSV and XLSX files into ExtractedTables, and the cell-value grammar tables share.

A spreadsheet becomes one ExtractedTable per non-empty sheet (a CSV file: one table) with a
unique, non-empty header and rectangular rows of cell texts *as shown*. The same module
knows how to read those texts as numbers and dates ("$1,234.50", "(1,234)", "12%",
"15 July 2003"), because header detection here and SQL type inference in
``core.store.sqltables`` must agree on what a number looks like.
"""
from __future__ import annotations

import codecs
import csv
import datetime as dt
import io
import math
import re
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from core.errors import DamagedFile, EncryptedFile, UnsupportedFile
from core.types import ExtractedTable, ParsedDocument

__all__ = [
    "TABLE_SUFFIXES", "parse_table_file", "rows_to_table", "unique_header",
    "ColumnValues", "infer_column", "parse_number", "parse_date", "cell_kind",
]

TABLE_SUFFIXES = (".csv", ".tsv", ".xlsx", ".xlsm")

_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # Compound File: .xls, or an encrypted OOXML package
_ZIP_MAGIC = b"PK\x03\x04"
_SNIFF_CHARS = 64_000
_DELIMITERS = (",", "\t", ";", "|")


# --------------------------------------------------------------------------- file parsing


def parse_table_file(path: str | Path) -> ParsedDocument:
    """Read a .csv, .tsv or .xlsx file into a ParsedDocument whose ``tables`` are its sheets.

    Raises UnsupportedFile for other types (and old .xls workbooks), EncryptedFile for a
    password-protected workbook, DamagedFile for an empty, binary or unreadable file.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in (".xls", ".ods", ".numbers"):
        raise UnsupportedFile(str(p), f"{suffix} spreadsheets are not supported",
                              fix="open it in a spreadsheet program and save it as .xlsx")
    if suffix not in TABLE_SUFFIXES:
        raise UnsupportedFile(str(p), f"not a table file ({suffix or 'no extension'})")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise DamagedFile(str(p), f"cannot be read ({e.strerror or e})") from e
    if not data or data.isspace():
        raise DamagedFile(str(p), "is empty")
    # Trust the bytes over the name: an .xlsx saved as .csv still opens, a renamed .xls is named.
    if data.startswith(_OLE_MAGIC):
        _raise_for_ole(p, data)
    if data.startswith(_ZIP_MAGIC) or suffix in (".xlsx", ".xlsm"):
        return _parse_xlsx(p, data)
    return _parse_delimited(p, data, "\t" if suffix == ".tsv" else ",")


def _raise_for_ole(p: Path, data: bytes) -> None:
    # An encrypted .xlsx is an OLE container with an "EncryptionInfo" stream (MS-OFFCRYPTO);
    # directory entry names are UTF-16LE.
    if "EncryptionInfo".encode("utf-16-le") in data or "EncryptedPackage".encode("utf-16-le") in data:
        raise EncryptedFile(str(p), "is password-protected",
                            fix="remove the password in your spreadsheet program and add the file again")
    raise UnsupportedFile(str(p), "is an Excel 97-2003 workbook (.xls), which is not supported",
                          fix="open it in a spreadsheet program and save it as .xlsx")


def _parse_delimited(p: Path, data: bytes, default_delimiter: str) -> ParsedDocument:
    text, encoding = _decode(p, data)
    delimiter = _sniff_delimiter(text, default_delimiter)
    try:
        raw_rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))
    except csv.Error as e:
        raise DamagedFile(str(p), f"is not a readable {'TSV' if delimiter == chr(9) else 'CSV'} file ({e})") from e
    warn: list[str] = []
    table = rows_to_table(raw_rows, name=p.stem, warnings_out=warn, joiner=delimiter)
    if table is None:
        raise DamagedFile(str(p), "has no rows")
    kind = "tsv" if p.suffix.lower() == ".tsv" else "csv"
    generated = tuple(f"col{i + 1}" for i in range(len(table.header)))
    meta = {"encoding": encoding, "delimiter": delimiter, "has_header": table.header != generated}
    return ParsedDocument(path=str(p), kind=kind, tables=(table,), title=p.stem, metadata=meta,
                          warnings=tuple(f"{p.name}: {w}" for w in warn))


def _decode(p: Path, data: bytes) -> tuple[str, str]:
    """Bytes to text: BOMs first, then strict UTF-8, then cp1252, then latin-1 (never fails)."""
    if data.startswith(codecs.BOM_UTF8):
        text, enc = data[3:].decode("utf-8", errors="replace"), "utf-8-sig"
    elif data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        # Excel's "Unicode text" export is UTF-16 with a BOM
        text, enc = data.decode("utf-16", errors="replace"), "utf-16"
    else:
        if b"\x00" in data[:_SNIFF_CHARS]:
            raise DamagedFile(str(p), "is binary data, not a text table")
        for enc in ("utf-8", "cp1252"):
            try:
                text = data.decode(enc)
                break
            except UnicodeDecodeError:
                continue
        else:
            text, enc = data.decode("latin-1"), "latin-1"
    sample = text[:_SNIFF_CHARS]
    bad = sum(1 for ch in sample if (ord(ch) < 32 and ch not in "\t\n\r\f\v") or 0x7F <= ord(ch) < 0xA0
              or ch == "\ufffd")
    if "\x00" in sample or bad > max(2, len(sample) // 100):
        raise DamagedFile(str(p), "is binary data, not a text table")
    return text, enc


def _sniff_delimiter(text: str, default: str) -> str:
    """Pick the delimiter that splits the first rows into the most consistent field count."""
    sample = text[:_SNIFF_CHARS]
    if len(text) > _SNIFF_CHARS and "\n" in sample:
        sample = sample[: sample.rfind("\n")]  # never judge a half row
    best, best_score = default, (0.0, 0, 0)
    for d in (default,) + tuple(x for x in _DELIMITERS if x != default):
        if d not in sample:
            continue
        try:
            rows = [r for r in csv.reader(io.StringIO(sample, newline=""), delimiter=d) if any(c.strip() for c in r)]
        except csv.Error:
            continue
        rows = rows[:200]
        if not rows:
            continue
        width, freq = Counter(len(r) for r in rows).most_common(1)[0]
        if width < 2:
            continue
        consistency = round(freq / len(rows), 2)
        # a comma that only ever sits between digits is a decimal comma, not a separator
        decimal_only = d == "," and len(re.findall(r"\d,\d", sample)) == sample.count(",")
        score = (consistency, 0 if decimal_only else 1, width)
        if score > best_score:
            best, best_score = d, score
    return best


def _parse_xlsx(p: Path, data: bytes) -> ParsedDocument:
    try:
        import openpyxl
    except ImportError as e:  # pragma: no cover - a broken install, not a user error
        raise UnsupportedFile(str(p), "reading .xlsx needs the openpyxl package", fix="pip install openpyxl") from e
    tables: list[ExtractedTable] = []
    warn: list[str] = []
    sheets: list[str] = []
    wb = None
    try:
        with warnings.catch_warnings():
            # openpyxl warns about features it drops (data validation, default styles): not the user's problem
            warnings.filterwarnings("ignore", category=UserWarning, module=r"openpyxl(\..*)?")
            wb = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
            for ws in wb.worksheets:
                sheets.append(ws.title)
                ws.reset_dimensions()  # stored dimensions are often wrong; read what is really there
                rows = [[_xlsx_cell_text(c) for c in row] for row in ws.iter_rows()]
                sheet_warn: list[str] = []
                t = rows_to_table(rows, name=ws.title, sheet=ws.title, warnings_out=sheet_warn, joiner=" ")
                warn.extend(f"sheet {ws.title!r}: {w}" for w in sheet_warn)
                if t is not None:
                    tables.append(t)
    except Exception as e:  # openpyxl raises many types for a broken package (BadZipFile, KeyError, XML errors)
        raise DamagedFile(str(p), f"cannot be read as an .xlsx workbook ({type(e).__name__}: {e})") from e
    finally:
        if wb is not None:
            wb.close()
    if not tables:
        raise DamagedFile(str(p), "has no rows in any sheet")
    return ParsedDocument(path=str(p), kind="xlsx", tables=tuple(tables), title=p.stem,
                          metadata={"sheets": sheets}, warnings=tuple(f"{p.name}: {w}" for w in warn))


def _xlsx_cell_text(cell) -> str:
    """A cell's value as a person sees it: ints without ".0", dates ISO, percents with %."""
    v = cell.value
    if v is None:
        return ""
    if isinstance(v, bool):
        return "TRUE" if v else "FALSE"
    if isinstance(v, dt.datetime):
        if v.time() == dt.time(0):
            return v.date().isoformat()
        return v.isoformat(sep=" ", timespec="seconds")
    if isinstance(v, (dt.date, dt.time)):
        return v.isoformat()
    if isinstance(v, dt.timedelta):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        fmt = getattr(cell, "number_format", None) or ""
        if "%" in fmt and math.isfinite(v):
            return _format_number(v * 100) + "%"
        return _format_number(v)
    return str(v).strip()


def _format_number(v: float) -> str:
    if not math.isfinite(v):
        return str(v)
    if v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return f"{v:.15g}"  # drops binary noise: 0.1 + 0.2 shows as 0.3, as Excel shows it


# --------------------------------------------------------------------------- rows → table


def rows_to_table(rows: Iterable[Sequence[str]], *, name: str, sheet: str | None = None,
                  warnings_out: list[str] | None = None, joiner: str = " ") -> ExtractedTable | None:
    """Clean raw rows into an ExtractedTable, or None when no cell has text.

    Strips cells, drops fully empty rows and columns, detects a header row (else names the
    columns col1..colN), makes header names unique and non-empty, and makes every row as
    wide as the header: short rows are padded; cells beyond the header are joined (with
    ``joiner``) onto the last cell so no text is lost, and a warning says so.
    """
    cleaned = [[_clean_cell(c) for c in r] for r in rows]
    cleaned = [r for r in cleaned if any(r)]
    if not cleaned:
        return None
    width = max(len(r) for r in cleaned)
    keep = [j for j in range(width) if any(j < len(r) and r[j] for r in cleaned)]
    if len(keep) < width:
        cleaned = [[r[j] if j < len(r) else "" for j in keep] for r in cleaned]
    # trailing empties do not make a row longer than it is
    for r in cleaned:
        while r and not r[-1]:
            r.pop()

    if _looks_like_header(cleaned[0], cleaned[1:]):
        head, body = cleaned[0], cleaned[1:]
        widths = Counter(len(r) for r in body)
        common = widths.most_common(1)[0][0] if body else len(head)
        if common == len(head) + 1 and widths[common] == len(body):
            head = [""] + head  # R's write.csv leaves the row-name column unnamed and unlisted
        n = max(len(head), common) if body else len(head)
    else:
        head, body = [], cleaned
        n = max(len(r) for r in body)
    header = unique_header(head + [""] * (n - len(head)))

    out: list[tuple[str, ...]] = []
    long_rows = 0
    for r in body:
        if len(r) > n:
            long_rows += 1
            r = r[: n - 1] + [joiner.join(c for c in r[n - 1:] if c)]
        out.append(tuple(r) + ("",) * (n - len(r)))
    if long_rows and warnings_out is not None:
        warnings_out.append(f"{long_rows} row(s) had more cells than the header; the extra cells were "
                            "joined into the last column")
    return ExtractedTable(name=name, header=header, rows=tuple(out), sheet=sheet)


def _clean_cell(c: object) -> str:
    s = "" if c is None else str(c)
    return " ".join(s.split()) if ("\n" in s or "\r" in s or "\t" in s) else s.strip()


def unique_header(names: Sequence[str]) -> tuple[str, ...]:
    """Header names made non-empty (``colN``) and unique (``Name``, ``Name_2``)."""
    seen: set[str] = set()
    out: list[str] = []
    for j, raw in enumerate(names):
        base = " ".join(str(raw).split()) or f"col{j + 1}"
        cand, k = base, 2
        while cand.casefold() in seen:
            cand, k = f"{base}_{k}", k + 1
        seen.add(cand.casefold())
        out.append(cand)
    return tuple(out)


def _looks_like_header(first: Sequence[str], rest: Sequence[Sequence[str]]) -> bool:
    """Vote per column: a text cell above numbers/dates says header; a number above numbers says data."""
    if not rest:
        return False  # one row: treat it as data rather than a table with no rows
    sample = rest[:200]
    score = 0
    for j, h in enumerate(first):
        if not h:
            continue
        col = [r[j] for r in sample if j < len(r) and r[j]]
        if not col:
            continue
        kinds = Counter(cell_kind(v) for v in col)
        typed = (kinds["number"] + kinds["date"]) / len(col)
        hk = cell_kind(h)
        if hk == "text":
            if typed >= 0.8:
                score += 2
            elif h in set(col):
                score -= 1
            elif len(col) >= 3 and len({len(v) for v in col}) == 1 and len(h) != len(col[0]):
                score += 1  # codes of one fixed width under a title of another width
        elif typed >= 0.8:
            # a year heading a column of amounts is a header (financial tables); a number
            # heading a column of similar numbers is just the first data row
            y = parse_number(h)
            years = all(isinstance(parse_number(v), int) and 1800 <= parse_number(v) <= 2100 for v in col)
            score += 1 if (isinstance(y, int) and 1800 <= y <= 2100 and not years) else -1
        else:
            score += 1  # a number or date above text cells
    nonempty = [h for h in first if h]
    if len(set(nonempty)) < len(nonempty):
        score -= 1  # repeated values are more often data than column names
    if score != 0:
        return score > 0
    # No evidence either way (all-text tables): most files with named columns have a header.
    # The top-left corner cell is often blank (an index column), the others are not.
    named = first[1:] if len(first) > 1 else first
    return bool(named) and all(named) and all(cell_kind(h) == "text" for h in first if h)


# --------------------------------------------------------------------------- cell values

_NULLS = frozenset({"", "-", "--", "—", "–", "n/a", "na", "n.a.", "null", "none", "nan", "#n/a", "..."})
_CURRENCY = "$€£¥₹₩₽"
_CODES = "USD|EUR|GBP|JPY|CNY|RMB|CHF|CAD|AUD|INR"
_CURRENCY_CODE = re.compile(rf"^(?:{_CODES})\s*|\s*(?:{_CODES})$")
_SPACES = {ord(c): " " for c in "\u00a0\u2009\u202f\u2007"}
_SPACE_GROUPS = re.compile(r"^\d{1,3}(?: \d{3})+(?:[.,]\d+)?$")  # "12 345" (French, SI)
_LEADING_ZERO = re.compile(r"^0\d+$")
_NUM_PLAIN = re.compile(r"^(\d+)(?:\.(\d+))?(?:[eE]([-+]?\d+))?$|^\.(\d+)$")
_NUM_US = re.compile(r"^(\d{1,3}(?:,\d{3})+)(?:\.(\d+))?$")
_NUM_EU = re.compile(r"^(\d{1,3}(?:\.\d{3})+)(?:,(\d+))?$|^(\d+),(\d+)$")


def parse_number(text: str, *, decimal_comma: bool = False) -> int | float | None:
    """A cell as a number, or None. Understands "1,234", "$1,234.50", "12%", "(1,234)", "−5", "1e3".

    ``decimal_comma`` reads "1.234,5" and "12,5" the European way. Percent cells keep their
    shown value ("12%" → 12). Integers with leading zeros ("007") are identifiers, not numbers.
    """
    s = text.strip()
    if not s or len(s) > 40:
        return None
    s = s.replace("\u2212", "-").translate(_SPACES)
    if s.endswith("%"):  # "(48.3)%" as well as "48.3%"
        s = s[:-1].rstrip()
    neg = False
    if s.startswith("(") and s.endswith(")"):
        neg, s = True, s[1:-1].strip()
    if s[:1] in ("-", "+"):
        neg, s = neg or s[0] == "-", s[1:].strip()
    if s and s[0] in _CURRENCY:
        s = s[1:].strip()
    elif s and s[-1] in _CURRENCY:
        s = s[:-1].strip()
    else:
        s = _CURRENCY_CODE.sub("", s)
    if s.startswith("(") and s.endswith(")"):  # $(1,234)
        neg, s = True, s[1:-1].strip()
    if s[:1] in ("-", "+"):  # $-1,234
        neg, s = neg or s[0] == "-", s[1:].strip()
    if s.endswith("%"):
        s = s[:-1].rstrip()
    if _SPACE_GROUPS.match(s):
        s = s.replace(" ", "")
    if not s or not (s[0].isdigit() or s[0] == "."):
        return None
    value: int | float
    m = _NUM_PLAIN.match(s)
    if m and decimal_comma and m.group(2) and len(m.group(2)) == 3 and not m.group(3):
        m = None  # "1.234" with decimal commas is one thousand two hundred thirty-four
    if m:
        whole, frac, exp, bare = m.groups()
        if bare is not None:
            value = float("0." + bare)
        elif frac is None and exp is None:
            if len(whole) > 1 and whole[0] == "0":
                return None
            if len(whole) > 18:
                return None  # beyond int64: an identifier
            value = int(whole)
        else:
            value = float(s)
    else:
        m = (_NUM_EU if decimal_comma else _NUM_US).match(s)
        if not m:
            return None
        if decimal_comma:
            g = m.groups()
            whole, frac = (g[0].replace(".", ""), g[1]) if g[0] else (g[2], g[3])
        else:
            whole, frac = m.group(1).replace(",", ""), m.group(2)
        value = float(f"{whole}.{frac}") if frac is not None else int(whole)
    return -value if neg else value


_MONTHS = {m: i + 1 for i, names in enumerate((
    "jan january", "feb february", "mar march", "apr april", "may", "jun june", "jul july",
    "aug august", "sep sept september", "oct october", "nov november", "dec december"))
    for m in names.split()}
_DATE_ISO = re.compile(r"^(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})(?:[T ](\d{1,2}):(\d{2})(?::(\d{2})(?:\.\d+)?)?)?$")
_DATE_NUM = re.compile(r"^(\d{1,2})([/.-])(\d{1,2})\2(\d{4})$")
_DATE_DMY = re.compile(r"^(\d{1,2})(?:st|nd|rd|th)?[ -]([A-Za-z]{3,9})\.?,?[ -](\d{4})$")
_DATE_MDY = re.compile(r"^([A-Za-z]{3,9})\.? (\d{1,2})(?:st|nd|rd|th)?,? (\d{4})$")
_DATE_MY = re.compile(r"^([A-Za-z]{3,9})\.?,? (\d{4})$")
_YEAR = re.compile(r"^[12]\d{3}$")


def parse_date(text: str, *, day_first: bool | None = None) -> str | None:
    """A cell as an ISO date ("2003-07-15" or "2003-07-15 10:30:00"), or None.

    Month names are matched in English by hand, not with strptime, whose %B follows the
    process locale (which Qt changes). ``day_first`` settles "03/04/2005"; None means
    "day first when the separator is a dot, else month first".
    """
    s = text.strip()
    if not (7 <= len(s) <= 30) or not s[0].isalnum():
        return None
    try:
        if m := _DATE_ISO.match(s):
            y, mo, d, hh, mm, ss = m.groups()
            if hh is None:
                return dt.date(int(y), int(mo), int(d)).isoformat()
            return dt.datetime(int(y), int(mo), int(d), int(hh), int(mm), int(ss or 0)).isoformat(sep=" ")
        if m := _DATE_NUM.match(s):
            a, sep, b, y = m.groups()
            first = day_first if day_first is not None else sep == "."
            d, mo = (a, b) if first else (b, a)
            return dt.date(int(y), int(mo), int(d)).isoformat()
        if m := _DATE_DMY.match(s):
            d, name, y = m.groups()
            mo = _MONTHS.get(name.lower())
            return dt.date(int(y), mo, int(d)).isoformat() if mo else None
        if m := _DATE_MDY.match(s):
            name, d, y = m.groups()
            mo = _MONTHS.get(name.lower())
            return dt.date(int(y), mo, int(d)).isoformat() if mo else None
        if m := _DATE_MY.match(s):  # "March 2000": a month, written as ISO "2000-03"
            name, y = m.groups()
            mo = _MONTHS.get(name.lower())
            return f"{int(y):04d}-{mo:02d}" if mo else None
    except ValueError:
        return None
    return None


def cell_kind(text: str) -> str:
    """``empty``, ``number``, ``date`` or ``text`` — used to tell a header row from data."""
    s = text.strip()
    if s.lower() in _NULLS:
        return "empty"
    if parse_number(s) is not None or parse_number(s, decimal_comma=True) is not None:
        return "number"
    if parse_date(s) is not None:
        return "date"
    return "text"


@dataclass(frozen=True)
class ColumnValues:
    """A column's inferred SQL type and its cells converted to that type (None for empty cells)."""

    type: str
    """``INTEGER``, ``REAL``, ``DATE`` (ISO text) or ``TEXT``."""
    values: tuple[int | float | str | None, ...]


def infer_column(cells: Sequence[str]) -> ColumnValues:
    """The narrowest type the column's cells fit: INTEGER, REAL, DATE, else TEXT.

    Empty markers ("", "-", "—", "n/a") become NULL and do not vote. A few odd cells (at
    most one in ten, e.g. "Bye" in an attendance column) do not stop a column from being
    numeric; they become NULL in the typed column (their text stays in the raw row), since
    a stray string would corrupt MAX/AVG. The number convention (1,234.5 vs 1.234,5) and
    the date order (D/M vs M/D) are decided for the whole column. In a date column, bare
    years ("1998") and months ("March 2000") stay ISO prefixes ("1998", "2000-03"), which
    still sort and compare correctly as text.
    """
    stripped = [c.strip() for c in cells]
    is_null = [c.lower() in _NULLS for c in stripped]
    present = [c for c, n in zip(stripped, is_null) if not n]
    if not present:
        return ColumnValues("TEXT", tuple(c or None for c in stripped))

    def tolerable(bad: int) -> bool:
        return bad == 0 or (len(present) >= 4 and bad <= max(1, len(present) // 10))

    # "02134" anywhere marks a column of codes (zip, account numbers) that must keep its zeros
    numeric = not any(_LEADING_ZERO.match(c) for c in present)
    for decimal_comma in ((False, True) if numeric else ()):
        conv = [None if n else parse_number(c, decimal_comma=decimal_comma) for c, n in zip(stripped, is_null)]
        nums = [v for v in conv if v is not None]
        if nums and tolerable(len(present) - len(nums)):
            if all(isinstance(v, int) for v in nums):
                return ColumnValues("INTEGER", tuple(conv))
            return ColumnValues("REAL", tuple(None if v is None else float(v) for v in conv))

    day_first = _day_first(present)
    dates = [None if n else parse_date(c, day_first=day_first) for c, n in zip(stripped, is_null)]
    if any(d is not None for d in dates):
        dates = [d if d is not None or n or not _YEAR.match(c) else c for d, c, n in zip(dates, stripped, is_null)]
        if tolerable(sum(d is None for d in dates) - sum(is_null)):
            return ColumnValues("DATE", tuple(dates))
    return ColumnValues("TEXT", tuple(c or None for c in stripped))


def _day_first(cells: Sequence[str]) -> bool | None:
    firsts, seconds, dots = [], [], False
    for c in cells:
        if m := _DATE_NUM.match(c):
            firsts.append(int(m.group(1)))
            seconds.append(int(m.group(3)))
            dots = dots or m.group(2) == "."
    if not firsts:
        return None
    if max(firsts) > 12:
        return True
    if max(seconds) > 12:
        return False
    return dots
