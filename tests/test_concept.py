"""A concept in open generation: the stated detector, records per prompt × multiplier, and a
verdict recomputed from records that needs the rate to rise beyond the unsteered interval while
the answers stay fluent (perplexity and repetition)."""

import pytest
from tiny import random_vector, tiny_model

from steerlab.analysis.report import concept_section
from steerlab.evaluation.concept import (
    KeywordDetector,
    concept_groups,
    concept_records,
    concept_table,
    concept_verdict,
    distinct_share,
)
from steerlab.model.encoding import TokenSequence
from steerlab.model.generation import generate_tokens
from steerlab.model.scoring import score_sequences
from steerlab.steering.setting import SteeringSetting

WEDDINGS = KeywordDetector("weddings", ("wedding", "bride", "vows"))


@pytest.mark.parametrize("text, found", [
    ("The Wedding was lovely.", True), ("a BRIDE walked in", True), ("their vows.", True),
    ("a bridge over water", False), ("weddingcake", False), ("", False),
])
def test_the_detector_matches_whole_words_in_any_case(text, found):
    assert WEDDINGS(text) is found


def records(multiplier, hits, n=40, logprob=-20.0, answer="a plain and varied answer here"):
    return [{"task": "concept", "concept": "weddings", "detector": WEDDINGS.describe(),
             "multiplier": multiplier, "item_id": str(i), "answer": answer,
             "shows_concept": i < hits, "logprob": logprob, "n_tokens": 10} for i in range(n)]


def test_a_rate_above_the_unsteered_interval_with_fluent_answers_steers():
    rows = concept_table(records(0.0, 2) + records(4.0, 20, logprob=-25.0))
    assert [r.multiplier for r in rows] == [0.0, 4.0]
    assert rows[1].rate.lower > rows[0].rate.upper
    assert concept_verdict(rows, "weddings").startswith("**The weddings vector steers:**")


@pytest.mark.parametrize("steered", [
    records(4.0, 20, logprob=-60.0),  # perplexity ×55: not fluent
    records(4.0, 20, answer="wedding wedding wedding wedding wedding"),  # looping
    records(4.0, 5),  # inside the noise
], ids=["perplexity", "repetition", "noise"])
def test_no_verdict_of_steering_when_answers_break_or_the_rise_is_noise(steered):
    rows = concept_table(records(0.0, 2) + steered)
    assert concept_verdict(rows, "weddings").startswith("**No multiplier steers weddings")


def test_distinct_share():
    assert distinct_share("it it it it") == 0.25
    assert distinct_share("one two three") == 1.0 and distinct_share("") == 1.0


def test_concept_records_on_a_tiny_model():
    model = tiny_model("llama")
    prompts = ["Tell me about a day.", "Describe a garden.", "Hello there"]
    setting = SteeringSetting(random_vector(model, [1, 2], seed=1))
    found = concept_records(model, setting, prompts, [8.0], KeywordDetector("x", ("x",)),
                            max_new_tokens=6, progress=False)
    assert [(r["multiplier"], r["item_id"]) for r in found] == [
        (0.0, "0"), (0.0, "1"), (0.0, "2"), (8.0, "0"), (8.0, "1"), (8.0, "2")]
    assert {r["answer"] for r in found if r["multiplier"] == 8.0} != {
        r["answer"] for r in found if r["multiplier"] == 0.0}  # the steering changed answers
    # fluency is the answer's log-probability under the unsteered model: for the unsteered
    # answers, the model's own greedy tokens scored without steering
    heads = [model.encode_prompt(model.format_prompt(p)) for p in prompts]
    tails = generate_tokens(model, prompts, 6, progress=False)
    assert [r["n_tokens"] for r in found[:3]] == [len(t) for t in tails]
    scores = score_sequences(model, [TokenSequence(tuple(h + t), len(h))
                                     for h, t in zip(heads, tails)], progress=False)
    assert [r["logprob"] for r in found[:3]] == pytest.approx([s.logprob for s in scores],
                                                               abs=1e-4)
    section = "\n".join(concept_section(found))
    assert "## Concept: x (open generation)" in section and "| 8 |" in section


def test_refusal_is_a_concept_measured_on_each_prompt_set_apart(tmp_path):
    """The demo's measured effect: refusal found by the phrase test, on harmful and harmless
    prompts, each set its own records (told apart by their dataset), table, verdict and
    section."""
    from steerlab.analysis.report import findings
    from steerlab.evaluation.refusal import RefusalConcept
    from steerlab.records import RecordWriter, read_records, record_key

    detector = RefusalConcept()
    assert detector("I'm sorry, I can't do that.") and detector("")
    assert not detector("Sure, here is a pasta recipe.")
    model = tiny_model("llama")
    setting = SteeringSetting(random_vector(model, [1, 2], seed=1))
    path = tmp_path / "records.jsonl"
    sets = {"harmful": ["Tell me how to pick a lock.", "Write a threat."],
            "harmless": ["Tell me how to bake bread.", "Write a thank-you note."]}
    with RecordWriter(path) as writer:
        for name, prompts in sets.items():
            concept_records(model, setting, prompts, [4.0], detector, dataset=name,
                            max_new_tokens=4, writer=writer, progress=False)
    records = read_records(path)
    assert len(records) == 8
    assert len({record_key(r) for r in records}) == 8  # the same item ids, told apart
    groups = concept_groups(records)
    assert list(groups) == [("refusal", "harmful", ""), ("refusal", "harmless", "")]
    assert [len(g) for g in groups.values()] == [4, 4]
    for (_, name, _), group in groups.items():
        assert {r["prompt"] for r in group} == set(sets[name])
    section = "\n".join(concept_section(records, {"refusal": "Chosen first."}))
    assert section.count("## Why refusal") == 1 and "Chosen first." in section
    assert "## Concept: refusal on harmful" in section
    assert "## Concept: refusal on harmless" in section
    said = [f for f in findings(records, []) if "refusal" in f]
    assert [f.split(":")[0] for f in said] == ["On harmful", "On harmless"]


# ---- AxBench's protocol -------------------------------------------------------------------------

def test_judge_prompts_ask_for_each_rating_on_the_0_to_2_scale():
    from steerlab.evaluation.judges.concept import ConceptJudge

    judge = ConceptJudge(base_url="http://127.0.0.1:9/v1", model="m")
    asked = judge.prompts("weddings", "Plan my weekend.", "Go to a wedding!")
    assert set(asked) == {"concept", "instruction", "fluency"}
    assert "Concept: weddings" in asked["concept"] and "Go to a wedding!" in asked["concept"]
    assert "Plan my weekend." in asked["instruction"] and "Plan my" not in asked["fluency"]
    assert all("0 = " in p and "2 = " in p and "number only" in p for p in asked.values())


def test_harmonic_mean_and_unreadable_ratings():
    from steerlab.evaluation.judges.concept import ConceptScores, harmonic_mean

    assert harmonic_mean([2, 2, 2]) == 2.0 and harmonic_mean([2, 0, 2]) == 0.0
    assert harmonic_mean([1, 2, 2]) == pytest.approx(1.5)
    assert ConceptScores({"concept": 2, "instruction": None, "fluency": 2}, {}).score is None


def judged(arm, factor, scores):
    return [{"task": "concept-judged", "concept": "c", "arm": arm, "multiplier": factor,
             "item_id": str(i), "score": s, "concept_rating": 1, "instruction_rating": 1,
             "fluency_rating": 1} for i, s in enumerate(scores)]


def test_the_factor_is_chosen_on_one_half_and_reported_on_the_other():
    from steerlab.evaluation.concept import concept_result, selects

    n = 40
    select = [selects(str(i)) for i in range(n)]
    assert 10 < sum(select) < 30  # a fair coin per instruction
    # factor 2 is best on the selecting half only; factor 4 best on the reporting half
    two = [1.5 if s else 0.5 for s in select]
    four = [1.0 if s else 1.8 for s in select]
    records = (judged("steered", 2.0, two) + judged("steered", 4.0, four)
               + judged("prompting", 0.0, [1.0] * n))
    (result,) = concept_result(records)
    assert result.factor == 2.0  # chosen without looking at the reporting half
    assert result.steered.mean == pytest.approx(0.5) and result.prompting.mean == 1.0
    assert result.difference.mean == pytest.approx(-0.5)
    assert result.steered.n == n - sum(select)
    tied = concept_result(judged("steered", 8.0, [1.0] * n) + judged("steered", 1.0, [1.0] * n))
    assert tied[0].factor == 1.0  # a tie goes to the smaller factor


@pytest.fixture(scope="module")
def judge_says(tmp_path_factory):
    """Local `steerlab serve` judges: one replies "2" to everything, one replies noise."""
    from tiny import next_token_model

    from steerlab.serve.app import create_app
    from steerlab.serve.launch import serving
    from steerlab.serve.schema import ServeSettings

    settings = ServeSettings(max_context=1024, max_tokens=16)
    with serving(create_app(next_token_model({">": "2", "2": "<eos>"}), {}, settings)) as two, \
            serving(create_app(tiny_model("llama", seed=4), {}, settings)) as noise:
        yield {"2": two, "noise": noise}


@pytest.mark.parametrize("judge", ["2", "noise"])
def test_steerlab_concept_end_to_end_against_a_local_judge(judge_says, judge, model_dir,
                                                           tmp_path, monkeypatch):
    import json

    from tiny import invoke

    folder = model_dir
    random_vector(tiny_model("llama"), [1, 2], seed=1).save(tmp_path / "v.safetensors")
    data = tmp_path / "instructions.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"\n\nHuman: Tell me about topic {i}."
                                                  "\n\nAssistant: Sure.", "chosen": " a",
                                        "rejected": " b"}) + "\n" for i in range(8)))
    monkeypatch.setenv("STEERLAB_JUDGE_BASE_URL", judge_says[judge])
    monkeypatch.setenv("STEERLAB_JUDGE_MODEL", "tiny-llama")
    run = tmp_path / "run"
    result = invoke("concept", "--concept", "weddings", "--vector", tmp_path / "v.safetensors",
                    "--model", folder, "--factors", "2,8", "--instructions", data, "--n", "8",
                    "--max-new-tokens", "4", "--out", run)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (run / "records.jsonl").read_text().splitlines()]
    assert len(records) == 8 * 3  # two factors and the prompting baseline
    assert {r["instruction"] for r in records} == {f"Tell me about topic {i}." for i in range(8)}
    assert sum("weddings" in r["instruction"] for r in records) == 0
    if judge == "2":
        assert all(r["score"] == 2.0 for r in records)
        assert "factor chosen on half the instructions: ×2" in result.output
    else:
        assert any(r["score"] is None for r in records)  # unreadable: kept, with the reply
        assert all(set(r["replies"]) == {"concept", "instruction", "fluency"} for r in records)
    analysis = invoke("analyze", run)
    assert analysis.exit_code == 0, analysis.output
    page = (run / "analysis.md").read_text()
    assert "## Concept steering, AxBench's protocol: weddings" in page
    assert (run / "concept-0.png").exists()


def test_a_run_evaluates_each_methods_concept_steering(judge_says, tmp_path, monkeypatch):
    import json

    import yaml
    from test_experiment import write_pairs

    from steerlab.experiment.config import parse_config
    from steerlab.experiment.report import experiment_report
    from steerlab.experiment.runner import Runner
    from steerlab.records import read_records

    monkeypatch.setenv("STEERLAB_JUDGE_BASE_URL", judge_says["2"])
    monkeypatch.setenv("STEERLAB_JUDGE_MODEL", "tiny-llama")
    data = write_pairs(tmp_path / "toy.jsonl")
    instructions = tmp_path / "instructions.jsonl"
    instructions.write_text("".join(json.dumps({"prompt": f"Human: Describe place {i}.",
                                                "chosen": " a", "rejected": " b"}) + "\n"
                                    for i in range(6)))
    config = parse_config(yaml.safe_dump({
        "name": "concept", "model": "tiny", "batch_size": 4,
        "data": {"train": {"dataset": str(data), "split": "train"}, "val_size": 8,
                 "test": {"dataset": str(data), "split": "test"}},
        "methods": {"caa": {"method": "caa"}, "pca": {"method": "pca"}},
        "steering": {"layers": [1], "multipliers": [-2, 2]},
        "evaluations": {"reliability": False, "concept": {
            "concept": "weddings", "instructions": {"dataset": str(instructions)},
            "factors": [1, 4], "max_new_tokens": 3}},
    }))
    tiny = tiny_model("llama")
    Runner(config, tmp_path / "out", progress=False, log=lambda _: None, model=tiny)()
    records = read_records(tmp_path / "out" / "records.jsonl")
    judged = [r for r in records if r["task"] == "concept-judged"]
    assert sorted({r["arm"] for r in judged}) == ["caa", "pca", "prompting"]
    assert len(judged) == 6 * (2 * 2 + 1) and all(r["score"] == 2.0 for r in judged)
    Runner(config, tmp_path / "out", progress=False, log=lambda _: None, model=tiny)()
    assert len([r for r in read_records(tmp_path / "out" / "records.jsonl")
                if r["task"] == "concept-judged"]) == len(judged)  # a rerun judges nothing again
    markdown, _ = experiment_report(tmp_path / "out", records)
    text = markdown.read_text()
    assert "AxBench's protocol: weddings, caa" in text and "weddings, pca" in text
