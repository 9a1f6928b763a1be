import json

import pytest
from tiny import FALSE, TRUE, FirstShown, generation_records, read_sheet, write_sheet

from steerlab.data.files import DataError
from steerlab.evaluation.judges.blind import export_blind, import_ratings
from steerlab.evaluation.judges.verdicts import judge_head_to_head, summarize_head_to_head
from steerlab.records import RecordWriter, read_records

RECORDS = generation_records([TRUE] * 6, [FALSE] * 3 + [TRUE] * 3)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_export_import_unblind_round_trip(tmp_path, suffix):
    sheet, key = tmp_path / f"sheet{suffix}", tmp_path / "key.json"
    assert export_blind(RECORDS, "steered+4", sheet, key, seed=3) == 6
    rows = read_sheet(sheet)
    text = sheet.read_text()
    assert "steered" not in text and "unsteered" not in text and "q0" not in text  # blind
    assert [r["preferred"] for r in rows] == [""] * 6
    assert sorted(r["question"] for r in rows) == sorted(f"question {i}?" for i in range(6))

    for row in rows:  # a rater who always prefers the first answer shown
        row["preferred"] = "1"
    rows[0]["comment"] = "close call"
    write_sheet(sheet, rows)
    with RecordWriter(tmp_path / "verdicts.jsonl") as writer:
        verdicts = import_ratings(sheet, key, rater="ann", writer=writer)
    assert read_records(tmp_path / "verdicts.jsonl") == verdicts
    assert {v["judge"] for v in verdicts} == {"human:ann"}
    assert any(v["details"] == {"comment": "close call"} for v in verdicts)
    # the same order as a judge run with the same seed sees, and the same records apart from who
    # judged
    judged = judge_head_to_head(RECORDS, FirstShown(), "steered+4", seed=3)

    def strip(rs):
        return [{k: v for k, v in r.items() if k not in ("judge", "details")} for r in rs]

    assert strip(verdicts) == strip(judged)
    (row,) = summarize_head_to_head(verdicts)
    assert row.judge == "human:ann" and row.n == 6


def test_ties_and_second_answers(tmp_path):
    sheet, key = tmp_path / "sheet.csv", tmp_path / "key.json"
    export_blind(RECORDS, "steered+4", sheet, key)
    rows = read_sheet(sheet)
    rows[0]["preferred"], rows[1]["preferred"] = " TIE ", "2"
    for row in rows[2:]:
        row["preferred"] = "1"
    write_sheet(sheet, rows)
    verdicts = {v["item_id"]: v for v in import_ratings(sheet, key)}
    pairs = json.loads(key.read_text())["pairs"]
    tie_item = pairs[rows[0]["pair_id"]]["fields"]["item_id"]
    second = pairs[rows[1]["pair_id"]]
    assert verdicts[tie_item]["verdict"] == "tie"
    expected = "loss" if second["arm_first"] else "win"
    assert verdicts[second["fields"]["item_id"]]["verdict"] == expected


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda rows: rows[1].update(preferred="maybe"),
         r"sheet.csv:3: field 'preferred' is 'maybe'; expected 1, 2 or tie"),
        (lambda rows: rows[2].update(preferred=""), r"sheet.csv:4: field 'preferred' is ''"),
        (lambda rows: rows[0].update(pair_id="p9999"),
         r"sheet.csv:2: field 'pair_id' is 'p9999', not a pair of the key"),
        (lambda rows: rows[3].update(pair_id=rows[2]["pair_id"]),
         r"sheet.csv:5: pair p\d+ is rated twice \(first at \S*sheet.csv:4\)"),
        (lambda rows: rows.pop(), r"sheet.csv: 1 pair\(s\) not rated, e.g. p\d+"),
    ],
)
def test_bad_rows_name_file_line_and_field(tmp_path, edit, message):
    sheet, key = tmp_path / "sheet.csv", tmp_path / "key.json"
    export_blind(RECORDS, "steered+4", sheet, key)
    rows = read_sheet(sheet)
    for row in rows:
        row["preferred"] = "2"
    edit(rows)
    write_sheet(sheet, rows)
    with pytest.raises(DataError, match=message):
        import_ratings(sheet, key)


def test_raters_agreement_is_cohens_kappa_over_the_pairs_both_rated(tmp_path):
    from steerlab.analysis.run_analysis import write_analysis
    from steerlab.evaluation.judges.blind import rated_records, read_key
    from steerlab.evaluation.judges.verdicts import cohens_kappa, rater_agreement

    records = generation_records([f"steered {i}" for i in range(8)],
                                 [f"plain {i}" for i in range(8)])
    export_blind(records, "steered+4", tmp_path / "sheet.csv", tmp_path / "key.json", seed=1)
    key = read_key(tmp_path / "key.json")
    ids = sorted(key["pairs"])
    alice = ["1", "1", "2", "tie", "1", "2", "2", "1"]
    bob = ["1", "2", "2", "tie", "1", "1"]  # bob rated six of the eight
    rated = {name: rated_records(((f"{name}:{i}", {"pair_id": p, "preferred": c})
                                  for i, (p, c) in enumerate(zip(ids, choices))),
                                 key, "key.json", name, complete=False, shown=False)
             for name, choices in (("alice", alice), ("bob", bob))}
    (found,) = rater_agreement(rated["alice"] + rated["bob"])
    assert found.raters == ("human:alice", "human:bob") and found.n == 6
    shared = {r["item_id"] for r in rated["bob"]}
    first = {r["item_id"]: r["verdict"] for r in rated["alice"] if r["item_id"] in shared}
    second = {r["item_id"]: r["verdict"] for r in rated["bob"]}
    a, b = [first[i] for i in sorted(shared)], [second[i] for i in sorted(shared)]
    assert found.observed == pytest.approx(sum(x == y for x, y in zip(a, b)) / 6)
    chance = sum(a.count(c) * b.count(c) for c in set(a) | set(b)) / 36  # by hand
    assert found.kappa == pytest.approx((found.observed - chance) / (1 - chance))
    metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn is not installed")
    assert cohens_kappa(a, b) == pytest.approx(metrics.cohen_kappa_score(a, b))
    page = write_analysis(tmp_path, rated["alice"] + rated["bob"]).read_text()
    assert "Cohen's κ" in page and "human:alice / human:bob" in page
