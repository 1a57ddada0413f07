"""The page of `ulixes-onnx serve` in a real headless Chromium (Debian's chromium and chromium-driver).

A missing browser fails the test with what to install: the page is a requirement, not an option.
"""

from __future__ import annotations

import io
import shutil
import time
import zipfile
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from ulixes_onnx.cloaking.files import OutputOptions, PhotoFile, cloak_file
from ulixes_onnx.cloaking.pipeline import Cloaker
from ulixes_onnx.cloaking.settings import DEFAULT_MODELS

# Slow: drives a real browser.
pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOT = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "serve-page-2026-12-05.png"


@pytest.fixture
def browser(tmp_path):
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.is_file()]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not found: install the browser with "
            "`apt-get update && apt-get install -y chromium chromium-driver`"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1500"):
        options.add_argument(argument)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    driver.downloads = downloads
    yield driver
    driver.quit()


def downloaded(folder: Path, name: str, timeout: float = 30.0) -> bytes:
    path = folder / name
    deadline = time.monotonic() + timeout
    while not path.is_file() or any(folder.glob("*.crdownload")):
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} was not downloaded; the folder holds {sorted(folder.iterdir())}")
        time.sleep(0.1)
    return path.read_bytes()


def test_upload_cloak_view_and_download_in_a_browser(browser, live_server, store, astronaut_png, tmp_path):
    browser.get(live_server.url)
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#models input:checked"))
    checked = [
        box.get_attribute("value") for box in browser.find_elements(By.CSS_SELECTOR, "#models input:checked")
    ]
    assert checked == list(DEFAULT_MODELS)
    hint = browser.find_element(By.ID, "target-hint").text
    assert "dlib-resnet: threshold 0.6, target at low 0.68" in hint and "sface: threshold 0.55" in hint

    browser.find_element(By.ID, "files").send_keys(str(astronaut_png))
    card = browser.find_element(By.CSS_SELECTOR, "article.photo")
    WebDriverWait(browser, 180).until(lambda d: card.get_attribute("data-status") in ("protected", "failed"))
    assert card.find_element(By.CSS_SELECTOR, ".status").text == "protected"

    (row,) = card.find_elements(By.CSS_SELECTOR, ".faces tbody tr")
    assert row.get_attribute("data-protected") == "true"
    assert "every model places it beyond its threshold" in row.text
    model = row.find_element(By.CSS_SELECTOR, ".model[data-model='dlib-resnet']")
    assert float(model.get_attribute("data-distance")) > float(model.get_attribute("data-threshold")) + 0.02
    assert "DSSIM 0.00" in row.text

    # Before/after at 1:1, with the face box drawn where the face is.
    after = card.find_element(By.CSS_SELECTOR, "img.after")
    WebDriverWait(browser, 10).until(lambda d: after.get_attribute("naturalWidth") == "512")
    assert after.size == {"width": 512, "height": 512}
    (box,) = card.find_elements(By.CSS_SELECTOR, "svg.boxes rect")
    assert 150 < float(box.get_attribute("x")) < 250 and box.get_attribute("class") == "protected"
    slider = card.find_element(By.CSS_SELECTOR, ".slider")
    browser.execute_script("arguments[0].value = 30; arguments[0].dispatchEvent(new Event('input'))", slider)
    assert "30%" in after.value_of_css_property("clip-path")
    browser.execute_script("arguments[0].scrollIntoView()", card)
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SCREENSHOT))

    # The download is the file `cloak` writes for the same photo, alone and in the zip.
    expected = cloak_file(Cloaker(store=store), PhotoFile(astronaut_png), OutputOptions(output_dir=tmp_path))
    card.find_element(By.CSS_SELECTOR, "a.download").click()
    assert downloaded(browser.downloads, "astronaut_cloaked.png") == expected.output.read_bytes()
    browser.find_element(By.ID, "download-all").click()
    with zipfile.ZipFile(io.BytesIO(downloaded(browser.downloads, "cloaked-photos.zip"))) as archive:
        assert archive.testzip() is None
        assert archive.namelist() == ["astronaut_cloaked.png"]
        assert archive.read("astronaut_cloaked.png") == expected.output.read_bytes()
    # The server kept nothing once the page had the result.
    assert list(live_server.app.state.service.queue.root.iterdir()) == []
    shutil.rmtree(browser.downloads)


def test_a_bad_file_shows_its_error(browser, live_server, tmp_path):
    not_a_photo = tmp_path / "notes.png"
    not_a_photo.write_text("not a photo")
    browser.get(live_server.url)
    browser.find_element(By.ID, "files").send_keys(str(not_a_photo))
    card = browser.find_element(By.CSS_SELECTOR, "article.photo")
    WebDriverWait(browser, 60).until(lambda d: card.get_attribute("data-status") == "failed")
    assert "not a photo" in card.find_element(By.CSS_SELECTOR, ".error").text
