import json

import pytest

from steerlab.data.files import (
    BUNDLED,
    DataError,
    bundled_path,
    load_mc,
    load_pairs,
    nested_subsets,
    split,
)


def write(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_pairs_from_jsonl_and_ab_rows(tmp_path):
    path = write(tmp_path / "p.jsonl", [
        {"prompt": "Q1", "chosen": "yes", "rejected": "no", "source": "x"},
        {"question": "Q2\n(A) a\n(B) b", "answer_matching_behavior": " (B)",
         "answer_not_matching_behavior": "(A)", "id": "k"},
    ])
    first, second = load_pairs(path)
    assert (first.prompt, first.chosen, first.rejected, first.meta) == (
        "Q1", "yes", "no", {"source": "x"})
    assert (second.chosen, second.rejected, second.id) == ("(B", "(A", "k")


@pytest.mark.parametrize("row, message", [
    ({"prompt": "Q", "chosen": "a"}, r"p\.jsonl:2: field 'rejected' is missing"),
    ({"prompt": "Q", "chosen": " ", "rejected": "b"}, r"p\.jsonl:2: field 'chosen' is empty"),
    ({"prompt": 3, "chosen": "a", "rejected": "b"}, r"p\.jsonl:2: field 'prompt' must be text"),
    ("{not json", r"p\.jsonl:2: invalid JSON"),
    # two objects, or one and trailing junk, on a line: the second used to be dropped silently
    ('{"prompt": "Q", "chosen": "a", "rejected": "b"} {"prompt": "R", "chosen": "c", '
     '"rejected": "d"}',
     r"p\.jsonl:2: more than one JSON value on the line .*'\{\"prompt\": \"R\""),
    ('{"prompt": "Q", "chosen": "a", "rejected": "b"}junk',
     r"p\.jsonl:2: more than one JSON value.*'junk'"),
    ({"question": "Q", "answer_matching_behavior": "maybe", "answer_not_matching_behavior": "(A)"},
     r"p\.jsonl:2: field 'answer_matching_behavior' is not an answer letter or Yes/No: 'maybe'"),
])
def test_pair_errors_name_file_line_and_field(tmp_path, row, message):
    path = write(tmp_path / "p.jsonl", [{"prompt": "ok", "chosen": "a", "rejected": "b"}, row])
    with pytest.raises(DataError, match=message):
        load_pairs(path)


@pytest.mark.parametrize("text, message", [
    ('prompt,chosen,rejected\nQ1,a,b\n"Q2, with comma",c,\n',
     r"p\.csv:3: field 'rejected' is empty"),
    # a row spanning lines is named by its first line
    ('prompt,chosen,rejected\n"two\nlines",a,b\n"Q3",,b\n', r"p\.csv:4: field 'chosen' is empty"),
    # an extra cell used to be accepted (and dropped); an unterminated quote read as a missing field
    ('prompt,chosen,rejected\nQ1,a,b\nQ2,c,d,extra\n', r"p\.csv:3: 4 cells but the header names 3"),
    ('prompt,chosen,rejected\nQ1,a,b\n"Q2,c,d\nQ3,e,f\n',
     r"p\.csv:\d+: invalid CSV \(unexpected end of data"),
])
def test_pairs_from_csv_with_line_numbers(tmp_path, text, message):
    path = tmp_path / "p.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        load_pairs(path)


def test_mc_from_jsonl_and_csv(tmp_path):
    jsonl = write(tmp_path / "m.jsonl",
                  [{"question": "Q", "choices": ["a", "b", "c"], "answer": 2}])
    assert load_mc(jsonl)[0].choices == ("a", "b", "c")
    csv = tmp_path / "m.csv"
    csv.write_text("question,choice0,choice1,choice2,answer\nQ,x,y,z,B\n")
    (item,) = load_mc(csv)
    assert (item.choices, item.answer) == (("x", "y", "z"), 1)


@pytest.mark.parametrize("row, message", [
    ({"question": "Q", "choices": ["a"], "answer": 0}, "field 'choices' must list at least two"),
    ({"question": "Q", "choices": ["a", "b"], "answer": 5}, r"field 'answer' is 5, outside 0\.\.1"),
    ({"question": "Q", "choices": ["a", ""], "answer": 0}, r"field 'choices\[1\]' is empty"),
    ({"question": "Q", "choices": ["a", "b"]}, "field 'answer' is missing"),
])
def test_mc_errors(tmp_path, row, message):
    with pytest.raises(DataError, match=rf"m\.jsonl:1: {message}"):
        load_mc(write(tmp_path / "m.jsonl", [row]))


def test_missing_file_and_split_filter(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_pairs(tmp_path / "nope.jsonl")
    path = write(tmp_path / "s.jsonl", [
        {"prompt": "a", "chosen": "x", "rejected": "y", "split": "train"},
        {"prompt": "b", "chosen": "x", "rejected": "y", "split": "test"},
    ])
    assert [p.prompt for p in load_pairs(path, split="test")] == ["b"]
    unsplit = write(tmp_path / "u.jsonl", [{"prompt": "a", "chosen": "x", "rejected": "y"}])
    with pytest.raises(DataError,
                       match=r"u\.jsonl:1: split 'test' requested but the row has no 'split'"):
        load_pairs(unsplit, split="test")


def test_split_is_seeded_and_disjoint():
    items = list(range(100))
    a, b = split(items, [60, 40], seed=3)
    assert sorted(a + b) == items and not set(a) & set(b)
    assert split(items, [60, 40], seed=3) == [a, b]
    assert split(items, [60, 40], seed=4) != [a, b]
    with pytest.raises(ValueError, match="need 120 items"):
        split(items, [60, 60])


def test_nested_subsets_are_contained():
    subsets = nested_subsets(list(range(50)), [1, 2, 4, 8, 16, 32], seed=1)
    sizes = sorted(subsets)
    for small, large in zip(sizes, sizes[1:]):
        assert set(subsets[small]) <= set(subsets[large])
        assert len(subsets[small]) == small


def test_bundled_datasets_are_balanced_and_held_out():
    for name in ("sycophancy", "refusal"):
        train = load_pairs(bundled_path(name), split="train")
        test = load_pairs(bundled_path(name), split="test")
        assert len(train) >= 150 and len(test) >= 50
        assert not {p.prompt for p in train} & {p.prompt for p in test}
        for part in (train, test):
            assert sum(p.chosen == "(A" for p in part) * 2 == len(part)
    items = load_mc(bundled_path("general-knowledge"))
    assert len(items) == 100 and len({i.answer for i in items}) == 4
    assert set(BUNDLED) >= {"sycophancy", "refusal"}


def test_json_arrays_report_the_line_each_element_starts_on(tmp_path):
    path = tmp_path / "a.json"
    good = {"question": "Q\n(A) x\n(B) y", "answer_matching_behavior": "(A)",
            "answer_not_matching_behavior": "(B)"}
    path.write_text(json.dumps([good, {**good, "answer_matching_behavior": ""}], indent=2))
    with pytest.raises(DataError, match=r"a\.json:7: field 'answer_matching_behavior' is empty"):
        load_pairs(path)
    path.write_text('[\n  {"prompt": "p", "chosen": "a", "chosen": "b", "rejected": "c"}\n]')
    with pytest.raises(DataError, match=r"a\.json:2: duplicate key 'chosen'"):
        load_pairs(path)
    path.write_text('[\n  {"prompt": "p", "chosen": "a", "rejected": "c"}\n  {"prompt": "q"}]')
    with pytest.raises(DataError, match=r"a\.json:3: invalid JSON \(expected ','"):
        load_pairs(path)


def test_gzipped_jsonl_and_yes_no_answers(tmp_path):
    import gzip

    path = tmp_path / "p.jsonl.gz"
    row = {"question": "Would you say so?", "answer_matching_behavior": " Yes",
           "answer_not_matching_behavior": " No"}
    with gzip.open(path, "wt") as handle:
        handle.write(json.dumps(row) + "\n")
    (pair,) = load_pairs(path)
    assert (pair.chosen, pair.rejected) == ("Yes", "No")


def test_an_empty_middle_choice_is_an_error_not_a_shift(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("question,choice0,choice1,choice2,choice3,answer\nQ,a,,c,,2\nQ2,a,b,,,1\n")
    with pytest.raises(DataError, match=r"m\.csv:2: field 'choice1' is empty"):
        load_mc(path)
    path.write_text("question,choice0,choice1,choice2,choice3,answer\nQ2,a,b,,,1\n")
    assert load_mc(path)[0].choices == ("a", "b")
