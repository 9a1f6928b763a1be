"""Records are written as produced; an interrupted evaluation resumes and loses nothing."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from steerlab.data.files import PreferencePair
from steerlab.evaluation.likelihood import CHUNK, Sweep, evaluate_ab
from steerlab.records import RecordWriter, read_records, record_key
from steerlab.steering.setting import SteeringSetting
from steerlab.steering.vectors import SteeringVector, meta_for

PAIRS = [PreferencePair(f"Question {i}: is {i} even?{' really' * (i % 5)}", "(A", "(B", id=f"q{i}")
         for i in range(2 * CHUNK + 20)]
MULTIPLIERS = [-1.0, 0.0, 2.0]


def vector_for(model):
    direction = torch.randn(model.d_model, generator=torch.Generator().manual_seed(0))
    return SteeringVector({1: direction}, meta_for(model, "random"))


class FailingWriter(RecordWriter):
    """Dies after a number of writes, as a killed process would."""

    def __init__(self, path, after):
        super().__init__(path)
        self.left = after

    def write(self, record):
        if self.left == 0:
            raise KeyboardInterrupt
        self.left -= 1
        super().write(record)


def lines(path):
    return sorted(path.read_text().splitlines())


def test_interrupted_evaluation_resumes_to_the_uninterrupted_records(tiny, tmp_path):
    sweep = Sweep(SteeringSetting(vector_for(tiny)), MULTIPLIERS)
    with RecordWriter(tmp_path / "full.jsonl") as writer:
        full = evaluate_ab(tiny, PAIRS, sweep, writer=writer, progress=False)
    # Cut while the second chunk's last multiplier is being written: some of its items are
    # complete, yet the chunk must be rescored whole to keep its batches (and numbers).
    cut = len(MULTIPLIERS) * CHUNK + (len(MULTIPLIERS) - 1) * CHUNK + 10
    with pytest.raises(KeyboardInterrupt), FailingWriter(tmp_path / "cut.jsonl", cut) as writer:
        evaluate_ab(tiny, PAIRS, sweep, writer=writer, progress=False)
    assert len(read_records(tmp_path / "cut.jsonl")) == cut
    with RecordWriter(tmp_path / "cut.jsonl") as writer:
        resumed = evaluate_ab(tiny, PAIRS, sweep, writer=writer, progress=False)
    assert resumed == full
    assert lines(tmp_path / "cut.jsonl") == lines(tmp_path / "full.jsonl")  # nothing twice
    # A finished run reopened does no work and writes nothing.
    with FailingWriter(tmp_path / "cut.jsonl", 0) as writer:
        assert evaluate_ab(tiny, PAIRS, sweep, writer=writer, progress=False) == full


def test_torn_last_line_is_cut_before_appending(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"item_id": "a"}\n{"item_id": "b", "sco')
    with RecordWriter(path) as writer:
        assert writer.get(record_key({"item_id": "a"})) == {"item_id": "a"}
        writer.write({"item_id": "c"})
    assert read_records(path) == [{"item_id": "a"}, {"item_id": "c"}]


def test_repeated_item_ids_are_refused(tiny):
    with pytest.raises(ValueError, match="repeated"):
        evaluate_ab(tiny, [PAIRS[0], PAIRS[0]], progress=False)


def test_killed_cli_evaluation_resumes(tiny, tmp_path):
    """SIGKILL the `steerlab eval` process once records appear, rerun, compare."""
    model_dir = tmp_path / "model"
    tiny.model.save_pretrained(model_dir)
    tiny.tokenizer.save_pretrained(model_dir)
    data = tmp_path / "pairs.jsonl"
    many = [PreferencePair(f"Item {i}: {'word ' * (i % 40)}?", "(A", "(B", id=f"i{i}")
            for i in range(10 * CHUNK)]
    data.write_text("".join(json.dumps({"id": p.id, "prompt": p.prompt, "chosen": p.chosen,
                                        "rejected": p.rejected}) + "\n" for p in many))
    out = tmp_path / "records.jsonl"
    command = [sys.executable, "-m", "steerlab.cli", "eval", "--model", str(model_dir),
               "--data", str(data), "--out", str(out), "--batch-size", "1"]
    env = {**os.environ, "STEERLAB_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not out.exists() or out.stat().st_size == 0):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    written = len(out.read_text().splitlines())
    assert 0 < written < len(many), "the kill must land mid-run"
    subprocess.run(command, env=env, check=True, capture_output=True)
    from steerlab.model.handle import load_model

    reference = tmp_path / "reference.jsonl"
    with RecordWriter(reference) as writer:
        evaluate_ab(load_model(str(model_dir)), many, Sweep(), dataset=str(data), writer=writer,
                    batch_size=1, progress=False)
    assert lines(out) == lines(reference)


def test_generation_settings_are_part_of_a_records_identity():
    """Answers generated with other decoding settings are other work, never silently reused."""
    base = {"task": "generate", "item_id": "q1", "arm": "unsteered", "max_new_tokens": 40,
            "seed": 0}
    assert record_key(base) != record_key({**base, "max_new_tokens": 80})
    assert record_key(base) != record_key({**base, "seed": 1})
    assert record_key(base) != record_key({**base, "do_sample": True, "temperature": 0.7})
