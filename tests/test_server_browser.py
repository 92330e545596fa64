"""The web page in Debian's headless Chromium (selenium + chromium-driver) against a real server on a
free loopback port: type a query and see thumbnails, upload an image, "more like this", toggle re-rank."""

from __future__ import annotations

import shutil
import socket
import threading
import time

import pytest

pytest.importorskip("fastapi", reason="the server extra is not installed (pip install 'mbm[server]')")
pytest.importorskip("uvicorn", reason="the server extra is not installed (pip install 'mbm[server]')")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
if not (CHROMIUM and DRIVER):
    pytest.skip("Chromium or chromedriver missing (apt-get install chromium chromium-driver)", allow_module_level=True)

from conftest import make_images  # noqa: E402
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait as _Wait  # noqa: E402


def WebDriverWait(driver, seconds, **_):  # noqa: N802 - the page re-renders its grid: stale elements are retried
    return _Wait(driver, seconds, ignored_exceptions=(StaleElementReferenceException,))


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_encoder):
    import uvicorn

    from mbm import Engine
    from mbm.server import ServerConfig, create_app

    root = tmp_path_factory.mktemp("browser")
    make_images(root / "photos", 8)
    with Engine.open(root / "store", "photos", model="mbm-tiny", encoder=tiny_encoder) as eng:
        eng.index([root / "photos"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(
        ServerConfig(store=root / "store"), {"photos": Engine.open(root / "store", "photos", encoder=tiny_encoder)}
    )
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    app.state.collections.wait_ready(30)
    yield f"http://127.0.0.1:{port}", root
    srv.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    try:
        driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    except Exception as e:  # noqa: BLE001 - a browser that cannot start is a skip, with the reason
        pytest.skip(f"headless Chromium did not start: {e}")
    yield driver
    driver.quit()


def loaded_thumbnails(driver, n_min=1):
    def ready(d):
        imgs = d.find_elements(By.CSS_SELECTOR, "#results .hit img")
        done = [i for i in imgs if d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", i)]
        return imgs if len(done) >= n_min else False

    return WebDriverWait(driver, 20).until(ready)


def test_query_upload_more_like_this_and_rerank(server, browser):
    url, root = server
    browser.get(url + "/")
    WebDriverWait(browser, 10).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#collection option"))
    box = browser.find_element(By.ID, "q")
    box.send_keys("red square\n")
    imgs = loaded_thumbnails(browser, 3)
    assert len(imgs) == 8
    assert "0." in browser.find_element(By.CSS_SELECTOR, "#results .hit .meta").text  # score shown
    # upload an image: the same picture comes first
    browser.find_element(By.ID, "file").send_keys(str(root / "photos" / "img0004.png"))
    WebDriverWait(browser, 20).until(
        lambda d: "img0004.png" in d.find_element(By.CSS_SELECTOR, "#results .hit .meta").text
    )
    # more like this on the second result: that item becomes the first
    second = browser.find_elements(By.CSS_SELECTOR, "#results .hit")[1]
    wanted = second.get_attribute("data-id")
    second.find_element(By.CSS_SELECTOR, "button.more").click()

    def found_itself(d):  # its own stored vector scores 1.000 (random tiny weights may tie others with it)
        cards = d.find_elements(By.CSS_SELECTOR, "#results .hit")
        return (
            cards
            and not d.find_element(By.ID, "status").text.startswith("searching")
            and any(
                c.get_attribute("data-id") == wanted and " 1.000" in c.find_element(By.CSS_SELECTOR, ".meta").text
                for c in cards
            )
        )

    WebDriverWait(browser, 20).until(found_itself)
    # the re-rank toggle re-runs the last query with rerank on: mbm-tiny has no fusion head, so the page
    # shows the server's message naming it; toggled off again, results come back
    box.clear()
    box.send_keys("red square\n")
    loaded_thumbnails(browser, 3)
    browser.find_element(By.ID, "rerank").click()
    WebDriverWait(browser, 20).until(lambda d: "fusion" in d.find_element(By.ID, "status").text)
    browser.find_element(By.ID, "rerank").click()
    WebDriverWait(browser, 20).until(lambda d: "results" in d.find_element(By.ID, "status").text)
