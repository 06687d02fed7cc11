"""The review UI in a real headless Chromium (Debian's chromium and chromium-driver, driven by Selenium): refused
without signing in and for the wrong role; a reviewer signs in, claims a held prompt, approves it with a note, sees the
audit record, and the requester then gets its completion."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.e2e.platform import Platform
from tests.e2e.test_kafka_api import read_until_final
from tests.e2e.test_safety import HOLD_TENANT, kafka_client, produce, wait_for_item

__all__ = ["kafka_client"]  # the fixture, shared with test_safety

CHROMEDRIVER = shutil.which("chromedriver")
CHROMIUM = shutil.which("chromium")


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    if not (CHROMEDRIVER and CHROMIUM):
        pytest.fail("Debian's chromium and chromium-driver are needed (infra/lib/python.sh installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(5)
    try:
        yield driver
    finally:
        driver.quit()


def sign_in(browser: webdriver.Chrome, base: str, username: str, password: str) -> None:
    browser.get(f"{base}/review/login")
    browser.find_element(By.ID, "username").send_keys(username)
    browser.find_element(By.ID, "password").send_keys(password)
    browser.find_element(By.ID, "sign-in").click()
    if password != "wrong-password":  # wait for the signed-in page, so the session cookie is set before moving on
        browser.find_element(By.ID, "whoami")


async def test_reviewer_signs_in_claims_approves_and_the_held_prompt_is_released(
    platform: Platform,
    kafka_client: tuple[AIOKafkaProducer, AIOKafkaConsumer, str],
    browser: webdriver.Chrome,
) -> None:
    producer, consumer, reply_topic = kafka_client
    request_id = await produce(
        platform, producer, reply_topic, "Call me on +44 20 7946 0958 about the order", tenant_id=HOLD_TENANT
    )
    item_id = await wait_for_item(platform, request_id)
    base = platform.url("safety")

    browser.get(f"{base}/review/items/{item_id}")
    assert browser.find_element(By.ID, "error").text == "Please sign in."
    assert not browser.find_elements(By.ID, "claim")

    sign_in(browser, base, "rita", "wrong-password")
    assert "Wrong user name or password" in browser.find_element(By.ID, "error").text

    sign_in(browser, base, "rita", "reviewer-pass-1")
    assert "rita (reviewer)" in browser.find_element(By.ID, "whoami").text
    browser.get(f"{base}/review/admin")
    assert "Your role may not open this page" in browser.find_element(By.ID, "error").text

    browser.get(f"{base}/review/")
    row = browser.find_element(By.CSS_SELECTOR, f"tr.item[data-id='{item_id}']")
    assert "hold" in row.text and "pii" in row.text and "[PHONE_NUMBER]" in row.text
    row.find_element(By.LINK_TEXT, str(item_id)).click()
    assert "7946" not in browser.find_element(By.ID, "content").text
    browser.find_element(By.ID, "claim").click()
    assert flash_reads(browser, "Claimed.")
    browser.find_element(By.ID, "verdict-approve").click()
    browser.find_element(By.ID, "note").send_keys("a phone number the customer chose to share")
    browser.find_element(By.ID, "decide").click()
    assert flash_reads(browser, "Decision recorded.")
    assert "approve" in browser.find_element(By.ID, "status").text
    audit = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#audit tr.audit")]
    assert any("rita decided" in r and "a phone number the customer chose to share" in r for r in audit), audit
    assert any("system released" in r for r in audit), audit

    events = await read_until_final(consumer, request_id, seconds=60)
    assert events and events[-1]["event"] == "completion_finished"

    browser.find_element(By.ID, "logout").click()
    browser.find_element(By.ID, "sign-in")  # the sign-out has answered: navigating earlier would abort its post
    browser.get(f"{base}/review/")
    assert browser.find_element(By.ID, "error").text == "Please sign in."

    sign_in(browser, base, "ada", "admin-pass-123")
    browser.get(f"{base}/review/admin")
    admin_audit = browser.find_element(By.ID, "audit").text
    assert "decided" in admin_audit and "rita" in admin_audit


def flash_reads(browser: object, text: str, seconds: float = 15) -> bool:
    """A form post navigates: wait for the page that answers it instead of reading the old one."""

    def shown(b: object) -> bool:
        try:
            return b.find_element(By.ID, "flash").text == text  # type: ignore[attr-defined]
        except WebDriverException:
            return False

    WebDriverWait(browser, seconds).until(shown)
    return True
