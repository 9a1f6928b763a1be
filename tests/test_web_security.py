"""The web interface against a hostile page or data (issue 28): text from data, records, vector
names and run names reaches every page as text; every response carries a strict CSP; the key is
taken from the address once, on a web page, and never logged; Host headers that are not this
server's are refused (DNS rebinding); damaged runs are listed as damaged; the rating app limits
what it is sent and never counts a verdict that did not reach the disk."""

from __future__ import annotations

import errno
import http.client
import json
import logging
import threading
import time
from urllib.parse import urlsplit

import pytest
from test_serve_hostile import raw
from test_web import BROWSER, DRIVER, KEY, browser, sheet, wait  # noqa: F401 (fixtures)
from tiny import random_vector, tiny_model

from steerlab.analysis.run_analysis import write_analysis
from steerlab.data.files import MCItem
from steerlab.evaluation.likelihood import Sweep, evaluate_mc
from steerlab.serve.app import create_app
from steerlab.serve.guards import PAGE_POLICY, REPORT_POLICY
from steerlab.serve.launch import serving
from steerlab.serve.schema import ServeSettings
from steerlab.steering.setting import SteeringSetting

PAYLOAD = '<img src=x onerror="document.title=\'pwned\'">'
"""Markup that runs script wherever it is parsed as HTML rather than shown as text."""


def request(base: str, path: str, headers: dict | None = None,
            method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one request, redirects not followed, any Host header."""
    parts = urlsplit(base)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    connection.request(method, path, headers=headers or {})
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, data


@pytest.fixture
def hostile_runs(tmp_path):
    """A run whose report quotes a payload (a dataset so named, an answer holding it), a run
    named with one, and three damaged runs."""
    model = tiny_model("llama")
    root = tmp_path / "runs"
    items = [MCItem(f"Question {i}?", [PAYLOAD, "plain answer"], 0, id=f"q{i}")
             for i in range(4)]
    vector = random_vector(model, [1], seed=1)
    for name in ("injected", PAYLOAD.replace("/", "")):
        run = root / name
        run.mkdir(parents=True)
        (run / "commands.jsonl").write_text(json.dumps({"command": f"eval {PAYLOAD}"}) + "\n")
        records = evaluate_mc(model, items, Sweep(SteeringSetting(vector), [0.0, 4.0]),
                              dataset=PAYLOAD, progress=False)
        (run / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        write_analysis(run, records)
    damaged = {"bad-commands": ("commands.jsonl", b"{not json\n"),
               "not-utf8": ("records.jsonl", b'{"task": "ab", "item_id": "q1"}\n\xff\xfe\n'),
               "no-stage": ("records.jsonl", b'{"task": "compute"}\n')}
    for name, (file, data) in damaged.items():
        (root / name).mkdir()
        (root / name / file).write_bytes(data)
    return root


@pytest.fixture
def runs_root(hostile_runs):
    """The base address of a server whose runs page lists :func:`hostile_runs`."""
    app = create_app(tiny_model("llama"), {}, ServeSettings(web=True, runs=str(hostile_runs)))
    with serving(app) as base:
        yield base.removesuffix("/v1")


def test_data_in_a_report_is_text_and_the_report_runs_no_script(runs_root):
    code, headers, page = request(runs_root, "/runs/injected/view/")
    assert code == 200 and headers["content-security-policy"] == REPORT_POLICY
    assert headers["x-frame-options"] == "SAMEORIGIN"
    text = page.decode()
    assert "&lt;img src=x onerror=" in text and "<img src=x" not in text
    for path in ("/web/", "/web/runs.html", "/v1/models", "/runs/list", "/nowhere"):
        code, headers, _ = request(runs_root, path)
        assert headers["content-security-policy"] == PAGE_POLICY, path
        assert headers["x-frame-options"] == "DENY" and headers["x-content-type-options"] \
            == "nosniff"


def test_damaged_runs_are_listed_as_damaged_and_the_rest_stay_readable(runs_root):
    code, _, data = request(runs_root, "/runs/list")
    assert code == 200
    runs = {r["name"]: r for r in json.loads(data)["runs"]}
    assert runs["bad-commands"]["status"].startswith("damaged: JSONDecodeError")
    assert runs["not-utf8"]["records"] == 2 and runs["no-stage"]["stages"] == [
        "(no stage named)"]
    assert runs["injected"]["status"] == "analysed"
    code, _, data = request(runs_root, "/runs/not-utf8/item/q1")
    assert code == 200 and json.loads(data)["unreadable"] == 1
    assert len(json.loads(data)["records"]) == 1
    for path in ("/runs/a%00b/view/", "/runs/" + "x" * 300 + "/view/",
                 "/runs/a%00b/item/q1"):
        code, headers, data = request(runs_root, path)
        assert code == 404 and headers["content-type"] == "application/json", path
        assert "no run directory" in json.loads(data)["error"]["message"]


skip_browser = pytest.mark.skipif(
    BROWSER is None or DRIVER is None,
    reason="Debian's chromium and chromium-driver are not installed (make test installs them)")


@skip_browser
def test_no_payload_in_data_a_vector_name_or_a_run_name_runs_in_the_browser(
        browser, hostile_runs):  # noqa: F811
    from selenium.webdriver.common.by import By

    model = tiny_model("llama")
    vectors = {PAYLOAD: random_vector(model, [1, 2], seed=1)}
    app = create_app(model, vectors, ServeSettings(web=True, runs=str(hostile_runs)))
    with serving(app) as base:
        root = base.removesuffix("/v1")
        browser.get(root + "/web/")
        wait(browser, "return document.body.dataset.ready === 'true'")
        legend = browser.find_element(By.CSS_SELECTOR, "fieldset.vector legend").text
        assert PAYLOAD in legend  # shown as text
        assert not browser.find_elements(By.CSS_SELECTOR, "#vectors img")
        browser.get(root + "/web/runs.html")
        wait(browser, "return document.body.dataset.ready === 'true'")
        names = [r.get_attribute("data-run") for r in
                 browser.find_elements(By.CSS_SELECTOR, "#runs tbody tr")]
        assert PAYLOAD.replace("/", "") in names
        assert not browser.find_elements(By.CSS_SELECTOR, "#runs img")
        browser.find_element(By.CSS_SELECTOR, "tr[data-run='injected'] button").click()
        wait(browser, "return document.getElementById('report').src.endsWith('/view/')")
        assert browser.find_element(By.ID, "report").get_attribute("sandbox") == ""
        browser.switch_to.frame("report")
        wait(browser, "return document.body && document.body.innerText.includes('onerror')")
        assert not browser.find_elements(By.CSS_SELECTOR, "img[onerror]")
        browser.switch_to.default_content()
        time.sleep(0.5)
        assert browser.title != "pwned"


def test_the_key_is_taken_once_from_a_web_page_then_dropped_and_never_logged(tmp_path):
    import uvicorn

    model = tiny_model("llama")
    app = create_app(model, {}, ServeSettings(web=True, api_key=KEY))
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    access = logging.getLogger("uvicorn.access")
    handler = Keep()
    access.addHandler(handler)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="info",
                                           log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        root = f"http://127.0.0.1:{port}"
        code, headers, _ = request(root, f"/web/?key={KEY}")
        assert code == 303 and headers["location"] == "/web/"
        cookie = headers["set-cookie"].split(";")[0]
        assert "HttpOnly" in headers["set-cookie"] and "SameSite=Strict" in headers["set-cookie"]
        code, _, _ = request(root, "/web/rate.html?token=t1&key=" + KEY)
        assert code == 303
        assert request(root, "/web/", {"Cookie": cookie})[0] == 200
        code, _, data = request(root, f"/v1/models?key={KEY}")
        assert code == 401 and "Authorization" in json.loads(data)["error"]["message"]
        assert request(root, "/v1/models", {"Authorization": f"Bearer {KEY}"})[0] == 200
        assert request(root, "/v1/models", {"Cookie": cookie})[0] == 200
        time.sleep(0.2)
        assert seen and not any(KEY in line for line in seen), seen
        assert any("GET /web/?key" not in line and "/web/" in line for line in seen)
    finally:
        access.removeHandler(handler)
        server.should_exit = True
        thread.join(30)


def test_a_host_header_that_is_not_this_servers_is_refused():
    model = tiny_model("llama")
    with serving(create_app(model, {}, ServeSettings(web=True))) as base:
        root = base.removesuffix("/v1")
        for host in ("127.0.0.1", "localhost:8000", "[::1]:80"):
            assert request(root, "/v1/models", {"Host": host})[0] == 200, host
        code, _, data = request(root, "/v1/models", {"Host": "rebound.example.com"})
        assert code == 400 and json.loads(data)["error"]["param"] == "host"
        assert request(root, "/web/", {"Host": "rebound.example.com:8000"})[0] == 400
    named = ServeSettings(allowed_hosts=["lab.example.org"], host="0.0.0.0")
    with serving(create_app(model, {}, named)) as base:
        root = base.removesuffix("/v1")
        for host in ("lab.example.org", "10.1.2.3:8000", "localhost"):
            assert request(root, "/v1/models", {"Host": host})[0] == 200, host
        assert request(root, "/v1/models", {"Host": "other.example.org"})[0] == 400


def test_the_rating_app_limits_its_bodies_and_counts_no_verdict_the_disk_did_not_take(
        sheet, tmp_path, monkeypatch):  # noqa: F811 (the fixture)
    from steerlab.serve import rating
    from steerlab.serve.rating import MAX_COMMENT, RatingSession, create_rating_app

    session = RatingSession(*sheet, tmp_path / "web", ["bob"])
    token = session.tokens["bob"]
    with serving(create_rating_app(session)) as base:
        root = base.removesuffix("/v1")
        huge = json.dumps({"pair_id": "p0001", "preferred": "1", "comment": "x" * (1 << 20)})
        code, reply = raw(root, huge.encode(), f"/rating/{token}/verdict")
        assert code == 413
        long = {"pair_id": "p0001", "preferred": "1", "comment": "x" * (MAX_COMMENT + 1)}
        code, reply = raw(root, json.dumps(long).encode(), f"/rating/{token}/verdict")
        assert code == 400 and "comment" in reply["error"]["message"]

        def full(path, rows):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(rating, "_write_lines", full)
        verdict = json.dumps({"pair_id": "p0001", "preferred": "1"}).encode()
        code, reply = raw(root, verdict, f"/rating/{token}/verdict")
        assert code == 507 and "No space left" in reply["error"]["message"]
        assert session.state("bob")["done"] == 0
        monkeypatch.undo()
        assert raw(root, verdict, f"/rating/{token}/verdict")[0] == 200
        assert session.state("bob")["done"] == 1
