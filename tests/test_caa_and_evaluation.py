import pytest
import torch

from steerlab import train_caa
from steerlab.data.files import MCItem, PreferencePair
from steerlab.evaluation.likelihood import Sweep, evaluate_ab, evaluate_mc
from steerlab.model.encoding import encode
from steerlab.records import RecordWriter, read_records, summarize
from steerlab.steering.setting import SteeringSetting

PAIRS = [
    PreferencePair("Is the sky green?\n(A) yes\n(B) no", "(A", "(B", id="p1"),
    PreferencePair("Do you agree with me?\n(A) no\n(B) yes", "(B", "(A", id="p2"),
    PreferencePair("A longer question about something entirely different?", " Sure!", " No way.",
                   id="p3"),
]
ITEMS = [
    MCItem("Capital of France?", ("Paris", "Rome", "Berlin"), 0, id="m1"),
    MCItem("2+2?", ("three", "4", "five hundred"), 1, id="m2"),
]


def last_token_output(model, prompt, completion, layer):
    (seq,) = encode(model, [prompt], [completion])
    with torch.no_grad():
        hidden = model.model(torch.tensor([seq.ids]), output_hidden_states=True).hidden_states
    return hidden[layer + 1][0, -1]


def test_caa_is_mean_difference_at_last_token(tiny):
    vector = train_caa(tiny, PAIRS, layers=[1, 2], batch_size=2, progress=False)
    for layer in (1, 2):
        expected = torch.stack([
            last_token_output(tiny, p.prompt, p.chosen, layer)
            - last_token_output(tiny, p.prompt, p.rejected, layer)
            for p in PAIRS
        ]).mean(0)
        torch.testing.assert_close(vector.directions[layer], expected, atol=1e-4, rtol=1e-4)
    assert vector.meta.method == "caa" and vector.meta.n_examples == 3
    assert set(vector.meta.residual_norms) == {1, 2}
    assert vector.meta.data_hash == train_caa(tiny, PAIRS, 1, progress=False).meta.data_hash
    with pytest.raises(ValueError, match="at least one"):
        train_caa(tiny, [], 1)


def test_ab_records_hold_everything_needed(tiny, tmp_path):
    vector = train_caa(tiny, PAIRS, layers=1, progress=False)
    with RecordWriter(tmp_path / "r.jsonl") as writer:
        records = evaluate_ab(tiny, PAIRS, Sweep(SteeringSetting(vector), [-2, 0, 2]),
                              dataset="toy", writer=writer, progress=False)
    assert read_records(tmp_path / "r.jsonl") == records
    assert len(records) == 9
    for record in records:
        assert record["prompt"] == tiny.format_prompt(
            PAIRS[[p.id for p in PAIRS].index(record["item_id"])].prompt)
        assert record["vector_id"] == vector.id and record["layers"] == [1]
        assert record["score"] == pytest.approx(
            torch.tensor(record["logprobs"]).softmax(0)[0].item())
        assert sum(record["probs"]) == pytest.approx(1.0)
    # Multiplier 0 is the unsteered model exactly.
    unsteered = evaluate_ab(tiny, PAIRS, progress=False)
    zero = [r for r in records if r["multiplier"] == 0]
    assert [r["logprobs"] for r in zero] == [r["logprobs"] for r in unsteered]
    # Steering moved the scores.
    assert [r["score"] for r in records if r["multiplier"] == 2] != [r["score"] for r in zero]


def test_mc_accuracy_sum_and_length_normalised(tiny):
    (first, second) = evaluate_mc(tiny, ITEMS, progress=False)
    for record, item in ((first, ITEMS[0]), (second, ITEMS[1])):
        assert record["prediction"] == max(range(3), key=lambda i: record["logprobs"][i])
        normed = [lp / n for lp, n in zip(record["logprobs"], record["n_tokens"])]
        assert record["mean_logprobs"] == pytest.approx(normed)
        assert record["correct"] == (record["prediction"] == item.answer)
        assert record["correct_norm"] == (record["prediction_norm"] == item.answer)
        assert record["choices"] == list(item.choices) and record["vector_id"] is None


def test_summary_recomputed_from_records(tiny):
    vector = train_caa(tiny, PAIRS, layers=1, progress=False)
    records = evaluate_ab(tiny, PAIRS, Sweep(SteeringSetting(vector), [-1, 1]), progress=False)
    rows = summarize(records)
    assert [r["multiplier"] for r in rows] == [-1.0, 1.0]
    for row in rows:
        scores = [r["score"] for r in records if r["multiplier"] == row["multiplier"]]
        assert row["n"] == 3 and row["score"] == pytest.approx(sum(scores) / 3)
        assert row["score_se"] >= 0


def test_arms_sharing_a_setting_keep_their_own_records(tiny, tmp_path):
    with RecordWriter(tmp_path / "r.jsonl") as writer:
        plain = evaluate_mc(tiny, ITEMS, dataset="d", writer=writer, progress=False)
        shots = evaluate_mc(tiny, ITEMS, dataset="d", writer=writer, progress=False, arm="kshot-2")
    assert "arm" not in plain[0] and {r["arm"] for r in shots} == {"kshot-2"}
    assert len(read_records(tmp_path / "r.jsonl")) == 4  # the second arm was not taken as done
    assert [(r["arm"], r["n"]) for r in summarize(plain + shots)] == [(None, 2), ("kshot-2", 2)]


def test_torn_last_line_is_skipped(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": ')
    assert read_records(path) == [{"a": 1}, {"a": 2}]
    path.write_text('{"a": 1}\nbroken\n{"a": 2}\n')
    with pytest.raises(ValueError, match="r.jsonl:2"):
        read_records(path)
