"""The study page in a real browser: Debian's Chromium, headless, driven by chromedriver (Selenium).

A study built with the bundled models is opened from disk, completed once with the keyboard alone and
once by clicking (with a reload in the middle: nothing is lost), the answers files are downloaded and
`sane study score` reads them; a screenshot of a question shows its images (not blank)."""

from __future__ import annotations

import io
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from sane.data import open_dataset
from sane.study import LibrarySource, build_study, read_answers, score_study

N_TRIPLETS = 5


def _chromium() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (browser and driver):
        pytest.fail("Chromium and chromedriver are needed (Debian: apt-get install chromium chromium-driver; "
                    "`make test` installs them as root)")
    return browser, driver


@pytest.fixture(scope="module")
def study(shapes48, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("page") / "study"
    paths = [p for p, _ in open_dataset(shapes48, split="test").samples]
    key = build_study(out, paths, LibrarySource(n_masks=150, seed=0, batch_size=150), n_triplets=N_TRIPLETS,
                      seed=1, participants=4, progress=False)
    return out, key


@pytest.fixture
def browser(tmp_path):
    binary, driver_path = _chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1366,768"):  # a laptop screen
        options.add_argument(flag)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.downloads = downloads
    yield driver
    driver.quit()


def _downloaded(driver, name: str, timeout: float = 10.0) -> dict:
    path = driver.downloads / name
    deadline = time.monotonic() + timeout
    while not path.is_file() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert path.is_file(), f"{name} was not downloaded: {sorted(p.name for p in driver.downloads.iterdir())}"
    return json.loads(path.read_text())


def _visible(driver, element_id: str) -> bool:
    return driver.find_element(By.ID, element_id).is_displayed()


def _wait_images(driver) -> None:
    deadline = time.monotonic() + 10
    script = ("return Array.from(document.querySelectorAll('#question img')).filter(i => i.offsetParent)"
              ".every(i => i.complete && i.naturalWidth > 0)")
    while not driver.execute_script(script):
        assert time.monotonic() < deadline, "the question's images did not load"
        time.sleep(0.05)


def _progress(driver) -> str:
    return driver.find_element(By.ID, "progress").text


def test_the_page_can_be_completed_with_the_keyboard_alone(study, browser):
    out, key = study
    browser.get((out / "site" / "index.html").as_uri())
    keys = ActionChains(browser)
    keys.send_keys("2").send_keys(Keys.ENTER).perform()  # the focused number field, then Enter starts
    assert _progress(browser) == "Practice question (not scored)"
    _wait_images(browser)
    keys = ActionChains(browser)
    keys.send_keys("b").perform()
    assert "the model matched" in browser.find_element(By.ID, "feedback-text").text
    ActionChains(browser).send_keys(Keys.ENTER).perform()  # "Start the questions" has the focus
    variant = key["assignment"][1]  # participant 2's: the page shows what that variant shows, nothing else
    shows_maps, shows_attributes = variant in ("saliency", "both"), variant in ("attributes", "both")
    assert _visible(browser, "sal-b") == shows_maps and _visible(browser, "att-b") == shows_attributes
    pressed = ["c", Keys.ARROW_LEFT, "1", Keys.ARROW_RIGHT, "2"]
    for number, key_name in enumerate(pressed, 1):
        assert _progress(browser) == f"Question {number} of {N_TRIPLETS}"
        _wait_images(browser)
        ActionChains(browser).send_keys(key_name).perform()
    assert _visible(browser, "done")
    ActionChains(browser).send_keys(Keys.ENTER).perform()  # the focused download button
    answers = _downloaded(browser, f"answers-{key['study']}-p2.json")
    assert answers["participant"] == 2 and answers["variant"] == key["assignment"][1]
    assert [a["choice"] for a in sorted(answers["answers"], key=lambda a: a["position"])] == list("CBBCC")
    assert all(a["ms"] is not None and a["ms"] >= 0 for a in answers["answers"])
    assert answers["practice"]["choice"] == "B"
    assert sorted(a["triplet"] for a in answers["answers"]) == sorted(t["id"] for t in key["triplets"])
    path = browser.downloads / f"answers-{key['study']}-p2.json"
    result = score_study(key, read_answers(key, [path]))
    assert result["variants"][answers["variant"]]["answers"] == N_TRIPLETS


def test_the_page_by_clicking_shows_its_images_survives_a_reload_and_scores(study, browser):
    out, key = study
    participant = next(p for p, v in enumerate(key["assignment"], 1) if v == "both")
    browser.get((out / "site" / "index.html").as_uri() + f"?p={participant}")
    browser.find_element(By.ID, "start").click()
    browser.find_element(By.ID, "answer-c").click()  # the practice question
    browser.find_element(By.ID, "continue").click()
    _wait_images(browser)
    # A question page of the "both" variant: A, B, C, A's two heat maps and the attribute lists, on screen.
    shot = Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB")
    ratio = browser.execute_script("return window.devicePixelRatio")
    for element_id in ("img-a", "img-b", "img-c", "sal-b", "sal-c"):
        element = browser.find_element(By.ID, element_id)
        assert element.is_displayed() and element.size["width"] >= 200, element_id  # big enough to see
        r = element.rect
        box = [round(v * ratio) for v in (r["x"], r["y"], r["x"] + r["width"], r["y"] + r["height"])]
        assert box[3] <= shot.height, f"{element_id} is below the fold of a 1366 x 768 screen"
        pixels = np.asarray(shot.crop(box), dtype=np.float32)
        assert pixels.std() > 10, f"{element_id} looks blank in the screenshot"
    assert len(browser.find_elements(By.CSS_SELECTOR, "#att-b li")) == 3
    for element_id in ("answer-b", "answer-c", "att-c"):  # the whole question fits: no scrolling to answer
        r = browser.find_element(By.ID, element_id).rect
        assert r["y"] + r["height"] <= browser.execute_script("return window.innerHeight"), element_id
    shot.save(out / "question.png")
    first = [browser.find_element(By.ID, "answer-b"), browser.find_element(By.ID, "answer-c")]
    first[0].click()
    browser.find_element(By.ID, "answer-c").click()
    assert _progress(browser) == f"Question 3 of {N_TRIPLETS}"
    browser.refresh()  # a reload resumes where the participant was
    browser.find_element(By.ID, "start").click()
    assert _progress(browser) == f"Question 3 of {N_TRIPLETS}"
    for _ in range(N_TRIPLETS - 2):
        browser.find_element(By.ID, "answer-b").click()
    browser.find_element(By.ID, "download").click()
    answers = _downloaded(browser, f"answers-{key['study']}-p{participant}.json")
    assert answers["variant"] == "both" and len(answers["answers"]) == N_TRIPLETS
    assert [a["choice"] for a in sorted(answers["answers"], key=lambda a: a["position"])] == ["B", "C", "B", "B", "B"]
    shown = browser.find_element(By.ID, "answers-text").get_attribute("value")
    assert json.loads(shown)["answers"] == answers["answers"]  # the copy-and-paste fallback holds the same
    result = score_study(key, read_answers(key, [browser.downloads]))
    truth = {t["id"]: t["answer"] for t in key["triplets"]}
    expected = np.mean([a["choice"] == truth[a["triplet"]] for a in answers["answers"]])
    assert result["variants"]["both"]["accuracy"] == pytest.approx(expected)


def test_a_participant_number_is_required(study, browser):
    out, _ = study
    browser.get((out / "site" / "index.html").as_uri())
    browser.find_element(By.ID, "start").click()
    assert _visible(browser, "intro") and not _visible(browser, "question")
    field = browser.find_element(By.ID, "participant")
    field.send_keys("0")
    browser.find_element(By.ID, "start").click()
    assert "1 or more" in browser.find_element(By.ID, "start-error").text


def test_each_variant_shows_its_explanations_and_nothing_else(study, browser):
    out, key = study
    for participant, variant in enumerate(key["assignment"], 1):
        browser.get((out / "site" / "index.html").as_uri() + f"?p={participant}")
        browser.execute_script("localStorage.clear()")
        browser.find_element(By.ID, "start").click()
        _wait_images(browser)
        shown = {name: _visible(browser, name) for name in ("img-a", "img-b", "img-c", "sal-b", "sal-c", "att-b",
                                                            "att-c")}
        maps, attributes = variant in ("saliency", "both"), variant in ("attributes", "both")
        assert shown == {"img-a": True, "img-b": True, "img-c": True, "sal-b": maps, "sal-c": maps,
                         "att-b": attributes, "att-c": attributes}, variant
