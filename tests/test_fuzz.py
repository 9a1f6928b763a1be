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
from urllib.parse import quote

import pytest
import torch
from tiny import tiny_model
from typer.testing import CliRunner

from steerlab.cli import app
from steerlab.data.files import DataError
from steerlab.data.registry import dataset_info, load_dataset
from steerlab.serve.app import create_app
from steerlab.serve.launch import serving
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


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer (the key's 303), not something to follow."""

    def redirect_request(self, *args, **kwargs):
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def _status(url: str, data: bytes | None = None, headers: dict | None = None,
            method: str | None = None) -> tuple[int, str, dict]:
    """(status, body text, headers) of one request, errors and redirects included."""
    request = urllib.request.Request(url, data, {"Content-Type": "application/json",
                                                 **(headers or {})}, method=method)
    try:
        with _OPENER.open(request, timeout=30) as response:
            return response.status, response.read().decode(errors="replace"), dict(
                response.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace"), dict(err.headers)
    except TimeoutError:
        FUZZ["hangs"] += 1
        raise AssertionError(f"no answer within 30 s from {url}") from None


def _clean(status: int, text: str, what: str) -> None:
    """A 2xx/3xx, or a 4xx with OpenAI's error shape; a 5xx is a finding."""
    if status >= 500:
        FUZZ["5xx"] += 1
        raise AssertionError(f"{status} for {what}: {text[:300]}")
    if status >= 400:
        assert set(json.loads(text)["error"]) == {"message", "type", "param", "code"}, text
        FUZZ["clean errors"] += 1
    else:
        FUZZ["loaded"] += 1


NAMES = ["", ".", "..", "%00", "a%00b", "x" * 300, "%2e%2e%2f%2e%2e", "run%2f..", "%ff%fe",
         "ok", "ok/", "ok/../ok", "\u00e9t\u00e9", "%C0%AE%C0%AE", "a;b", "a?b", "a#b", "~",
         "%5c..%5c", "con", "run name", "ok%20", "-1", "null"]


def test_the_web_and_runs_api_answer_every_fuzzed_path_cleanly(tmp_path):
    """Run names, item ids and queries mutated, over a runs folder whose files are fuzzed too
    (damaged command logs and records): every answer is a page, a JSON reply or a JSON error."""
    rng = random.Random(SEED + 3)
    root = tmp_path / "runs"
    good = [json.dumps({"task": "ab", "item_id": f"q{i}", "arm": "a"}) for i in range(4)]
    for index in range(12):
        run = root / ("ok" if index == 0 else f"r{index}")
        run.mkdir(parents=True)
        commands = json.dumps({"command": "eval"}).encode() + b"\n"
        records = ("\n".join(good) + "\n").encode()
        (run / "commands.jsonl").write_bytes(commands if index == 0
                                             else mutate_bytes(commands, rng))
        (run / "records.jsonl").write_bytes(records if index == 0 else mutate_bytes(records, rng))
        if rng.random() < 0.5:
            (run / "analysis.md").write_bytes(mutate_bytes(b"# A\n\n| a |\n| - |\n| <b>x</b> |\n",
                                                           rng))
    model = tiny_model("llama")
    with serving(create_app(model, {}, ServeSettings(web=True, runs=str(root),
                                                     api_key="k"))) as url:
        base = url.removesuffix("/v1")
        auth = {"Authorization": "Bearer k"}
        status, text, _ = _status(base + "/runs/list", headers=auth)
        assert status == 200 and len(json.loads(text)["runs"]) == 12
        for _ in range(150):
            name, item = (quote(rng.choice(NAMES + [f"r{rng.randrange(12)}"]), safe="%/~"),
                          quote(rng.choice(NAMES), safe="%/~"))
            path = rng.choice([f"/runs/{name}/view/", f"/runs/{name}/item/{item}",
                               f"/web/{name}", f"/runs/list?key={name}", f"/web/?key={name}",
                               f"/v1/models?key={name}"])
            headers = rng.choice([auth, {}, {"Authorization": "Bearer " + name},
                                  {**auth, "Host": rng.choice(["evil.example", "127.0.0.1",
                                                               "[::1]", "localhost:1"])}])
            FUZZ["inputs"] += 1
            status, text, headers_back = _status(base + path, headers=headers)
            assert "content-security-policy" in {k.lower() for k in headers_back}
            if path.startswith("/web/") and status == 200:
                FUZZ["loaded"] += 1
                continue
            _clean(status, text, path)


def test_the_rating_api_answers_every_fuzzed_verdict_and_loses_none(tmp_path):
    from tiny import generation_records

    from steerlab.evaluation.judges.blind import export_blind
    from steerlab.serve.rating import RatingSession, create_rating_app

    rng = random.Random(SEED + 4)
    records = generation_records([f"steered {i}" for i in range(8)],
                                 [f"plain {i}" for i in range(8)])
    export_blind(records, "steered+4", tmp_path / "sheet.csv", tmp_path / "key.json", seed=1)
    session = RatingSession(tmp_path / "sheet.csv", tmp_path / "key.json", tmp_path / "web",
                            ["fuzz"])
    token = session.tokens["fuzz"]
    values = [*ODD_VALUES, "1", "2", "tie", "p0001", "p0002", "p9999", "x" * 5000]
    with serving(create_rating_app(session)) as url:
        base = url.removesuffix("/v1")
        for _ in range(150):
            body = {"pair_id": rng.choice(["p0001", "p0002", "p0003", "p0004"]),
                    "preferred": rng.choice(["1", "2", "tie"]), "comment": ""}
            if rng.random() < 0.7:
                body[rng.choice(["pair_id", "preferred", "comment", "extra"])] = rng.choice(values)
            data = json.dumps(body).encode()
            if rng.random() < 0.2:
                data = mutate_bytes(data, rng)
            path = rng.choice([f"/rating/{token}/verdict"] * 4 + [
                f"/rating/{token}/undo", f"/rating/{quote(rng.choice(NAMES), safe='%/~')}/verdict"])
            FUZZ["inputs"] += 1
            _clean(*_status(base + path, data)[:2], f"{path} {data[:80]!r}")
        state = json.loads(_status(base + f"/rating/{token}/state")[1])
    saved = (tmp_path / "web" / "ratings-fuzz.jsonl").read_text().splitlines() \
        if (tmp_path / "web" / "ratings-fuzz.jsonl").exists() else []
    lost = state["done"] - len(saved)
    FUZZ["rows lost"] += abs(lost)
    assert lost == 0 and len(session.given["fuzz"]) == len(saved)


CONFIG = {
    "name": "fuzz", "model": "smollm2-135m-instruct", "seed": 0, "batch_size": 8,
    "data": {"train": {"dataset": "refusal", "split": "train", "limit": 8}, "val_size": 4,
             "test": {"dataset": "refusal", "split": "test", "limit": 4}},
    "methods": {"caa": {"method": "caa"}, "bipo": {"method": "bipo", "epochs": 1}},
    "steering": {"layers": [1], "multipliers": [-1, 1], "norm_ratio": 0.05},
    "baselines": {"kshot": {"ks": [1]}},
}
CONFIG_PATHS = [("name",), ("model",), ("seed",), ("batch_size",), ("data", "train"),
                ("data", "val_size"), ("data", "test", "limit"), ("methods", "bipo", "epochs"),
                ("methods", "bipo", "lr"), ("methods", "caa", "method"), ("steering", "layers"),
                ("steering", "multipliers"), ("steering", "norm_ratio"),
                ("steering", "positions"), ("baselines", "kshot", "ks"), ("evaluations",),
                ("methods", "caa", "layers"), ("methods", "bipo", "multipliers")]


def test_run_configs_with_mutated_fields_are_valid_or_refused_with_their_key():
    import yaml

    from steerlab.experiment.config import ConfigError, parse_config

    rng = random.Random(SEED + 5)
    values = [*ODD_VALUES, [99], [1e300], [-1], "../../../x", "a/b", 1e300, -5, [0.0], "scan",
              [1, 1e5], "generated", {"lora": {}}]
    for _ in range(120):
        config = json.loads(json.dumps(CONFIG))
        *parents, last = rng.choice(CONFIG_PATHS)
        target = config
        for key in parents:
            target = target[key]
        target[last] = rng.choice(values)
        FUZZ["inputs"] += 1
        try:
            parse_config(yaml.safe_dump(config), check_data=False)
        except ConfigError:
            FUZZ["clean errors"] += 1
            continue
        except Exception as err:
            FUZZ["tracebacks"] += 1
            raise AssertionError(f"{parents + [last]} = {target[last]!r}: "
                                 f"{type(err).__name__}: {err}") from err
        FUZZ["loaded"] += 1


EXTREMES = [0, -0.0, 1e-300, 1e-45, 5e-324, 0.009, 0.01, 1e308, -1e308, 2**63, -(2**63),
            2**64, 1e30, -1e30, 4, -4, 180, -181, 1e-7]


def test_served_requests_with_extreme_numbers_in_every_numeric_field_are_answered_cleanly():
    model = tiny_model("llama")
    vector = SteeringVector({1: torch.ones(32)}, meta_for(model, "t", residual_norms={1: 5.0}))
    fields = [("temperature",), ("top_p",), ("max_tokens",), ("max_completion_tokens",),
              ("seed",), ("steering", 0, "multiplier"), ("steering", 0, "norm_ratio"),
              ("steering", 0, "layers", 0)]
    with serving(create_app(model, {"v": vector}, ServeSettings(max_tokens=3))) as url:
        for path in fields:
            for value in EXTREMES:
                body = {"model": "tiny-llama", "max_tokens": 2,
                        "messages": [{"role": "user", "content": "hi"}],
                        "steering": [{"vector": "v", "multiplier": 1.0, "layers": [1]}]}
                *parents, last = path
                target = body
                for key in parents:
                    target = target[key]
                target[last] = value
                for intervention in ("add", "angular"):
                    body["steering"][0]["intervention"] = intervention
                    FUZZ["inputs"] += 1
                    _clean(*_status(url + "/chat/completions", json.dumps(body).encode())[:2],
                           f"{path} = {value!r} ({intervention})")
