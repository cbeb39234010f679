"""`effnet app` in a real headless browser: Debian's chromium + chromedriver, driven by Selenium.

`make test` installs chromium and chromium-driver with apt when they are missing and it can
(root); without them this test is skipped with the reason. The screenshot is kept in
runs/app-screenshot.png for a person to look at.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import ServerProcess
from effnet.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
SCREENSHOT = Path("runs") / "app-screenshot.png"

pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER),
                                reason="no system Chromium/chromedriver (apt-get install chromium chromium-driver)")


@pytest.fixture()
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the test extra")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1000,1100"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_upload_a_photo_and_read_the_top1(browser, data, capsys):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    photo = (data / "imagenet-samples" / "images" / "n01443537_goldfish.JPEG").resolve()
    model = ["--model", "tf_efficientnet_lite0", "--pretrained"]
    assert main(["predict", *model, "--topk", "5", "--json", str(photo)]) == 0
    want = json.loads(capsys.readouterr().out)[0]["top"]
    with ServerProcess(["app", *model]) as url:
        browser.get(url + "/")
        WebDriverWait(browser, 30).until(ec.text_to_be_present_in_element((By.ID, "meta"), "tf_efficientnet_lite0"))
        browser.find_element(By.ID, "file").send_keys(str(photo))
        WebDriverWait(browser, 60).until(lambda d: d.find_element(By.ID, "top1").text not in ("", "…"))
        top1 = browser.find_element(By.ID, "top1").text
        bars = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#bars .name")]
        WebDriverWait(browser, 30).until(
            lambda d: d.execute_script("const i = document.getElementById('cam'); return i.complete && "
                                       "i.naturalWidth > 0"))
        cam_width = browser.execute_script("return document.getElementById('cam').naturalWidth")
        SCREENSHOT.parent.mkdir(exist_ok=True)
        assert browser.save_screenshot(str(SCREENSHOT))
    assert top1 == want[0]["name"] and top1.startswith("goldfish")
    assert len(bars) == 5 and [b.rsplit(":", 1)[0] for b in bars] == [t["name"] for t in want]
    assert bars[0].endswith(f"{100 * want[0]['prob']:.1f}%")
    assert cam_width == 224
    assert SCREENSHOT.stat().st_size > 10_000
