import torch

from steerlab.analysis.run_analysis import analyze, write_analysis
from steerlab.data.files import MCItem, PreferencePair
from steerlab.evaluation.likelihood import Sweep, evaluate_ab, evaluate_mc
from steerlab.evaluation.side_effects import side_effect_records
from steerlab.experiment.runs import RunDir
from steerlab.steering.setting import SteeringSetting
from steerlab.steering.vectors import SteeringVector, meta_for

PAIRS = [PreferencePair(f"Question {i}?", "(A", "(B", id=f"q{i}") for i in range(6)]
ITEMS = [MCItem("Capital of France?", ("Paris", "Rome"), 0, id="m1"),
         MCItem("2+2?", ("three", "4"), 1, id="m2")]


def test_run_dir_records_and_analysis_from_records_alone(tiny, tmp_path):
    direction = torch.randn(tiny.d_model, generator=torch.Generator().manual_seed(0))
    vector = SteeringVector({2: direction}, meta_for(tiny, "random"))
    run = RunDir.open(tmp_path / "run", "test", {"multipliers": [-1, 0, 1]})
    assert run.keep_vector(vector).exists()
    with run.writer() as writer:
        evaluate_ab(tiny, PAIRS, Sweep(SteeringSetting(vector), [-1.0, 0.0, 1.0]), dataset="toy",
                    writer=writer, progress=False)
        evaluate_mc(tiny, ITEMS, Sweep(), dataset="unsteered-only", writer=writer, progress=False)
        side_effect_records(tiny, Sweep(SteeringSetting(vector), [2.0]), capability={"gk": ITEMS},
                            prompts={"unrelated": ["Hello?", "Name a fruit."]}, writer=writer,
                            progress=False)
    records = run.records()
    found = analyze(records)
    assert {(r["task"], r["dataset"]) for r in found.sweep} == {
        ("ab", "toy"), ("mc", "gk"), ("mc", "unsteered-only")}
    assert [s.metric.split(",")[0] for s in found.side_effects] == [
        "accuracy", "KL(unsteered‖steered)"]
    (steer,) = found.steerability  # the A/B sweep; the single-multiplier settings have no slope
    assert steer.n_inputs == len(PAIRS) and steer.setting["dataset"] == "toy"
    path = write_analysis(run.path, records)
    text = path.read_text()
    for heading in ("Likelihood sweep", "Side effects", "Steerability"):
        assert heading in text
    assert (run.path / "sweep.png").exists() and (run.path / "steerability-0.png").exists()
    assert write_analysis(run.path, run.records()).read_text() == text  # recomputed, same result
    assert len((run.path / "commands.jsonl").read_text().splitlines()) == 1


def test_a_steered_multiple_choice_target_task_is_not_taken_for_a_capability_measurement(tiny):
    """A run whose target task is multiple choice (TruthfulQA MC1) sweeps the vector at nonzero
    multipliers with its unsteered records under no vector; analysis used to read those as
    capability records and fail for want of a multiplier-0 baseline."""
    direction = torch.randn(tiny.d_model, generator=torch.Generator().manual_seed(1))
    vector = SteeringVector({2: direction}, meta_for(tiny, "random"))
    records = evaluate_mc(tiny, ITEMS, Sweep(), dataset="target", progress=False)
    records += evaluate_mc(tiny, ITEMS, Sweep(SteeringSetting(vector), [-2.0, 2.0]),
                           dataset="target", progress=False)
    records += side_effect_records(tiny, Sweep(SteeringSetting(vector), [2.0]),
                                   capability={"gk": ITEMS}, progress=False)
    found = analyze(records)
    assert [(s.dataset, s.multiplier) for s in found.side_effects] == [("gk", 2.0)]
    assert {(r["dataset"], r["multiplier"]) for r in found.sweep} >= {
        ("target", -2.0), ("target", 2.0)}
