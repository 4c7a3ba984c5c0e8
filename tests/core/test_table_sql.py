"""Table questions: the SQL guard, the time and row limits, provenance, and the real model end to end."""
from __future__ import annotations

import csv
import shutil

import pytest
import sqlite_utils

from core.answer.table_sql import (
    NoTables, TableResult, TableSqlError, _connect_ro, ask_table, check_names, denotation, extract_sql,
    format_answer, format_value, relaxed_queries, run_select, table_citation, table_context, validate_sql,
)
from core.errors import Cancelled
from core.ingest.tables import parse_table_file
from core.jobs import CancelToken
from core.store.sqltables import create_sql_table


@pytest.fixture(scope="module")
def wtq_games(eval_dir):
    """A real WikiTableQuestions table: Luton Town's 1987-88 league games (nt-4 asks about it)."""
    return eval_dir / "tables" / "wtq" / "csv" / "204-csv" / "495.csv"


@pytest.fixture
def kb_db(tmp_path, wtq_games):
    """A database holding the real games table (doc 1), a second catalogued table (doc 2) and one
    of Sift's own tables, which a question must never read."""
    path = tmp_path / "sift.db"
    db = sqlite_utils.Database(path)
    db.execute("CREATE TABLE documents (id INTEGER PRIMARY KEY, path TEXT)")
    db.execute("INSERT INTO documents VALUES (1, '/home/me/secret.pdf')")
    games = create_sql_table(db, parse_table_file(wtq_games).tables[0], doc_id=1, base_name="games")
    other = create_sql_table(db, parse_table_file(wtq_games).tables[0], doc_id=2, base_name="other")
    db.close()
    return path, games, other


class ScriptedLLM:
    """Replies with the queries a test gives, in turn, and keeps the prompts. ask_table does not
    care which model writes the SQL; the real model is tested at the end of this file."""

    n_ctx = 4096
    name = "scripted"

    def __init__(self, *replies: str) -> None:
        self.replies = list(replies)
        self.prompts: list[list] = []

    def count_tokens(self, text: str) -> int:
        return len(text) // 3 + 1

    def chat(self, messages, **kw) -> str:
        self.prompts.append(list(messages))
        return self.replies.pop(0)


# --------------------------------------------------------------------------- the guard


@pytest.mark.parametrize("sql, why", [
    ("DELETE FROM {t}", "only SELECT"),
    ("UPDATE {t} SET opponent = 'x'", "only SELECT"),
    ("INSERT INTO {t} (opponent) VALUES ('x')", "only SELECT"),
    ("DROP TABLE {t}", "only SELECT"),
    ("SELECT 1; DELETE FROM {t}", "one SQL statement"),
    ("SELECT opponent FROM {t}; SELECT 2;", "one SQL statement"),
    ("ATTACH DATABASE 'other.db' AS o", "only SELECT"),
    ("PRAGMA table_info({t})", "only SELECT"),
    ("SELECT * FROM pragma_table_info('{t}')", "not allowed|rejected"),
    ("WITH x AS (SELECT 1) DELETE FROM {t}", "not allowed|rejected"),
    ("SELECT * FROM documents", "not allowed: reading 'documents'"),
    ("SELECT name FROM sqlite_master", "not allowed: reading 'sqlite_master'"),
    ("SELECT * FROM sql_tables", "not allowed: reading 'sql_tables'"),
    ("SELECT opponent FROM {other}", "not allowed: reading"),
    ("SELECT opponent FROM no_such_table", "no such table"),
    ("SELECT load_extension('/tmp/x.so')", "not allowed: calling load_extension"),
    ("SELECT 'unclosed", "incomplete"),
])
def test_the_guard_refuses_anything_but_one_read_of_known_tables(kb_db, sql, why):
    path, games, other = kb_db
    conn = _connect_ro(path)
    try:
        with pytest.raises(TableSqlError, match=why):
            run_select(conn, sql.format(t=games.name, other=other.name), [games.name])
    finally:
        conn.close()
    db = sqlite_utils.Database(path)
    assert db[games.name].count == len(games.row_ids) == 40 and db["documents"].count == 1  # nothing was changed


def test_the_connection_is_read_only_even_without_the_guard(kb_db):
    path, games, _ = kb_db
    conn = _connect_ro(path)
    with pytest.raises(Exception, match="readonly|read-only|query_only"):
        conn.execute(f"DELETE FROM {games.name}")
    conn.close()


def test_validate_sql_strips_trailing_semicolons():
    assert validate_sql("  SELECT 1 ;; ") == "SELECT 1"
    assert validate_sql("WITH a AS (SELECT 1) SELECT * FROM a") .startswith("WITH")
    assert validate_sql("SELECT ';' AS semi") == "SELECT ';' AS semi"  # a semicolon inside a string is text
    with pytest.raises(TableSqlError, match="no SQL"):
        validate_sql(" ; ")


def test_the_time_limit_stops_a_slow_query(kb_db):
    path, games, _ = kb_db
    endless = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
               f"SELECT max(x) FROM c, {games.name}")
    conn = _connect_ro(path)
    with pytest.raises(TableSqlError, match="ran longer than 100 ms"):
        run_select(conn, endless, [games.name], time_limit_ms=100)
    assert run_select(conn, f"SELECT COUNT(*) FROM {games.name}", [games.name]).rows == [(40,)]  # still usable
    conn.close()


def test_cancel_stops_a_running_query(kb_db):
    path, games, _ = kb_db
    cancel = CancelToken()
    cancel.cancel()
    conn = _connect_ro(path)
    with pytest.raises(Cancelled):
        run_select(conn, f"SELECT * FROM {games.name} a, {games.name} b, {games.name} c", [games.name],
                   cancel=cancel)
    conn.close()


def test_the_row_limit_cuts_and_says_so(kb_db):
    path, games, _ = kb_db
    conn = _connect_ro(path)
    run = run_select(conn, f"SELECT opponent FROM {games.name}", [games.name], max_rows=5)
    conn.close()
    assert len(run.rows) == 5 and run.truncated


# --------------------------------------------------------------------------- extracting the query


@pytest.mark.parametrize("reply, sql", [
    ("```sql\nSELECT a FROM t WHERE b = 1;\n```", "SELECT a FROM t WHERE b = 1"),
    ("Here is the query:\n```\nSELECT a\nFROM t\n```\nIt selects a.", "SELECT a\nFROM t"),
    ("SELECT a FROM t;\nThis query returns a.", "SELECT a FROM t"),
    ("To answer this, run SELECT COUNT(*) FROM t WHERE x > 2", "SELECT COUNT(*) FROM t WHERE x > 2"),
    ("```sqlite\nWITH x AS (SELECT 1) SELECT * FROM x\n```", "WITH x AS (SELECT 1) SELECT * FROM x"),
    ("SELECT name FROM t WHERE note = 'a;b'", "SELECT name FROM t WHERE note = 'a;b'"),
])
def test_extract_sql_finds_the_query_in_a_reply(reply, sql):
    assert extract_sql(reply) == sql


# --------------------------------------------------------------------------- the prompt


def test_context_shows_schema_first_rows_and_rows_matching_the_question(kb_db):
    path, games, _ = kb_db
    ctx = table_context(path, [games], "what was the attendance against Chelsea?")
    assert f"CREATE TABLE {games.name}" in ctx.text and "attendance INTEGER" in ctx.text and "date DATE" in ctx.text
    shown = ctx.sample_rows[games.name]
    assert shown[:3] == (1, 2, 3) and 4 in shown  # row 4 is the Chelsea game
    assert "'Chelsea'" in ctx.text and "__raw" not in ctx.text


def test_context_fits_its_token_budget_by_dropping_rows_then_tables(kb_db):
    path, games, other = kb_db
    full = table_context(path, None, "what was the attendance against Chelsea?")
    assert {t.name for t in full.tables} == {games.name, other.name}
    small = table_context(path, None, "what was the attendance against Chelsea?", max_tokens=90)
    assert small.n_tokens <= 90 or len(small.tables) == 1
    assert len(small.tables) == 1 and not any(small.sample_rows.values())


def test_context_lists_the_values_of_text_columns_that_hold_few(kb_db):
    path, games, _ = kb_db
    text = table_context(path, [games], "how many home games were there?").text
    venue = next(line for line in text.splitlines() if line.strip().startswith("venue TEXT"))
    assert "values:" in venue and "'Home'" in venue and "'Away'" in venue
    opponent = next(line for line in text.splitlines() if line.strip().startswith("opponent TEXT"))
    assert "values:" not in opponent  # one value per pair of games: too many to list
    assert "values:" not in table_context(path, [games], "q", value_hints=False).text


def test_no_tables_is_a_known_error(tmp_path):
    db = sqlite_utils.Database(tmp_path / "sift.db")
    db.execute("CREATE TABLE documents (id INTEGER PRIMARY KEY)")
    db.close()
    with pytest.raises(NoTables, match="no tables"):
        ask_table(tmp_path, ScriptedLLM(), "how many games?")
    with pytest.raises(NoTables, match="no table 't_9_x'"):
        table_context(tmp_path / "sift.db", ["t_9_x"], "q")


# --------------------------------------------------------------------------- rows and cells cited


def test_a_plain_select_cites_its_row_and_shows_the_cell_as_written(kb_db):
    path, games, _ = kb_db
    llm = ScriptedLLM(f"```sql\nSELECT date FROM {games.name} ORDER BY attendance DESC LIMIT 1\n```")
    res = ask_table(path, llm, "on what date was the attendance highest?", tables=[games])
    assert res.ok and res.provenance == "rowid"
    # 26 December 1987 at Everton: 32,128 is the largest attendance in the table
    assert res.values == (("1987-12-26",),) and res.rows == (("26 December 1987",),)
    assert res.table == games.name and res.doc_id == 1 and len(res.row_ids) == 1
    assert res.cited_columns == ("date", "attendance")
    assert denotation(res) == ["26 December 1987"] and format_answer(res) == "26 December 1987"
    assert "Question: on what date" in llm.prompts[0][-1].content


def test_the_citation_carries_table_rows_columns_and_the_cells_as_written(kb_db):
    path, games, _ = kb_db
    res = ask_table(path, ScriptedLLM(f"SELECT opponent FROM {games.name} WHERE row_num = 1"), "first opponent?",
                    tables=[games])
    c = table_citation(path, res, n=2)
    assert (c.n, c.kind, c.table, c.rows, c.columns, c.doc_id) == (2, "table", games.name, (1,), ("opponent",), 1)
    assert c.text == "Opponent: Derby County" and c.page is None and c.rects == ()
    assert c.to_json()["rows"] == [1] and c.to_json()["columns"] == ["opponent"]
    assert table_citation(path, TableResult(question="q", sql="s")) is None


def test_a_lone_max_cites_the_row_holding_it(kb_db):
    path, games, _ = kb_db
    res = ask_table(path, ScriptedLLM(f"SELECT MAX(attendance) FROM {games.name}"), "highest attendance?",
                    tables=[games])
    assert res.provenance == "argmax" and res.values == ((32128,),) and res.rows == (("32,128",),)
    raw = sqlite_utils.Database(path).execute(
        f"SELECT row_num FROM {games.name} WHERE attendance = 32128").fetchall()
    assert res.row_ids == (raw[0][0],) and res.cited_columns == ("attendance",)


def test_a_count_cites_every_row_it_counted(kb_db):
    path, games, _ = kb_db
    res = ask_table(path, ScriptedLLM(f"SELECT COUNT(*) FROM {games.name} WHERE venue = 'Home'"),
                    "how many home games?", tables=[games])
    db = sqlite_utils.Database(path)
    home = [r[0] for r in db.execute(f"SELECT row_num FROM {games.name} WHERE venue = 'Home' ORDER BY 1")]
    assert res.provenance == "group" and res.values == ((len(home),),) and sorted(res.row_ids) == home
    assert res.cited_columns == ("venue",) and format_value(res.values[0][0]) == str(len(home))


def test_grouped_rows_each_cite_their_group(kb_db):
    path, games, _ = kb_db
    res = ask_table(path, ScriptedLLM(f"SELECT venue, COUNT(*) AS n FROM {games.name} GROUP BY venue ORDER BY venue"),
                    "games per venue?", tables=[games])
    assert [r[0] for r in res.rows] == ["Away", "Home"]
    assert [len(ids) for ids in res.row_map] == [r[1] for r in res.rows]
    assert res.cited_columns == ("venue",)


def test_distinct_values_are_looked_up_in_the_columns_read(kb_db):
    path, games, _ = kb_db
    res = ask_table(path, ScriptedLLM(f"SELECT DISTINCT opponent FROM {games.name} WHERE opponent LIKE 'Chel%'"),
                    "which opponent starts with Chel?", tables=[games])
    assert res.provenance == "lookup" and res.rows == (("Chelsea",),)
    db = sqlite_utils.Database(path)
    chelsea = sorted(r[0] for r in db.execute(f"SELECT row_num FROM {games.name} WHERE opponent = 'Chelsea'"))
    assert sorted(res.row_ids) == chelsea and len(chelsea) == 2  # home and away


def test_a_failed_query_is_retried_once_with_its_error(kb_db):
    path, games, _ = kb_db
    llm = ScriptedLLM(f"SELECT opponent FROM {games.name} WHERE team = 'x'",
                      f"SELECT opponent FROM {games.name} WHERE row_num = 1")
    res = ask_table(path, llm, "who was the first opponent?", tables=[games])
    assert res.ok and res.rows == (("Derby County",),) and res.row_ids == (1,)
    assert len(res.attempts) == 2 and "no such column: team" in llm.prompts[1][-1].content
    assert llm.prompts[1][-2].role == "assistant"


def test_failing_every_time_returns_the_reason_not_a_crash(kb_db):
    path, games, _ = kb_db
    res = ask_table(path, ScriptedLLM("DELETE FROM x", "SELECT nope FROM x", f"SELECT * FROM documents"), "q",
                    tables=[games])
    assert not res.ok and "not allowed: reading 'documents'" in res.error and len(res.attempts) == 3
    assert denotation(res) == [] and "could not answer" in format_answer(res)
    with pytest.raises(TableSqlError):
        res.raise_for_error()


def test_an_unknown_column_error_lists_the_real_columns(kb_db):
    path, games, _ = kb_db
    llm = ScriptedLLM(f"SELECT payout FROM {games.name}", f"SELECT opponent FROM {games.name} WHERE row_num = 1")
    res = ask_table(path, llm, "who was the first opponent?", tables=[games])
    assert res.rows == (("Derby County",),)
    retry = llm.prompts[1][-1].content
    assert "no such column: payout" in retry
    assert f"The columns of {games.name} are: row_num, date, opponent, venue, result, attendance, scorers" in retry


def test_a_quoted_name_that_is_no_column_is_caught_before_sqlite_reads_it_as_a_string(kb_db):
    path, games, _ = kb_db
    # SQLite would read "Home Team" as the string 'Home Team': no error, and no rows
    llm = ScriptedLLM(f'SELECT opponent FROM {games.name} WHERE "Home Team" = \'Home\'',
                      f"SELECT COUNT(*) FROM {games.name} WHERE venue = 'Home'")
    res = ask_table(path, llm, "how many home games?", tables=[games])
    assert 'no such column: "Home Team"' in llm.prompts[1][-1].content and res.rows == ((20,),)


def test_check_names_turns_double_quoted_values_into_strings():
    from core.store.sqltables import SqlTable

    t = SqlTable(name="t_1_g", doc_id=1, title="g", header=("City", "Home team"), columns=("city", "home_team"),
                 types=("TEXT", "TEXT"), row_ids=(1, 2))
    sql = 'SELECT "city" AS "c", "Home_Team" FROM t_1_g WHERE city = "Oslo" OR city IN ("A", \'B\') ORDER BY "c"'
    assert check_names(sql, [t]) == ('SELECT "city" AS "c", "Home_Team" FROM t_1_g WHERE city = \'Oslo\' '
                                     "OR city IN ('A', 'B') ORDER BY \"c\"")
    with pytest.raises(TableSqlError, match='no such column: "Home Team"'):
        check_names('SELECT "Home Team" FROM t_1_g', [t])
    cte = 'WITH "x" AS (SELECT city FROM t_1_g) SELECT "city" FROM "x"'
    assert check_names(cte, [t]) == cte


def test_relaxed_queries_compare_text_case_blind_then_as_a_substring():
    sql = "SELECT venue FROM t WHERE city = 'oslo' AND x != 'a' AND n = 3 AND d = '2009-01-02'"
    assert relaxed_queries(sql) == [
        "SELECT venue FROM t WHERE city LIKE 'oslo' AND x != 'a' AND n = 3 AND d = '2009-01-02'",
        "SELECT venue FROM t WHERE city LIKE '%oslo%' AND x != 'a' AND n = 3 AND d = '2009-01-02'"]
    assert relaxed_queries("SELECT a FROM t WHERE b LIKE 'Oslo'") == ["SELECT a FROM t WHERE b LIKE '%Oslo%'"]
    assert relaxed_queries("SELECT a FROM t WHERE n >= 'x' AND m = 4") == []


def test_relaxed_queries_last_drop_text_filters_the_question_does_not_mention():
    sql = "SELECT COUNT(*) FROM t WHERE station = 'Capital FM' AND genre = 'Christian'"
    assert relaxed_queries(sql, "how many christian stations are there?")[-1] == \
        "SELECT COUNT(*) FROM t WHERE 1 = 1 AND genre LIKE '%Christian%'"
    # a condition ORed, or the only one left, stays
    assert all("1 = 1" not in q for q in relaxed_queries(
        "SELECT a FROM t WHERE station = 'Capital FM' OR genre = 'Christian'", "christian stations?"))
    assert all("1 = 1" not in q for q in relaxed_queries(
        "SELECT a FROM t WHERE station = 'Capital FM' ORDER BY a", "which station?"))
    assert all("1 = 1" not in q for q in relaxed_queries(sql, "capital fm christian?"))


def test_a_lower_case_filter_that_matches_nothing_is_retried_case_blind_without_the_model(kb_db):
    path, games, _ = kb_db
    llm = ScriptedLLM(f"SELECT date FROM {games.name} WHERE opponent = 'derby county' AND venue = 'away'")
    res = ask_table(path, llm, "when did they play derby county away?", tables=[games])
    assert res.rows == (("15 August 1987",),) and len(llm.prompts) == 1 and "LIKE 'derby county'" in res.sql
    llm = ScriptedLLM(f"SELECT COUNT(*) FROM {games.name} WHERE opponent = 'chelsea'")
    res = ask_table(path, llm, "how many games against chelsea?", tables=[games])
    assert res.rows == ((2,),)  # a COUNT of 0 over a text filter is loosened too
    llm = ScriptedLLM(f"SELECT date FROM {games.name} WHERE opponent = 'derby'")
    assert ask_table(path, llm, "when did they play derby?", tables=[games]).rows[0] == ("15 August 1987",)
    # filters on text the question does not mention (copied from sample rows) are dropped last
    llm = ScriptedLLM(f"SELECT COUNT(*) FROM {games.name} WHERE opponent = 'Oxford United' AND venue = 'home' "
                      "AND scorers = 'Harford (3)'")
    res = ask_table(path, llm, "how many home games were there?", tables=[games])
    assert res.rows == ((20,),) and "venue LIKE '%home%'" in res.sql and len(llm.prompts) == 1


def test_an_empty_result_is_shown_to_the_model_once(kb_db):
    path, games, _ = kb_db
    llm = ScriptedLLM(f"SELECT date FROM {games.name} WHERE opponent = 'Arsenal Reserves'",
                      f"SELECT date FROM {games.name} WHERE row_num = 1")
    res = ask_table(path, llm, "when was the first game?", tables=[games])
    assert res.rows == (("15 August 1987",),) and len(res.attempts) == 2
    assert "returned no rows" in llm.prompts[1][-1].content
    llm = ScriptedLLM(f"SELECT date FROM {games.name} WHERE opponent = 'Arsenal Reserves'",
                      f"SELECT date FROM {games.name} WHERE opponent = 'Real Madrid'")
    res = ask_table(path, llm, "when did they play real madrid?", tables=[games])
    assert res.ok and res.rows == () and len(res.attempts) == 2 and len(llm.prompts) == 2


def test_cancel_before_the_model_answers_raises_cancelled(kb_db):
    path, games, _ = kb_db
    cancel = CancelToken()
    cancel.cancel()
    with pytest.raises(Cancelled):
        ask_table(path, ScriptedLLM("SELECT 1"), "q", tables=[games], cancel=cancel)


def test_format_value_and_answer():
    assert [format_value(v) for v in (3.0, 0.1 + 0.2, None, 7, "x", -12.600000000000001)] == \
        ["3", "0.3", "", "7", "x", "-12.6"]
    res = TableResult(question="q", sql="s", columns=("a", "b"), rows=(("x", 1), ("y", 2.5)))
    assert format_answer(res) == "x — 1; y — 2.5" and denotation(res) == ["x", "y"]
    assert format_answer(TableResult(question="q", sql="s", columns=("a",))) .startswith("No rows")


# --------------------------------------------------------------------------- the real model


@pytest.fixture(scope="module")
def games_kb(tmp_path_factory, wtq_games):
    from core.kb import KnowledgeBase

    root = tmp_path_factory.mktemp("table-kb")
    shutil.copy(wtq_games, root / "luton_1987_88.csv")
    kb = KnowledgeBase(root / "kb", device="cpu")
    rep = kb.add([root / "luton_1987_88.csv"])
    assert not rep.failed
    yield kb
    kb.close()


@pytest.mark.slow
def test_the_default_model_answers_a_table_question_citing_the_right_row(games_kb, wtq_games):
    from core.models.llm import LocalLLM
    from core.store.sqltables import list_sql_tables

    (table,) = list_sql_tables(games_kb.store.db)
    llm = LocalLLM.default(n_ctx=4096, device="cpu")
    with open(wtq_games, encoding="utf-8") as f:
        rows = list(csv.reader(f))[1:]
    crowd = [int(r[4].replace(",", "")) if r[4].replace(",", "").isdigit() else -1 for r in rows]
    top = crowd.index(max(crowd)) + 1  # 32,128 at Everton

    res = ask_table(games_kb.store, llm, "who was the opponent in the first game of the season?")
    assert res.ok, res.error
    assert denotation(res) == ["Derby County"] and res.row_ids == (1,) and res.table == table.name
    assert "opponent" in res.cited_columns

    res = ask_table(games_kb.store, llm, "what was the highest attendance of the season?")
    assert res.ok, res.error
    assert denotation(res) == [rows[top - 1][4]] and res.row_ids == (top,)  # "32,128", as written
    assert "attendance" in res.cited_columns


def test_a_pdf_table_citation_has_its_page_and_the_cited_cells_rectangles(tmp_path):
    from core.types import ExtractedTable

    db = sqlite_utils.Database(tmp_path / "sift.db")
    rects = (((10.0, 100.0, 60.0, 112.0), (70.0, 100.0, 120.0, 112.0)),
             ((10.0, 114.0, 60.0, 126.0), (70.0, 114.0, 120.0, 126.0)))
    t = create_sql_table(db, ExtractedTable(name="p3-t1", header=("Segment", "Revenue"),
                                            rows=(("Cloud", "$1,200"), ("Devices", "$800")), page=3,
                                            cell_rects=rects), doc_id=4)
    db.close()
    res = ask_table(tmp_path, ScriptedLLM(f"SELECT revenue FROM {t.name} WHERE segment = 'Devices'"),
                    "revenue of devices?")
    assert res.rows == (("$800",),) and res.row_ids == (2,) and res.cited_columns == ("revenue", "segment")
    c = table_citation(tmp_path, res)
    assert c.page == 3 and c.text == "Revenue: $800; Segment: Devices"
    assert c.rects == (rects[1][1], rects[1][0])
