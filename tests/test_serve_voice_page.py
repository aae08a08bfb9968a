"""The voice page `pocketomni serve` hosts at `/`, in headless Chromium (Debian's chromium and
chromedriver through Selenium) with Chromium's fake media flags feeding a spoken WAV as the
microphone: the page records it, the server hears it (audio tokens in the prompt), the page shows the
transcript the server produced and receives every audio sample of the spoken reply; the next turn
continues the cached conversation and the stop button cancels it on the server.
The first test writes the README's screenshot (docs/screenshots/serve_voice_page.png)."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from serve_harness import running_server, wait_for_record

import pocketomni as po
from pocketomni.serve import ServeConfig

SHOT = Path(__file__).resolve().parent.parent / "docs" / "screenshots" / "serve_voice_page.png"


@pytest.fixture(scope="module")
def spoken_wav(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("voice") / "question.wav"
    subprocess.run(["espeak-ng", "-w", str(out), "What is the weather like today?"], check=True)
    return out


@pytest.fixture(scope="module")
def browser(spoken_wav):
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=900,700",
                 "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                 f"--use-file-for-fake-audio-capture={spoken_wav}", "--autoplay-policy=no-user-gesture-required"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(options=opts, service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"))
    yield driver
    driver.quit()


def page_state(driver) -> dict:
    return driver.execute_script("return Object.assign({}, window.pocketomni)")


def wait_until(driver, cond, timeout: float = 180.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = page_state(driver)
        assert not s.get("error"), s["error"]
        if cond(s):
            return s
        time.sleep(0.1)
    raise AssertionError(f"the page did not get there: {page_state(driver)}")


def test_voice_page_talks_and_stops(converted_tiny, browser) -> None:
    with po.Omni.load_sync(converted_tiny("base", "f32"), n_threads=1) as omni, \
            running_server(omni, ServeConfig()) as r:
        browser.get(r.base_url.removesuffix("/v1") + "/?max_tokens=16&max_codes=80&seed=3")
        wait_until(browser, lambda s: s["model"] == r.server.model_id)
        talk = browser.find_element(By.ID, "talk")
        assert talk.is_enabled() and browser.find_element(By.ID, "voice").text.split() == ["Chelsie", "Ethan"]

        talk.click()  # the fake microphone plays the spoken question
        wait_until(browser, lambda s: s["recording"])
        time.sleep(2.0)
        talk.click()  # send
        s = wait_until(browser, lambda s: s["turns"] == 1 and not s["busy"])
        rec = wait_for_record(r.server)
        assert rec.finish_reason == "length" and rec.media_tokens > 0  # the server heard the recording
        assert s["transcript"] == rec.text != ""
        assert browser.find_elements(By.CSS_SELECTOR, ".turn.assistant")[0].text == rec.text
        assert s["audioSamples"] == rec.audio_codes * 480 == 80 * 480  # every sample of the spoken reply
        assert s["chunks"] > 1
        SHOT.parent.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(SHOT))


def test_stop_button_cancels_the_reply(converted_tiny, browser) -> None:
    with po.Omni.load_sync(converted_tiny("base", "f32"), n_threads=1) as omni, \
            running_server(omni, ServeConfig()) as r:
        browser.get(r.base_url.removesuffix("/v1") + "/?max_tokens=16&max_codes=60&seed=3")
        wait_until(browser, lambda s: s["model"] == r.server.model_id)
        talk = browser.find_element(By.ID, "talk")
        talk.click()
        wait_until(browser, lambda s: s["recording"])
        time.sleep(1.0)
        talk.click()
        wait_until(browser, lambda s: s["turns"] == 1 and not s["busy"])
        wait_for_record(r.server)
        # raise the limits in place (the conversation stays) and ask again: a long reply
        browser.execute_script("history.replaceState(null, '', '/?max_tokens=3000&max_codes=4000')")
        talk.click()
        wait_until(browser, lambda s: s["recording"])
        time.sleep(1.0)
        talk.click()
        wait_until(browser, lambda s: s["busy"] and len(s["transcript"]) > 0)
        browser.find_element(By.ID, "stop").click()
        s = wait_until(browser, lambda s: not s["busy"])
        rec = wait_for_record(r.server)
        assert rec.reused_messages == 2  # the second turn continued the first one's cached chat
        assert rec.finish_reason == "disconnected" and rec.tokens_after_cancel is not None
        assert 0 <= rec.tokens_after_cancel <= 1
        assert s["turns"] == 1 and "stopped" in browser.find_element(By.ID, "status").text
        assert browser.find_elements(By.CSS_SELECTOR, ".turn.assistant.interrupted")
