"""A screenshot of a study's first question, as a participant of one variant sees it on a laptop screen
(1366 x 768), taken with headless Chromium (Debian: apt-get install chromium chromium-driver).

    .venv/bin/python examples/study_screenshot.py out/study --variant both --out docs/study-question.png
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", help="a directory `sane study build` wrote")
    parser.add_argument("--variant", default="both", help="show the first question as this variant's participant")
    parser.add_argument("--out", default="study-question.png")
    args = parser.parse_args()
    key = json.loads((Path(args.study) / "key.json").read_text())
    participant = key["assignment"].index(args.variant) + 1
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or ""
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1366,768"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        driver.get((Path(args.study) / "site" / "index.html").resolve().as_uri() + f"?p={participant}")
        driver.find_element(By.ID, "start").click()
        driver.find_element(By.ID, "answer-b").click()  # the practice question
        driver.find_element(By.ID, "continue").click()
        time.sleep(0.5)  # the images load from disk
        driver.save_screenshot(args.out)
    finally:
        driver.quit()
    print(f"wrote {args.out} (participant {participant}, variant {args.variant}, first question)")


if __name__ == "__main__":
    main()
