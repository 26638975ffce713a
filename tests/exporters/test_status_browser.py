"""The status page in a real headless browser: Debian's ``chromium`` driven by ``selenium`` through ``chromedriver``.

The browser's own parser decides what is an element and what is text, so a label value made of HTML must come
out as text there, with no element made of it. Skips here when chromium or its driver is missing; fails in CI.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from chat_turbo_metrics import PerformanceMonitor
from chat_turbo_metrics.alerting import AlertManager
from chat_turbo_metrics.exporters.prometheus import PrometheusExporter
from conftest import make_config, require_tool

HOSTILE = "<img src=x onerror=alert(1)>"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    chromium = require_tool("chromium")
    driver_path = require_tool("chromedriver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root, where chromium's sandbox refuses to start
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(argument)
    # The Debian driver, named explicitly: selenium must not go looking for (or download) another one.
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def served() -> Iterator[tuple[PerformanceMonitor, PrometheusExporter]]:
    monitor = PerformanceMonitor(make_config())
    exporter = PrometheusExporter(host="127.0.0.1", port=0)
    monitor.add_exporter(exporter)
    yield monitor, exporter
    monitor.shutdown()


def test_the_page_shows_a_firing_alert_and_its_labels_and_html_in_a_label_is_text(
    browser: WebDriver, served: tuple[PerformanceMonitor, PrometheusExporter]
) -> None:
    monitor, exporter = served
    manager = AlertManager(monitor, clock=lambda: 1060.0)
    manager.add_rule(
        {"id": "latency", "name": "High API Response Time", "metric": "p95_latency_seconds", "condition": "gt",
         "threshold": 2.0, "duration": 0, "severity": "high"}
    )  # fmt: skip
    monitor.record_gauge("p95_latency_seconds", 3.5, {"endpoint": "/api/chat", "note": HOSTILE})
    manager.evaluate(1000.0)
    assert [a.state for a in manager.alerts()] == ["firing"]

    browser.get(f"http://127.0.0.1:{exporter.port}/status")

    assert browser.title == "chat_turbo_metrics status: 1 firing"
    [row] = browser.find_elements(By.CSS_SELECTOR, "tr.alert")
    cells = [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
    assert cells[0] == "FIRING"  # the state, upper-cased by the page's style
    assert cells[1] == "High API Response Time"
    assert cells[4] == "3.5"
    labels = [label.text for label in row.find_elements(By.CSS_SELECTOR, ".label")]
    assert labels == [
        'alertname="High API Response Time"',
        'endpoint="/api/chat"',
        f'note="{HOSTILE}"',  # the markup, shown as the text it is
        'severity="high"',
    ]
    # No element was made of the label value: no image anywhere, nothing ran its onerror.
    assert browser.find_elements(By.TAG_NAME, "img") == []
    assert browser.find_elements(By.CSS_SELECTOR, ".label *") == []
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018  # reading it raises when no dialog is open
    # The page is self-contained: every chart is drawn, and nothing was fetched from elsewhere.
    charts = browser.find_elements(By.CSS_SELECTOR, ".chart h3")
    assert "Active alerts" in [chart.text for chart in charts]
    resources = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert resources == []
    # Its links are relative (the page may be mounted under a prefix): the JSON beside it has the same alert.
    browser.find_element(By.LINK_TEXT, "status.json").click()
    assert browser.current_url == f"http://127.0.0.1:{exporter.port}/status.json"
    [alert] = json.loads(browser.find_element(By.TAG_NAME, "body").text)["alerts"]
    assert alert["labels"]["note"] == HOSTILE
