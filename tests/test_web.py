"""The web interface, driven in headless Chromium (Debian's chromium and chromedriver, which
`make test` installs): the playground's steered reply differs from the unsteered one and at
multiplier 0 equals it; the pages and the API refuse a missing key and paths outside the
interface.

Skipped, with the reason printed, where the browser or selenium is not installed.
"""

from __future__ import annotations

import shutil
import urllib.error
import urllib.request

import pytest
from tiny import random_vector, tiny_model

from steerlab.serve.app import create_app
from steerlab.serve.launch import serving
from steerlab.serve.schema import ServeSettings

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed "
                                "(pip install -e .[dev])")
BROWSER, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    BROWSER is None or DRIVER is None,
    reason="Debian's chromium and chromium-driver are not installed (make test installs them)")

KEY = "web-test-key"


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--window-size=900,1200"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(DRIVER))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def served(api_key: str | None = None):
    model = tiny_model("llama")
    vectors = {"fox": random_vector(model, [1, 2], seed=1)}
    settings = ServeSettings(web=True, max_context=1024, api_key=api_key)
    return serving(create_app(model, vectors, settings))


def wait(driver, script: str, timeout: float = 60.0):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: d.execute_script(script))


def side_by_side(driver, multiplier: float) -> tuple[str, str]:
    """Set the vector's slider, generate both replies; their texts once both streams ended."""
    driver.execute_script(
        "const s = document.querySelector('.multiplier'); s.value = arguments[0];"
        "s.dispatchEvent(new Event('input'));"
        "document.getElementById('max-tokens').value = 8;"
        "for (const id of ['unsteered', 'steered'])"
        "  delete document.getElementById(id).dataset.done;",
        multiplier)
    driver.find_element("id", "generate").click()
    wait(driver, "return document.getElementById('unsteered').dataset.done === 'true' && "
                 "document.getElementById('steered').dataset.done === 'true'")
    assert driver.find_element("id", "error").text == ""
    return (driver.execute_script("return document.getElementById('unsteered').textContent"),
            driver.execute_script("return document.getElementById('steered').textContent"))


def test_the_playground_steers_and_multiplier_zero_is_unsteered(browser):
    with served() as base:
        browser.get(base.removesuffix("/v1") + "/web/")
        wait(browser, "return document.body.dataset.ready === 'true'")
        assert "fox" in browser.find_element("id", "vectors").text
        plain, steered = side_by_side(browser, 8)
        assert plain and steered and plain != steered
        used = browser.execute_script("return document.getElementById('steering-used')"
                                      ".textContent")
        assert '"vector": "fox"' in used and '"multiplier": 8' in used
        assert '"steering": [{"vector":"fox","multiplier":8}]' in browser.execute_script(
            "return document.getElementById('copy-openai').textContent")
        plain_again, zero = side_by_side(browser, 0)
        assert zero == plain_again == plain


def test_a_bad_value_is_shown_as_the_api_words_it(browser):
    with served() as base:
        browser.get(base.removesuffix("/v1") + "/web/")
        wait(browser, "return document.body.dataset.ready === 'true'")
        browser.execute_script(
            "const s = document.querySelector('.multiplier'); s.value = 4;"
            "document.querySelector('.layers').value = '99';")
        browser.find_element("id", "generate").click()
        wait(browser, "return document.getElementById('error').textContent !== ''")
        assert "layers" in browser.find_element("id", "error").text


def status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def test_without_the_key_no_page_or_call_works_and_a_key_once_in_the_address_does(browser):
    with served(api_key=KEY) as base:
        root = base.removesuffix("/v1")
        assert status(root + "/web/") == 401
        assert status(root + "/web/playground.js") == 401
        assert status(base + "/models") == 401
        browser.get(root + "/web/")
        assert "missing API key" in browser.page_source
        browser.get(root + f"/web/?key={KEY}")  # sets the cookie the page's calls then carry
        wait(browser, "return document.body.dataset.ready === 'true'")
        plain, steered = side_by_side(browser, 8)
        assert plain != steered
        browser.delete_all_cookies()


def test_the_servers_root_sends_a_browser_to_the_interface(browser):
    """Opening the server's root address shows the playground, not a 404; a key handed over
    there is taken as on the interface's pages (remembered, dropped from the address)."""
    with served(api_key=KEY) as base:
        root = base.removesuffix("/v1")
        assert status(root + "/") == 401
        browser.get(root + f"/?key={KEY}")
        wait(browser, "return document.body.dataset.ready === 'true'")
        assert browser.current_url == root + "/web/"
        browser.delete_all_cookies()
    with served() as base:
        with urllib.request.urlopen(base.removesuffix("/v1") + "/?x=1", timeout=30) as response:
            assert response.url.endswith("/web/?x=1") and response.status == 200


@pytest.mark.parametrize("path", ["/web/../pyproject.toml", "/web/..%2f..%2fpyproject.toml",
                                  "/web/%2e%2e/app.py", "/web//etc/passwd"])
def test_no_path_outside_the_interface_is_served(path):
    with served() as base:
        root = base.removesuffix("/v1")
        assert status(root + path) == 404


# ---- blind rating -------------------------------------------------------------------------------

CHOICES = ["1", "2", "tie", "2", "1", "1"]
COMMENT = "the second is clearer"


@pytest.fixture
def sheet(tmp_path):
    from tiny import generation_records

    from steerlab.evaluation.judges.blind import export_blind

    records = generation_records([f"steered answer {i}" for i in range(6)],
                                 [f"plain answer {i}" for i in range(6)])
    export_blind(records, "steered+4", tmp_path / "sheet.csv", tmp_path / "key.json", seed=3)
    return tmp_path / "sheet.csv", tmp_path / "key.json"


def rate(driver, choice: str, done: int, comment: str = "") -> None:
    """Give one verdict with the keyboard (a comment typed first); wait until it is saved."""
    from selenium.webdriver.common.by import By

    if comment:
        driver.find_element(By.ID, "comment").send_keys(comment)
        driver.find_element(By.CSS_SELECTOR, f"[data-choice='{choice}']").click()
    else:
        driver.find_element(By.TAG_NAME, "body").send_keys("t" if choice == "tie" else choice)
    wait(driver, f"return document.body.dataset.done === '{done}'")


def test_a_rating_session_resumed_after_closing_the_tab_writes_what_the_csv_path_writes(
        browser, sheet, tmp_path):
    import csv
    import json

    from selenium.webdriver.common.by import By

    from steerlab.evaluation.judges.blind import import_ratings
    from steerlab.serve.rating import RatingSession, create_rating_app

    sheet_path, key_path = sheet
    session = RatingSession(sheet_path, key_path, tmp_path / "web", ["alice"])
    with serving(create_rating_app(session)) as base:
        link = base.removesuffix("/v1") + f"/web/rate.html?token={session.tokens['alice']}"
        browser.get(link)
        wait(browser, "return document.body.dataset.ready === 'true'")
        assert "0 / 6" in browser.find_element(By.ID, "progress").text
        page = browser.page_source
        assert "steered+4" not in page and "unsteered" not in page  # arms hidden
        rate(browser, CHOICES[0], 1)
        rate(browser, CHOICES[1], 2, COMMENT)
        rate(browser, "1", 3)  # a slip, undone with the keyboard
        browser.find_element(By.TAG_NAME, "body").send_keys("u")
        wait(browser, "return document.body.dataset.done === '2'")
        rate(browser, CHOICES[2], 3)
        first = browser.current_window_handle  # the tab is closed and the link reopened
        browser.switch_to.new_window("tab")
        browser.switch_to.window(first)
        browser.close()
        browser.switch_to.window(browser.window_handles[0])
        browser.get(link)
        wait(browser, "return document.body.dataset.ready === 'true'")
        assert "3 / 6" in browser.find_element(By.ID, "progress").text
        for done, choice in enumerate(CHOICES[3:], start=4):
            rate(browser, choice, done)
        assert browser.find_element(By.ID, "finished").is_displayed()
    web = [json.loads(line) for line in
           session.verdicts_path("alice").read_text().splitlines()]
    rows = list(csv.DictReader(sheet_path.open()))  # the CSV path: the same choices, by hand
    for row, choice in zip(rows, CHOICES):
        row["preferred"] = choice
        row["comment"] = COMMENT if choice == CHOICES[1] and row is rows[1] else ""
    filled = tmp_path / "filled.csv"
    with filled.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, rows[0].keys())
        writer.writeheader()
        writer.writerows(rows)
    assert web == import_ratings(filled, key_path, rater="alice")
    assert len(web) == 6


def test_a_rating_link_checks_what_it_is_sent(sheet, tmp_path):
    import json

    from test_serve_hostile import raw

    from steerlab.serve.rating import RatingSession, create_rating_app

    session = RatingSession(*sheet, tmp_path / "web", ["bob"])
    with serving(create_rating_app(session, api_key=KEY)) as base:
        root = base.removesuffix("/v1")
        token = session.tokens["bob"]
        assert status(root + f"/rating/{token}/state") == 401  # no key
        assert status(root + f"/web/rate.html?token={token}") == 401

        def post(path: str, body: dict) -> tuple[int, dict]:
            return raw(root, json.dumps(body).encode(), path,
                       headers={"Authorization": f"Bearer {KEY}"})

        code, body = post(f"/rating/{token}/verdict", {"pair_id": "p0001", "preferred": "3"})
        assert code == 400 and "preferred" in body["error"]["message"]
        code, body = post(f"/rating/{token}/verdict", {"pair_id": "p9999", "preferred": "1"})
        assert code == 400 and "p9999" in body["error"]["message"]
        code, body = post("/rating/not-a-token/verdict", {"pair_id": "p0001", "preferred": "1"})
        assert code == 404
        code, body = post(f"/rating/{token}/undo", {})
        assert code == 409 and "nothing to undo" in body["error"]["message"]
        assert post(f"/rating/{token}/verdict", {"pair_id": "p0001", "preferred": "1"})[0] == 200
        code, body = post(f"/rating/{token}/verdict", {"pair_id": "p0001", "preferred": "2"})
        assert code == 409


# ---- runs ---------------------------------------------------------------------------------------

@pytest.fixture
def runs_folder(tmp_path):
    """Two run directories (one analysed, one without a report) and a file beside them."""
    import json

    from tiny import generation_records

    from steerlab.analysis.run_analysis import write_analysis

    root = tmp_path / "runs"
    done, fresh = root / "analysed", root / "fresh"
    for run in (done, fresh):
        run.mkdir(parents=True)
        (run / "commands.jsonl").write_text(json.dumps({"command": "generate-eval"}) + "\n")
    records = generation_records(["steered a", "steered b"], ["plain a", "plain b"])
    (done / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    write_analysis(done, records)
    (tmp_path / "secret.txt").write_text("not for the page")
    return root


def test_the_runs_page_lists_runs_opens_a_report_and_shows_an_item_across_arms(browser,
                                                                              runs_folder):
    from selenium.webdriver.common.by import By

    model = tiny_model("llama")
    app = create_app(model, {}, ServeSettings(web=True, runs=str(runs_folder)))
    with serving(app) as base:
        browser.get(base.removesuffix("/v1") + "/web/runs.html")
        wait(browser, "return document.body.dataset.ready === 'true'")
        rows = browser.find_elements(By.CSS_SELECTOR, "#runs tbody tr")
        assert sorted(r.get_attribute("data-run") for r in rows) == ["analysed", "fresh"]
        fresh = browser.find_element(By.CSS_SELECTOR, "tr[data-run='fresh']").text
        assert "none yet" in fresh
        browser.find_element(By.CSS_SELECTOR, "tr[data-run='analysed'] button").click()
        wait(browser, "return document.getElementById('report').src.endsWith('/view/')")
        browser.switch_to.frame("report")
        wait(browser, "return document.body && document.body.innerText.includes('Analysis of')")
        browser.switch_to.default_content()
        browser.find_element(By.ID, "item-id").send_keys("q1")
        browser.find_element(By.CSS_SELECTOR, "#item-form button").click()
        wait(browser, "return document.getElementById('item').dataset.count === '2'")
        shown = browser.find_element(By.ID, "item").text
        assert "steered b" in shown and "plain b" in shown and "unsteered" in shown


@pytest.mark.parametrize("path", [
    "/runs/..%2fsecret.txt/view/", "/runs/analysed/view/..%2f..%2fsecret.txt",
    "/runs/analysed/view/%2e%2e/%2e%2e/secret.txt", "/runs/nope/view/",
    "/runs/analysed/view/commands.txt"])
def test_the_runs_api_reads_nothing_outside_a_run_directory(runs_folder, path):
    model = tiny_model("llama")
    with serving(create_app(model, {}, ServeSettings(web=True, runs=str(runs_folder)))) as base:
        root = base.removesuffix("/v1")
        assert status(root + "/runs/analysed/view/") == 200
        assert status(root + path) == 404


def test_the_sweep_answers_at_each_multiplier_and_zero_is_the_unsteered_reply(browser):
    with served() as base:
        browser.get(base.removesuffix("/v1") + "/web/")
        wait(browser, "return document.body.dataset.ready === 'true'")
        plain, _ = side_by_side(browser, 0)
        browser.execute_script("document.getElementById('sweep-multipliers').value = '-8,0,8';")
        browser.find_element("id", "sweep").click()
        wait(browser, "return [...document.querySelectorAll('.sweep-reply')]"
                      ".filter((c) => c.dataset.done === 'true').length === 3")
        replies = browser.execute_script(
            "return [...document.querySelectorAll('.sweep-reply')].map((c) => c.textContent)")
        assert replies[1] == plain and replies[0] != plain and replies[2] != plain


def test_the_pages_fit_a_narrow_window(browser):
    with served() as base:
        browser.set_window_size(420, 900)
        try:
            for page in ("/web/", "/web/runs.html"):
                browser.get(base.removesuffix("/v1") + page)
                wait(browser, "return document.body.dataset.ready === 'true'")
                assert browser.execute_script(
                    "return document.documentElement.scrollWidth <= "
                    "document.documentElement.clientWidth + 1"), page
        finally:
            browser.set_window_size(900, 1200)


def test_a_report_page_embeds_only_its_own_folders_plots(tmp_path):
    from steerlab.analysis.page import html_page

    run = tmp_path / "run"
    run.mkdir()
    (run / "own.png").write_bytes(b"\x89PNG own")
    (tmp_path / "outside.png").write_bytes(b"\x89PNG outside")
    page = html_page("![a](own.png) ![b](../outside.png)", run, "r")
    assert "data:image/png;base64," in page and 'src="../outside.png"' in page
