"""WTQ-format table questions: the ported official scorer, the loader, and the TAT-QA converter."""
from __future__ import annotations

import csv
import importlib.util
import json

import pytest

from core.eval.tables import (
    DateValue, NumberValue, StringValue, TableDatasetError, check_denotation, denotation_matches, load_questions,
    normalize, rescore, tagged_value, to_value, to_value_list, tsv_unescape, tsv_unescape_list,
)
from tests.conftest import ROOT


# --------------------------------------------------------------------------- WTQ's evaluator


@pytest.mark.parametrize("raw, norm", [
    ("Derby County", "derby county"),
    ("  Derby   County. ", "derby county"),
    ("Café Müller", "cafe muller"),
    ("“quoted”", "quoted"),
    ("1–0", "1-0"),
    ("Peter Bauer[1]", "peter bauer"),
    ("Peter Bauer [citation needed]", "peter bauer"),
    ("Lazio (Italy)", "lazio"),
    ("(Italy)", "(italy)"),  # a value that is all parenthesis keeps it
    ("Gold*", "gold"),
    ("O’Neil", "o'neil"),
])
def test_normalize_as_wtq_does(raw, norm):
    assert normalize(raw) == norm


def test_values_are_numbers_dates_or_strings():
    assert isinstance(to_value("3"), NumberValue) and to_value("3").amount == 3
    assert isinstance(to_value("3.0"), NumberValue) and to_value("3.0").amount == 3  # integral: int
    assert isinstance(to_value("1987-08-15"), DateValue) and to_value("1987-08-15").ymd == (1987, 8, 15)
    assert isinstance(to_value("1987-xx-xx"), NumberValue)  # a year alone is a number
    assert isinstance(to_value("17,204"), StringValue)  # without CoreNLP's tags, as the evaluator reads it
    assert isinstance(to_value("nan"), StringValue)
    assert DateValue.parse("2001-13-01") is None and DateValue.parse("xx-xx-xx") is None


@pytest.mark.parametrize("target, predicted, ok", [
    (["Derby County"], ["derby county"], True),
    (["3"], ["3.0"], True),
    (["3"], ["3.0000001"], True),  # within 1e-6
    (["3"], ["3.01"], False),
    (["2.5"], ["2.50"], True),
    (["Iivo Niskanen", "Johan Olsson"], ["Johan Olsson", "Iivo Niskanen"], True),  # order does not matter
    (["Iivo Niskanen", "Johan Olsson"], ["Johan Olsson"], False),  # size matters
    (["a", "b"], ["a", "a"], False),  # lists are sets: {a} has one value
    (["Derby County"], ["Derby County (football club)"], True),
    (["1987"], ["1987-xx-xx"], True),
    (["17,204"], ["17,204"], True),
])
def test_denotations_match_as_wtq_scores_them(target, predicted, ok):
    assert denotation_matches(target, predicted) is ok
    assert check_denotation(to_value_list(target), to_value_list(predicted)) is ok


def test_targets_with_thousands_separators_read_as_numbers_as_tagged_targets_do():
    assert tagged_value("1,296,660") == "1296660" and tagged_value("17,204.5") == "17204.5"
    assert tagged_value("1,2") is None and tagged_value("Derby County") is None
    assert denotation_matches(["1,296,660"], ["1296660"]) and denotation_matches(["17,204"], ["17204.0"])
    assert not denotation_matches(["17,204"], ["17204"], tagged=False)  # the text alone is a string


def test_decimals_round_predictions_only_when_asked():
    assert not denotation_matches(["-12.14"], ["-12.1428571"])
    assert denotation_matches(["-12.14"], ["-12.1428571"], decimals=2)
    assert denotation_matches(["12"], ["12.004"], decimals=2)
    assert denotation_matches(["Chelsea"], ["Chelsea"], decimals=2)


def test_tsv_escapes():
    assert tsv_unescape(r"a\pb\nc\\d") == "a|b\nc\\d"
    assert tsv_unescape_list(r"x|y\pz") == ["x", "y|z"]


# --------------------------------------------------------------------------- loading


def test_loads_the_shared_wtq_questions(eval_dir):
    folder = eval_dir / "tables" / "wtq"
    qs = load_questions(folder)
    assert len(qs) == 1161
    q = next(q for q in qs if q.id == "nt-4")
    assert q.utterance == "who was the opponent in the first game of the season?"
    assert q.contexts == ("csv/204-csv/495.csv",) and q.target == ("Derby County",)
    multi = next(q for q in qs if q.id == "nt-230")
    assert len(multi.target) == 4
    assert len(load_questions(folder, limit=7)) == 7


def test_offset_skips_questions_in_file_order(eval_dir):
    folder = eval_dir / "tables" / "wtq"
    every = load_questions(folder, limit=10)
    assert [q.id for q in load_questions(folder, offset=3, limit=4)] == [q.id for q in every[3:7]]
    assert load_questions(folder, offset=1158)[-1].id == load_questions(folder)[-1].id
    assert len(load_questions(folder, offset=1158)) == 3 and load_questions(folder, offset=5000) == []
    with pytest.raises(TableDatasetError, match="must not be negative"):
        load_questions(folder, offset=-1)


def test_a_folder_without_questions_is_a_known_error(tmp_path):
    with pytest.raises(TableDatasetError, match="no questions.tsv"):
        load_questions(tmp_path)
    (tmp_path / "questions.tsv").write_text("id\tutterance\tcontext\ttargetValue\nq1\twho?\tcsv/none.csv\tx\n")
    with pytest.raises(TableDatasetError, match="names csv/none.csv"):
        load_questions(tmp_path)


# --------------------------------------------------------------------------- TAT-QA → WTQ


@pytest.fixture(scope="module")
def tatqa_convert():
    spec = importlib.util.spec_from_file_location("tatqa_to_wtq", ROOT / "bench" / "tatqa_to_wtq.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tatqa_headers_become_one_row_with_captions_apart(tatqa_convert):
    header, body, captions = tatqa_convert.split_header([
        ["", "", "Years Ended September 30,", ""], ["", "2019", "2018", "2017"],
        ["Fixed Price", "$  1,452.4", "$  1,146.2", "$  1,036.9"], ["Other", "44.1", "56.7", "70.8"]])
    assert header == ["item", "2019", "2018", "2017"] and captions == ["Years Ended September 30,"]
    assert body[1] == ["Other", "44.1", "56.7", "70.8"]
    header, _, _ = tatqa_convert.split_header([
        ["", "Domestic", "", "International", ""], ["", "September 30,", "", "September 30,", ""],
        ["", "2019", "2018", "2019", "2018"], ["Discount rate", "4.00%", "3.75%", "1.90%", "2.80%"]])
    assert header == ["item", "Domestic 2019", "Domestic 2018", "International 2019", "International 2018"]


def test_tatqa_dev_converts_to_a_folder_the_loader_reads(tatqa_convert, eval_dir, tmp_path):
    src = eval_dir / "tables" / "tatqa" / "tatqa_dataset_dev.json"
    n = tatqa_convert.convert(src, tmp_path)
    qs = load_questions(tmp_path)
    assert n == len(qs) == 1668
    data = json.loads(src.read_text(encoding="utf-8"))
    first = data[0]["questions"]
    by_id = {q.id: q for q in qs}
    arith = next(q for q in first if q["answer_type"] == "arithmetic")
    assert by_id[arith["uid"]].target == (str(arith["answer"]),)
    multi = next(q for q in first if q["answer_type"] == "multi-span")
    assert by_id[multi["uid"]].target == tuple(multi["answer"])
    q = by_id[first[0]["uid"]]
    assert q.extra["answer_from"] == first[0]["answer_from"] and len(q.contexts) == 2
    with open(tmp_path / q.contexts[0], encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["item", "2019", "2018", "2017"] and rows[-1][0] == "Total sales"


def test_tatqa_convert_keeps_only_the_evidence_kinds_asked(tatqa_convert, eval_dir, tmp_path):
    src = eval_dir / "tables" / "tatqa" / "tatqa_dataset_dev.json"
    data = json.loads(src.read_text(encoding="utf-8"))
    kinds = [q["answer_from"] for c in data for q in c["questions"]]
    n = tatqa_convert.convert(src, tmp_path / "a", answer_from={"table", "table-text"})
    qs = load_questions(tmp_path / "a")
    assert n == len(qs) == sum(k in ("table", "table-text") for k in kinds) and 0 < n < len(kinds)
    assert {q.extra["answer_from"] for q in qs} == {"table", "table-text"}
    assert tatqa_convert.convert(src, tmp_path / "b", answer_from={"table"}, every=10) == -(-kinds.count("table") // 10)
    with pytest.raises(ValueError, match="must be among"):
        tatqa_convert.convert(src, tmp_path / "c", answer_from={"tables"})


def test_rescore_scores_saved_outcomes_again():
    saved = [{"id": "a", "target": ["1,296,660"], "predicted": ["1296660"], "ms": 10.0, "attempts": 1,
              "extra": {"answer_from": "table"}},
             {"id": "b", "target": ["-12.14"], "predicted": ["-12.1428"], "ms": 30.0, "attempts": 2, "error": None,
              "extra": {"answer_from": "text"}},
             {"id": "c", "target": ["x"], "predicted": [], "ms": 20.0, "attempts": 2, "error": "failed twice",
              "extra": {"answer_from": "text"}}]
    rep = rescore(saved, dataset="d", decimals=2)
    assert (rep.n, rep.accuracy, rep.p50_ms, rep.errors, rep.retried) == (3, 2 / 3, 20.0, 1, 2)
    assert rep.by["answer_from"] == {"table": {"n": 1, "accuracy": 1.0}, "text": {"n": 2, "accuracy": 0.5}}
    assert rescore(saved, dataset="d").accuracy == 1 / 3
