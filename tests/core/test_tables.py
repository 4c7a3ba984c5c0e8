"""CSV/TSV/XLSX parsing, SQL tables with inferred types, and table chunks — on real tables where possible."""
from __future__ import annotations

import codecs
import csv
import datetime as dt
import json
import pathlib
import random
import re

import pytest
import sqlite_utils

from core.errors import DamagedFile, EncryptedFile, UnsupportedFile
from core.ingest.tables import infer_column, parse_date, parse_number, parse_table_file
from core.store.sqltables import (
    CATALOGUE, RAW_COLUMN, RECTS_COLUMN, ROW_ID, create_sql_table, drop_sql_tables, list_sql_tables, raw_rows,
    sql_identifier, table_chunks,
)
from core.types import ExtractedTable

IDENT = re.compile(r"^[^\W\d]\w*$")


@pytest.fixture
def db():
    d = sqlite_utils.Database(memory=True)
    yield d
    d.close()



@pytest.fixture(scope="module")
def wtq_files(eval_dir):
    files = sorted((eval_dir / "tables" / "wtq" / "csv").glob("*/*.csv"))
    assert len(files) >= 100
    return files


def _expected_header(first_row):
    seen, out = set(), []
    for j, h in enumerate(first_row):
        base = " ".join(h.split()) or f"col{j + 1}"
        name, k = base, 2
        while name.casefold() in seen:
            name, k = f"{base}_{k}", k + 1
        seen.add(name.casefold())
        out.append(name)
    return tuple(out)


# --------------------------------------------------------------------------- real CSVs


def test_every_wtq_csv_parses_with_its_header(wtq_files):
    misread = []
    for f in wtq_files:
        doc = parse_table_file(f)
        assert doc.kind == "csv" and len(doc.tables) == 1
        t = doc.tables[0]
        assert t.name == f.stem and t.sheet is None
        with open(f, newline="", encoding="utf-8") as fh:
            raw = [r for r in csv.reader(fh) if any(c.strip() for c in r)]
        if t.header != _expected_header(raw[0]):
            misread.append(f"{f.parent.name}/{f.name}")
            continue
        assert len(t.rows) == len(raw) - 1
        assert all(len(r) == len(t.header) for r in t.rows)
        assert t.rows[0][0] == raw[1][0].strip() or not raw[1][0].strip()
    # 204-csv/18.csv is a grid of years under a row of years ("2010s", "2010", "2011", ...):
    # nothing in the cells tells a header from data, and it is read as data (col1..colN).
    assert set(misread) <= {"204-csv/18.csv"}, misread


def test_every_wtq_table_becomes_a_queryable_sql_table(wtq_files, db):
    for doc_id, f in enumerate(wtq_files, 1):
        t = parse_table_file(f).tables[0]
        sql = create_sql_table(db, t, doc_id=doc_id)
        assert sql.name.startswith(f"t_{doc_id}_") and IDENT.match(sql.name)
        assert all(IDENT.match(c) for c in sql.columns)
        assert len({c.casefold() for c in sql.columns}) == len(sql.columns)
        assert db.execute(f'SELECT COUNT(*) FROM "{sql.name}"').fetchone()[0] == len(t.rows)
        assert sql.row_ids == tuple(range(1, len(t.rows) + 1))
    assert db.execute(f"SELECT COUNT(*) FROM {CATALOGUE}").fetchone()[0] == len(wtq_files)


def test_wtq_numbers_with_thousands_separators_and_odd_cells(eval_dir, db):
    # 1998 NFL season: Attendance "74,745" with a "Bye" week; Date "September 7, 1998"
    f = eval_dir / "tables" / "wtq" / "csv" / "203-csv" / "114.csv"
    t = parse_table_file(f).tables[0]
    sql = create_sql_table(db, t, doc_id=7)
    types = dict(zip(t.header, sql.types))
    cols = dict(zip(t.header, sql.columns))
    assert types["Attendance"] == "INTEGER" and cols["Attendance"] == "attendance"
    assert types["Date"] == "DATE" and types["Week"] == "INTEGER"

    with open(f, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    expected = sum(int(r["Attendance"].replace(",", "")) for r in rows if r["Attendance"].replace(",", "").isdigit())
    assert db.execute(f'SELECT SUM(attendance) FROM "{sql.name}"').fetchone()[0] == expected
    assert db.execute(f'SELECT date FROM "{sql.name}" WHERE {ROW_ID} = 1').fetchone()[0] == "1998-09-07"
    # the bye week is NULL in the typed column, and its text is still there as shown
    bye = [i + 1 for i, r in enumerate(rows) if r["Attendance"] == "Bye"]
    assert bye and db.execute(f'SELECT attendance FROM "{sql.name}" WHERE {ROW_ID} = ?', bye).fetchone()[0] is None
    assert raw_rows(db, sql.name, bye)[bye[0]][t.header.index("Attendance")] == "Bye"
    # "first / last row" questions can use the row order
    first_opp = db.execute(f'SELECT opponent FROM "{sql.name}" ORDER BY {ROW_ID} LIMIT 1').fetchone()[0]
    assert first_opp == rows[0]["Opponent"]


_MONEY = re.compile(r"^(\()?\s*(-)?\s*\$?\s*(\()?\s*(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?\s*(\))?\s*(%)?$")


def _independent_money(s: str):
    m = _MONEY.match(s)
    whole, frac = m.group(4).replace(",", ""), m.group(5)
    v = float(whole + (frac or ""))
    neg = bool(m.group(1) or m.group(3) or m.group(2))
    return -v if neg else v


def test_tatqa_financial_cells_become_numbers(eval_dir, db):
    data = json.loads((eval_dir / "tables" / "tatqa" / "tatqa_dataset_dev.json").read_text())
    numeric_cols = negatives = 0
    for k, ctx in enumerate(data):
        grid = ctx["table"]["table"]
        width = max(len(r) for r in grid)
        grid = [list(r) + [""] * (width - len(r)) for r in grid]
        header, body = grid[0], grid[1:]
        # drop the extra header rows ("2019", "(in millions)") that sit above the amounts
        body = [r for r in body if any(_MONEY.match(c.strip()) for c in r[1:] if c.strip())]
        if not body:
            continue
        t = ExtractedTable(name=f"tatqa {k}", header=tuple(header), rows=tuple(tuple(r) for r in body), page=1)
        sql = create_sql_table(db, t, doc_id=k + 1)
        for j in range(1, width):
            cells = [r[j].strip() for r in body]
            present = [c for c in cells if c not in ("", "-", "—", "–")]
            if not present or not all(_MONEY.match(c) for c in present):
                continue
            numeric_cols += 1
            assert sql.types[j] in ("INTEGER", "REAL"), (k, header[j], present)
            got = [r[0] for r in db.execute(f'SELECT "{sql.columns[j]}" FROM "{sql.name}" ORDER BY {ROW_ID}')]
            for cell, value in zip(cells, got):
                if cell in present:
                    assert value == pytest.approx(_independent_money(cell)), (k, cell, value)
                    negatives += cell.startswith("(")
                else:
                    assert value is None
    assert numeric_cols > 300 and negatives > 20


# --------------------------------------------------------------------------- written files


def _write_xlsx(path: pathlib.Path) -> None:
    import openpyxl

    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "Sales"
    ws.append(["Region", "Day", "Units", "Revenue", "Share"])
    ws.append(["North", dt.datetime(2024, 1, 15), 12, 1234.5, 0.25])
    ws.append([None, None, None, None, None])  # a blank row in the middle
    ws.append(["South", dt.datetime(2024, 2, 1, 9, 30), 30, 99.25, 0.5])
    ws.append(["East", dt.date(2024, 3, 3), 8.0, 0.1 + 0.2, 0.25])
    for row in ws.iter_rows(min_row=2, min_col=5, max_col=5):
        row[0].number_format = "0%"
    costs = wb.create_sheet("Costs 2024")
    costs.append([None, None, None])  # an empty first row and column around the table
    costs.append([None, "Item", "Cost"])
    costs.append([None, "Rent", 1000])
    costs.append([None, "Power", 250])
    costs.append([None, "Rent", 1000])
    wb.create_sheet("Empty")
    wb.save(path)


def test_xlsx_two_sheets_become_two_queryable_tables(tmp_path, db):
    path = tmp_path / "budget.xlsx"
    _write_xlsx(path)
    doc = parse_table_file(path)
    assert doc.kind == "xlsx" and doc.title == "budget"
    assert [t.name for t in doc.tables] == ["Sales", "Costs 2024"]
    assert [t.sheet for t in doc.tables] == ["Sales", "Costs 2024"]
    sales, costs = doc.tables
    assert sales.header == ("Region", "Day", "Units", "Revenue", "Share")
    assert sales.rows == (
        ("North", "2024-01-15", "12", "1234.5", "25%"),
        ("South", "2024-02-01 09:30:00", "30", "99.25", "50%"),
        ("East", "2024-03-03", "8", "0.3", "25%"),
    )
    assert costs.header == ("Item", "Cost") and len(costs.rows) == 3

    s = create_sql_table(db, sales, doc_id=3)
    c = create_sql_table(db, costs, doc_id=3)
    assert s.name == "t_3_sales" and c.name == "t_3_costs_2024"
    assert s.columns == ("region", "day", "units", "revenue", "share")
    assert s.types == ("TEXT", "DATE", "INTEGER", "REAL", "INTEGER")
    assert s.sheet == "Sales"
    assert db.execute(f"SELECT SUM(units), SUM(revenue) FROM {s.name}").fetchone() == (50, pytest.approx(1334.05))
    assert db.execute(f"SELECT SUM(cost) FROM {c.name} WHERE item = 'Rent'").fetchone()[0] == 2000
    assert db.execute(f"SELECT region FROM {s.name} WHERE day >= '2024-02-01' ORDER BY day").fetchall() == [
        ("South",), ("East",)]
    assert db.execute(f"SELECT typeof(day), typeof(units) FROM {s.name} LIMIT 1").fetchone() == ("text", "integer")

    cat = {r["name"]: r for r in db.query(f"SELECT * FROM {CATALOGUE}")}
    assert cat[s.name]["sheet"] == "Sales" and cat[s.name]["n_rows"] == 3
    assert json.loads(cat[s.name]["types"]) == list(s.types)
    assert json.loads(cat[c.name]["header"]) == ["Item", "Cost"]
    assert [t.name for t in list_sql_tables(db, 3)] == [s.name, c.name]
    assert list_sql_tables(db, 3)[0] == s

    assert sorted(drop_sql_tables(db, 3)) == sorted([s.name, c.name])
    assert not {s.name, c.name} & set(db.table_names())
    assert list_sql_tables(db, 3) == []


def test_csv_with_bom_semicolons_decimal_commas_and_no_header(tmp_path, db):
    path = tmp_path / "people.csv"
    path.write_bytes(codecs.BOM_UTF8 + "Ana;30;1.234,50\r\nBen;25;99,00\r\nCléo;41;12,5\r\n".encode())
    doc = parse_table_file(path)
    t = doc.tables[0]
    assert doc.metadata["delimiter"] == ";" and doc.metadata["encoding"] == "utf-8-sig"
    assert t.header == ("col1", "col2", "col3")
    assert t.rows == (("Ana", "30", "1.234,50"), ("Ben", "25", "99,00"), ("Cléo", "41", "12,5"))
    sql = create_sql_table(db, t, doc_id=1)
    assert sql.types == ("TEXT", "INTEGER", "REAL")
    assert db.execute(f"SELECT SUM(col2), SUM(col3) FROM {sql.name}").fetchone() == (96, pytest.approx(1346.0))


def test_ragged_csv_is_padded_and_keeps_extra_cells(tmp_path):
    path = tmp_path / "ragged.csv"
    path.write_text("a,b,c\n1,2\n3,4,5,6\n\n7,8,9,,\n,,\n")
    doc = parse_table_file(path)
    t = doc.tables[0]
    assert t.header == ("a", "b", "c")
    assert t.rows == (("1", "2", ""), ("3", "4", "5,6"), ("7", "8", "9"))
    assert any("joined into the last column" in w for w in doc.warnings)


def test_header_names_made_unique_and_non_empty(tmp_path):
    path = tmp_path / "dups.csv"
    path.write_text("Name,,Name,Score,name\nx,1,y,3,a\nw,2,v,4,b\n")
    assert parse_table_file(path).tables[0].header == ("Name", "col2", "Name_2", "Score", "name_3")


def test_cp1252_and_utf16_text(tmp_path):
    p1 = tmp_path / "prices.csv"
    p1.write_bytes("Item,Price\nCafé,€5\nThé,€3\n".encode("cp1252"))
    d1 = parse_table_file(p1)
    assert d1.metadata["encoding"] == "cp1252" and d1.tables[0].rows == (("Café", "€5"), ("Thé", "€3"))
    assert infer_column(["€5", "€3"]).values == (5, 3)
    p2 = tmp_path / "export.tsv"
    p2.write_bytes("Name\tScore\nÅsa\t7\nBo\t9\n".encode("utf-16"))
    d2 = parse_table_file(p2)
    assert d2.kind == "tsv" and d2.tables[0].header == ("Name", "Score") and d2.tables[0].rows[0] == ("Åsa", "7")


def test_garbage_and_empty_files_are_damaged_and_named(tmp_path):
    junk = tmp_path / "junk.csv"
    junk.write_bytes(random.Random(0).randbytes(4096))
    with pytest.raises(DamagedFile) as e:
        parse_table_file(junk)
    assert str(junk) in str(e.value) and "binary" in str(e.value)

    controls = tmp_path / "controls.csv"  # no NUL byte, but nothing like text either
    controls.write_bytes(bytes(random.Random(1).choice(range(1, 9)) for _ in range(2000)))
    with pytest.raises(DamagedFile):
        parse_table_file(controls)

    for name, data in (("empty.csv", b""), ("blank.tsv", b" \n\r\n"), ("commas.csv", b",,,\n,,\n")):
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(DamagedFile) as e:
            parse_table_file(p)
        assert str(p) in str(e.value)


def test_broken_encrypted_and_foreign_workbooks(tmp_path):
    good = tmp_path / "good.xlsx"
    _write_xlsx(good)
    cut = tmp_path / "cut.xlsx"
    cut.write_bytes(good.read_bytes()[:3000])
    with pytest.raises(DamagedFile) as e:
        parse_table_file(cut)
    assert str(cut) in str(e.value)

    text = tmp_path / "text.xlsx"
    text.write_text("a,b\n1,2\n")
    with pytest.raises(DamagedFile):
        parse_table_file(text)

    # An encrypted OOXML file is an OLE compound file with an EncryptionInfo stream; only the
    # signature and the directory entry name matter to the check.
    ole = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(504)
    locked = tmp_path / "locked.xlsx"
    locked.write_bytes(ole + "EncryptionInfo".encode("utf-16-le") + bytes(64))
    with pytest.raises(EncryptedFile) as e:
        parse_table_file(locked)
    assert str(locked) in str(e.value) and e.value.fix

    old = tmp_path / "old.xlsx"
    old.write_bytes(ole + "Workbook".encode("utf-16-le") + bytes(64))
    with pytest.raises(UnsupportedFile):
        parse_table_file(old)
    with pytest.raises(UnsupportedFile):
        parse_table_file(tmp_path / "report.xls")
    with pytest.raises(UnsupportedFile):
        parse_table_file(tmp_path / "notes.txt")


def test_xlsx_content_under_a_csv_name_is_read_as_a_workbook(tmp_path):
    path = tmp_path / "actually.csv"
    _write_xlsx(path.with_suffix(".xlsx"))
    path.write_bytes(path.with_suffix(".xlsx").read_bytes())
    assert parse_table_file(path).kind == "xlsx"


# --------------------------------------------------------------------------- values and names


@pytest.mark.parametrize("text,value", [
    ("1,234", 1234), ("$1,234.50", 1234.5), ("$  1,452.4", 1452.4), ("(1,234)", -1234), ("$(12.5)", -12.5),
    ("12%", 12), ("-3.5%", -3.5), ("\u22125", -5), ("0.75", 0.75), (".5", 0.5), ("1e3", 1000.0),
    ("€ 99", 99), ("12 345", 12345), ("007", None), ("12a", None), ("", None), ("1,23", None), ("N/A", None),
])
def test_parse_number(text, value):
    assert parse_number(text) == value


def test_parse_number_decimal_comma():
    assert parse_number("1.234,50", decimal_comma=True) == 1234.5
    assert parse_number("12,5", decimal_comma=True) == 12.5
    assert parse_number("1.234", decimal_comma=True) == 1234


@pytest.mark.parametrize("text,iso", [
    ("2003-07-15", "2003-07-15"), ("15 July 2003", "2003-07-15"), ("July 15, 2003", "2003-07-15"),
    ("Jul 15, 2003", "2003-07-15"), ("15-Jul-2003", "2003-07-15"), ("2024-01-02 10:30", "2024-01-02 10:30:00"),
    ("31.12.2020", "2020-12-31"), ("March 2000", "2000-03"), ("31 February 2003", None), ("2003", None),
    ("Hello 15 2003", None),
])
def test_parse_date(text, iso):
    assert parse_date(text) == iso


def test_infer_column_decides_date_order_and_keeps_identifiers_text():
    assert infer_column(["03/04/2005", "25/12/2005"]).values == ("2005-04-03", "2005-12-25")
    assert infer_column(["03/04/2005", "12/25/2005"]).values == ("2005-03-04", "2005-12-25")
    assert infer_column(["02134", "10001"]).type == "TEXT"  # zip codes keep their zeros
    assert infer_column(["1", "2.5", "", "n/a"]) .values == (1.0, 2.5, None, None)
    assert infer_column(["1998", "March 2000", "15 July 2003"]).values == ("1998", "2000-03", "2003-07-15")
    assert infer_column(["a", "1", "2"]).type == "TEXT"


def test_sql_identifiers():
    t = ExtractedTable(name="Revenue & Costs: FY2019 (€m)", header=(
        "Total Sales ($m)", "2019", "select", "", "Name", "name", "%", "row_num", "Größe"), rows=())
    from core.store.sqltables import _column_names, _table_slug  # noqa: PLC0415 - internal helpers

    assert _column_names(t.header) == (
        "total_sales_m", "c_2019", "select_", "col4", "name", "name_2", "pct", "row_num_2", "größe")
    assert _table_slug(t.name) == "revenue_costs_fy2019_m"
    assert sql_identifier("   ", fallback="col1") == "col1"


def test_table_names_are_unique_and_pdf_tables_keep_cell_rects(db):
    rects = (((10.0, 20.0, 50.0, 30.0), (50.0, 20.0, 90.0, 30.0)), ((10.0, 30.0, 50.0, 40.0), None))
    t = ExtractedTable(name="p3-t1", header=("Year", "Amount"), rows=(("2019", "$1,200"), ("2018", "(300)")),
                       page=3, bbox=(10.0, 10.0, 90.0, 40.0), cell_rects=rects,
                       header_rects=((10.0, 10.0, 50.0, 20.0), (50.0, 10.0, 90.0, 20.0)))
    a = create_sql_table(db, t, doc_id=5)
    b = create_sql_table(db, t, doc_id=5)
    assert (a.name, b.name) == ("t_5_p3_t1", "t_5_p3_t1_2") and a.page == 3
    got = db.execute(f"SELECT year, amount, {RAW_COLUMN}, {RECTS_COLUMN} FROM {a.name} ORDER BY {ROW_ID}").fetchall()
    assert got[0][:3] == (2019, 1200, json.dumps(["2019", "$1,200"]))
    assert got[1][1] == -300
    assert json.loads(got[1][3]) == [[10.0, 30.0, 50.0, 40.0], None]
    cat = db.execute(f"SELECT page, bbox, header_rects FROM {CATALOGUE} WHERE name = ?", [a.name]).fetchone()
    assert cat[0] == 3 and json.loads(cat[1]) == [10.0, 10.0, 90.0, 40.0] and len(json.loads(cat[2])) == 2
    assert drop_sql_tables(db, 5) and drop_sql_tables(db, 5) == []


def test_create_inside_a_callers_transaction_rolls_back_with_it(db):
    t = ExtractedTable(name="x", header=("a",), rows=(("1",),))
    with pytest.raises(RuntimeError):
        with db.atomic():
            create_sql_table(db, t, doc_id=1)
            raise RuntimeError("caller failed later")
    assert "t_1_x" not in db.table_names()
    with pytest.raises(ValueError):
        create_sql_table(db, ExtractedTable(name="bad", header=("a", "b"), rows=(("1",),)), doc_id=1)


# --------------------------------------------------------------------------- chunks


def test_table_chunks_fit_the_budget_and_cover_every_row(wtq_files, db, count_tokens):
    for f in wtq_files[:40]:
        t = parse_table_file(f).tables[0]
        sql = create_sql_table(db, t, doc_id=1)
        for max_tokens in (64, 256):
            chunks = table_chunks(t, sql, count_tokens=count_tokens, max_tokens=max_tokens)
            assert [r for c in chunks for r in c.row_ids] == list(sql.row_ids)
            for c in chunks:
                assert c.kind == "table" and c.table == sql.name and c.spans == ()
                assert c.n_tokens == count_tokens(c.text) <= max_tokens
                assert c.text.startswith(f"Table: {t.name}")
                assert c.heading == t.name


def test_table_chunk_text_pairs_values_with_columns(eval_dir, db, count_tokens):
    t = parse_table_file(eval_dir / "tables" / "wtq" / "csv" / "204-csv" / "495.csv").tables[0]
    sql = create_sql_table(db, t, doc_id=2)
    chunks = table_chunks(t, sql, count_tokens=count_tokens)
    first = chunks[0].text.splitlines()
    assert first[0] == "Table: 495"
    assert first[1].startswith(f"{t.header[0]}: {t.rows[0][0]}; {t.header[1]}: ")


def test_chunks_can_be_made_before_the_table_is_written(eval_dir, db, count_tokens):
    t = parse_table_file(eval_dir / "tables" / "wtq" / "csv" / "203-csv" / "114.csv").tables[0]
    early = table_chunks(t, "provisional", count_tokens=count_tokens)
    sql = create_sql_table(db, t, doc_id=4)
    late = table_chunks(t, sql, count_tokens=count_tokens)
    assert [c.row_ids for c in early] == [c.row_ids for c in late]
    assert {c.table for c in early} == {"provisional"} and {c.table for c in late} == {sql.name}
    rows = raw_rows(db, sql.name, late[0].row_ids)
    assert [rows[i] for i in late[0].row_ids] == list(t.rows[:len(late[0].row_ids)])


def test_a_row_longer_than_the_budget_is_still_one_chunk(db, count_tokens):
    long = " ".join(["word"] * 800)
    t = ExtractedTable(name="notes", header=("id", "text"), rows=(("1", "short"), ("2", long), ("3", "short")))
    sql = create_sql_table(db, t, doc_id=9)
    chunks = table_chunks(t, sql, count_tokens=count_tokens, max_tokens=64)
    assert [c.row_ids for c in chunks] == [(1,), (2,), (3,)]
    assert all(c.n_tokens <= 64 for c in chunks)
    assert chunks[1].text.startswith("Table: notes\nid: 2; text: word word")
