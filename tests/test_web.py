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

from steerlab.serve.app import create_app, serving
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


@pytest.mark.parametrize("path", ["/web/../pyproject.toml", "/web/..%2f..%2fpyproject.toml",
                                  "/web/%2e%2e/app.py", "/web//etc/passwd"])
def test_no_path_outside_the_interface_is_served(path):
    with served() as base:
        root = base.removesuffix("/v1")
        assert status(root + path) == 404
