"""Nothing lost or silently changed (issue 28): an output that is not a records file is refused
untouched, two writers never share one records file, loaders refuse what they would misread,
a served vector survives its file changing, and a blind key proves it belongs to its sheet."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from tiny import PAIRS, generation_records, invoke, random_vector, tiny_model, write_jsonl

from steerlab.data.files import DataError, load_mc, load_pairs, read_rows
from steerlab.evaluation.judges.blind import export_blind, import_ratings
from steerlab.records import RecordsFileError, RecordWriter, read_records
from steerlab.serve.app import create_app
from steerlab.serve.launch import serving
from steerlab.serve.schema import ServeSettings
from steerlab.steering.vectors import SteeringVector


@pytest.fixture
def pairs_file(tmp_path):
    return write_jsonl(tmp_path / "pairs.jsonl", [p.__dict__ for p in PAIRS])


@pytest.mark.parametrize("name, content", [
    ("vector.safetensors", None),
    ("rows.csv", b"id,prompt\n1,first\n2,last row without its newline"),
    ("notes.jsonl", b'{"task": "ab"}\nnot a record\n'),
    ("binary.jsonl", b"\x00\xff\xfe{"),
])
def test_an_out_that_is_not_a_records_file_is_refused_and_left_as_it_was(
        model_dir, pairs_file, tmp_path, name, content):
    target = tmp_path / name
    if content is None:
        random_vector(tiny_model("llama"), [1]).save(target)
    else:
        target.write_bytes(content)
    before = target.read_bytes()
    result = invoke("eval", "--model", model_dir, "--data", pairs_file, "--out", target)
    assert result.exit_code == 1
    assert f"{target}:" in result.output and "so it is not a records file" in result.output
    assert "nothing was written to it" in result.output
    assert target.read_bytes() == before


def test_a_torn_last_record_is_cut_and_a_lost_newline_restored(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_text('{"task": "ab", "item_id": "1"}\n{"task": "ab", "ite')
    with RecordWriter(path) as writer:
        assert len(writer.records()) == 1
        writer.write({"task": "ab", "item_id": "2"})
    assert [r["item_id"] for r in read_records(path)] == ["1", "2"]
    path.write_text('{"task": "ab", "item_id": "1"}')  # complete, newline lost
    with RecordWriter(path) as writer:
        writer.write({"task": "ab", "item_id": "2"})
    assert [r["item_id"] for r in read_records(path)] == ["1", "2"]


def test_a_second_writer_on_one_records_file_is_refused(model_dir, pairs_file, tmp_path):
    path = tmp_path / "records.jsonl"
    with RecordWriter(path):
        with pytest.raises(RecordsFileError, match="being written by another steerlab process"):
            RecordWriter(path)
        result = invoke("eval", "--model", model_dir, "--data", pairs_file, "--out", path)
        assert result.exit_code == 1 and "being written by another" in result.output
    assert invoke("eval", "--model", model_dir, "--data", pairs_file, "--out",
                  path).exit_code == 0
    assert len(read_records(path)) == len(PAIRS)


@pytest.mark.parametrize("name, text, message", [
    ("extra.json", '[{"prompt": "a", "chosen": "b", "rejected": "c"}]\n[{"prompt": "d"}]',
     ":2: more data after the JSON array's closing ']'"),
    ("comma.json", '[{"prompt": "a", "chosen": "b", "rejected": "c"},\n]',
     ":1: invalid JSON (a comma before the closing ']')"),
    ("twice.csv", "prompt,chosen,chosen,rejected\na,b,c,d\n",
     ":1: the header names the column 'chosen' twice"),
])
def test_loaders_refuse_what_they_would_misread(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        list(read_rows(path))


def test_an_id_of_zero_is_kept_and_an_odd_digit_answer_names_its_line(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"id": 0, "prompt": "a", "chosen": "b", "rejected": "c"},
        {"id": "", "prompt": "d", "chosen": "e", "rejected": "f"}])
    assert [p.id for p in load_pairs(path)] == ["0", "p-2"]
    mc = write_jsonl(tmp_path / "mc.jsonl", [
        {"question": "q", "choices": ["x", "y"], "answer": 1},
        {"question": "q", "choices": ["x", "y"], "answer": "\u00b9"}])
    with pytest.raises(DataError, match=r"mc.jsonl:2: field 'answer' must be an index or a "):
        load_mc(mc)


def test_a_served_vector_survives_its_file_truncated_or_rewritten(tmp_path):
    import openai

    model = tiny_model("llama")
    path = tmp_path / "v.safetensors"
    random_vector(model, [1, 2], seed=1).save(path)
    vector = SteeringVector.load(path)
    app = create_app(model, {"v": vector}, ServeSettings(max_tokens=8))
    with serving(app) as base:
        client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0)

        def reply() -> str:
            return client.chat.completions.create(
                model="tiny-llama", messages=[{"role": "user", "content": "Hi"}], max_tokens=8,
                temperature=0, extra_body={"steering": [{"vector": "v", "multiplier": 4}]},
            ).choices[0].message.content

        first = reply()
        path.write_bytes(b"")  # truncated under the server (a memory map would die here)
        assert reply() == first
        random_vector(model, [1, 2], seed=9).save(path)  # rewritten: read again only on restart
        assert reply() == first
    assert not torch.equal(vector.directions[1], SteeringVector.load(path).directions[1])


def test_a_key_from_another_export_of_the_same_records_is_refused(tmp_path):
    from steerlab.serve.rating import RatingSession

    records = generation_records([f"steered {i}" for i in range(6)],
                                 [f"plain {i}" for i in range(6)])
    export_blind(records, "steered+4", tmp_path / "a.csv", tmp_path / "a.json", seed=1)
    export_blind(records, "steered+4", tmp_path / "b.csv", tmp_path / "b.json", seed=2)
    rows = list(csv.DictReader((tmp_path / "a.csv").open()))
    for row in rows:
        row["preferred"] = "1"
    filled = tmp_path / "filled.csv"
    with filled.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, rows[0].keys())
        writer.writeheader()
        writer.writerows(rows)
    assert len(import_ratings(filled, tmp_path / "a.json")) == 6
    with pytest.raises(DataError, match=r"filled.csv:\d+: pair p\d+ does not show what the key"):
        import_ratings(filled, tmp_path / "b.json")
    with pytest.raises(ValueError, match="do not show what the key"):
        RatingSession(tmp_path / "a.csv", tmp_path / "b.json", tmp_path / "web", ["r"])
    key = json.loads((tmp_path / "a.json").read_text())
    assert all(len(entry["shown"]) == 16 for entry in key["pairs"].values())
