"""A bounded, seeded fuzz of what users and clients hand steerlab: mutated data files through
the loaders, mutated files and option values through the CLI, mutated bodies through the
server. Each input must end cleanly: loaded, or refused with a message that names the file (the
loaders), exit status 1 or 2 without a traceback (the CLI), a 2xx or OpenAI-shaped 4xx within
the time limit (the server). No row may go missing: every line of a JSONL file is a record or a
reported bad row. The counts are printed at the end of the run (conftest.py)."""

from __future__ import annotations

import gzip
import json
import random
import urllib.error
import urllib.request
import warnings

import pytest
import torch
from tiny import tiny_model
from typer.testing import CliRunner

from steerlab.cli import app
from steerlab.data.files import DataError
from steerlab.data.registry import dataset_info, load_dataset
from steerlab.serve.app import create_app, serving
from steerlab.serve.schema import ServeSettings
from steerlab.steering.vectors import SteeringVector, meta_for

SEED = 20261130
FUZZ = {"inputs": 0, "loaded": 0, "clean errors": 0, "tracebacks": 0, "5xx": 0, "hangs": 0,
        "rows lost": 0}
"""Counts over the whole run, printed by conftest.py's terminal summary."""

PAIR_ROWS = [{"prompt": f"Question {i}?", "chosen": " yes", "rejected": " no", "id": f"p{i}"}
             for i in range(6)]
MC_ROWS = [{"question": f"Q{i}?", "choices": ["a", "b", "c"], "answer": i % 3, "id": f"m{i}"}
           for i in range(6)]
ODD_VALUES = [None, 0, -1, 1.5, True, "", " ", "x" * 500, [], {}, [1, 2], {"a": 1}, "\u0000",
              "\ud800", 1e308, -1e308, "NaN", "(A)", "Yes"]


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    """One byte-level mutation: a cut, an insertion, a deletion, a doubling or a splice."""
    cut = rng.randrange(len(data) + 1)
    choice = rng.randrange(7)
    if choice == 0:
        return data[:cut]
    if choice == 1:
        return data[:cut] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 8))) + data[cut:]
    if choice == 2:
        return data[:cut] + data[cut + rng.randint(1, 20):]
    if choice == 3:
        return data[:cut] + data[cut:cut + 40] + data[cut:]
    if choice == 4:
        return (data.replace(b"\n", b" ", 1) if rng.random() < 0.5
                else data.replace(b"}\n", b"}junk\n", 1))
    if choice == 5:
        return b"\xef\xbb\xbf" + data
    return data[:cut] + b"[" * rng.randint(1, 3000) + data[cut:]


def mutate_rows(rows: list[dict], rng: random.Random) -> list[dict]:
    """One field-level mutation: a value of the wrong type or shape, a field gone or added."""
    rows = [dict(row) for row in rows]
    row = rng.choice(rows)
    key = rng.choice(sorted(row))
    choice = rng.randrange(3)
    if choice == 0:
        row[key] = rng.choice(ODD_VALUES)
    elif choice == 1:
        del row[key]
    else:
        row[rng.choice(["extra", "split", "choices", "prompt"])] = rng.choice(ODD_VALUES)
    return rows


def as_file(rows: list[dict], kind: str, rng: random.Random) -> bytes:
    """The rows as JSONL, a JSON array or CSV bytes."""
    if kind == "jsonl":
        return "\n".join(json.dumps(r) for r in rows).encode() + b"\n"
    if kind == "json":
        return json.dumps(rows, indent=rng.choice([None, 2])).encode()
    keys = sorted({key for row in rows for key in row if not isinstance(row[key], (list, dict))})
    lines = [",".join(keys)] + [",".join(json.dumps(row.get(k, "")) for k in keys) for row in rows]
    return "\n".join(lines).encode() + b"\n"


def fuzzed_files(rng: random.Random, count: int) -> list[tuple[str, bytes]]:
    """``count`` (file name, content) pairs: rows mutated, then often bytes too, some gzipped."""
    files = []
    for index in range(count):
        kind = rng.choice(["jsonl", "jsonl", "json", "csv"])
        rows = mutate_rows(rng.choice([PAIR_ROWS, MC_ROWS]), rng)
        data = as_file(rows, kind, rng)
        if rng.random() < 0.6:
            data = mutate_bytes(data, rng)
        name = f"f{index}.{kind}"
        if rng.random() < 0.15:
            data = gzip.compress(data) if rng.random() < 0.7 else data
            name += ".gz"
        files.append((name, data))
    return files


def test_loaders_load_or_name_the_file_and_lose_no_row(tmp_path):
    rng = random.Random(SEED)
    for name, data in fuzzed_files(rng, 200):
        path = tmp_path / name
        path.write_bytes(data)
        FUZZ["inputs"] += 1
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                info = dataset_info(path)
                rows = list(info.rows_of())
        except (DataError, ValueError) as err:
            assert str(path) in str(err) or path.name in str(err), (name, err)
            FUZZ["clean errors"] += 1
            continue
        except Exception as err:  # anything else is a finding
            FUZZ["tracebacks"] += 1
            raise AssertionError(f"{name}: {type(err).__name__}: {err}") from err
        FUZZ["loaded"] += 1
        if name.endswith(".jsonl"):
            lines = [line for line in data.decode("utf-8-sig").split("\n") if line.strip()]
            lost = len(lines) - len(rows)
            FUZZ["rows lost"] += max(lost, 0)
            assert lost == 0, (name, len(lines), len(rows))
        good = [row for row in rows if row.error is None]
        if len(good) == len(rows):
            assert len(load_dataset(path)) == len(rows)
        else:
            with pytest.raises(DataError, match=path.name):
                load_dataset(path)


NUMBERS = ["nan", "inf", "-inf", "-1", "0", "1e308", "-1e308", "2", "abc", "", "1,2", "0.5"]


def test_cli_ends_every_fuzzed_command_cleanly(model_dir, tmp_path):
    rng = random.Random(SEED + 1)
    runner = CliRunner()
    vector = tmp_path / "v.safetensors"
    SteeringVector({1: torch.ones(32)}, meta_for(tiny_model("llama"), "t")).save(vector)
    good_vector = vector.read_bytes()
    for index in range(60):
        name, data = fuzzed_files(rng, 1)[0]
        data_file = tmp_path / f"{index}-{name}"
        data_file.write_bytes(data)
        broken_vector = tmp_path / f"{index}.safetensors"
        broken_vector.write_bytes(mutate_bytes(good_vector, rng) if rng.random() < 0.7
                                  else good_vector)
        number = rng.choice(NUMBERS)
        command = rng.choice([
            ["vector", "info", broken_vector],
            ["data", "inspect", data_file],
            ["train", "--model", model_dir, "--data", data_file, "--layer",
             rng.choice(["1", "-1", "99", "x", "0,1"]),
             "--out", tmp_path / f"{index}.out.safetensors"],
            ["eval", "--model", model_dir, "--data", data_file, "--vector", broken_vector,
             "--multipliers", rng.choice(["0,1", "nan", "1,inf", "x"]), "--norm-ratio", number,
             "--out", tmp_path / f"{index}.jsonl"],
            ["generate", "Hi", "--model", model_dir, "--vector", broken_vector,
             "--multiplier", number, "--max-new-tokens", rng.choice(["4", "0", "-1", "x"])],
            ["vector", "export", broken_vector, "--gguf", tmp_path / f"{index}.gguf",
             "--multiplier", number, "--layers", rng.choice(["1", "-1", "99", "a"])],
        ])
        FUZZ["inputs"] += 1
        result = runner.invoke(app, [str(part) for part in command])
        crashed = result.exception is not None and not isinstance(result.exception, SystemExit)
        if crashed or "Traceback" in result.output or result.exit_code not in (0, 1, 2):
            FUZZ["tracebacks"] += 1
            raise AssertionError(f"{command}: exit {result.exit_code}, {result.exception!r}\n"
                                 f"{result.output}")
        FUZZ["loaded" if result.exit_code == 0 else "clean errors"] += 1


def fuzzed_bodies(rng: random.Random, count: int) -> list[bytes]:
    """Chat request bodies: a valid one with a field replaced, dropped or added, then often
    cut or spliced as bytes."""
    base = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 3, "temperature": 0,
            "steering": [{"vector": "v", "multiplier": 1.0}]}
    values = [*ODD_VALUES, float("nan"), float("inf"), 2**64, -(2**70), "x\ud800y",
              [{"vector": "v", "multiplier": float("nan")}], [{"role": "user"}],
              [{"vector": "nope"}], {"include_usage": "yes"}, [[[[]]]]]
    paths = [("model",), ("messages",), ("messages", 0, "content"), ("messages", 0, "role"),
             ("max_tokens",), ("temperature",), ("top_p",), ("seed",), ("stream",),
             ("stop",), ("steering",), ("steering", 0, "multiplier"), ("steering", 0, "layers"),
             ("steering", 0, "norm_ratio"), ("steering", 0, "positions"), ("n",),
             ("stream_options",), ("steering", 0, "vector")]
    bodies = []
    for _ in range(count):
        body = json.loads(json.dumps(base))
        *parents, last = rng.choice(paths)
        target = body
        for key in parents:
            target = target[key]
        if rng.random() < 0.15 and last in target:
            del target[last]
        else:
            target[last] = rng.choice(values)
        data = json.dumps(body, allow_nan=True).encode()
        if rng.random() < 0.3:
            data = mutate_bytes(data, rng)
        bodies.append(data)
    return bodies


def test_server_answers_every_fuzzed_body_with_a_clean_status(tmp_path):
    model = tiny_model("llama")
    vector = SteeringVector({1: torch.ones(32)}, meta_for(model, "t"))
    settings = ServeSettings(max_tokens=3, max_body_bytes=64 << 10, body_timeout_s=2)
    rng = random.Random(SEED + 2)
    with serving(create_app(model, {"v": vector}, settings)) as url:
        for data in fuzzed_bodies(rng, 200):
            FUZZ["inputs"] += 1
            request = urllib.request.Request(url + "/chat/completions", data,
                                             {"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    status, text = response.status, response.read().decode()
            except urllib.error.HTTPError as err:
                status, text = err.code, err.read().decode()
            except TimeoutError:
                FUZZ["hangs"] += 1
                raise AssertionError(f"no answer within 30 s to {data[:200]!r}") from None
            if status >= 500:
                FUZZ["5xx"] += 1
                raise AssertionError(f"{status} for {data[:200]!r}: {text[:300]}")
            if status >= 400:
                error = json.loads(text)["error"]
                assert set(error) == {"message", "type", "param", "code"}, text
                FUZZ["clean errors"] += 1
            else:
                FUZZ["loaded"] += 1
        with urllib.request.urlopen(url + "/models", timeout=10) as response:
            assert response.status == 200
