"""The static leaderboard in a real headless browser (Debian's chromium + chromedriver through selenium): the page
opens from site/index.html with no server, the table sorts on a click, the figures render, and every number cell
equals its entry's value."""
from __future__ import annotations

import copy
import shutil

import pytest

from benchmark.cli import main
from benchmark.entry import BLOCK, Entry, read_entry, write_entry
from benchmark.site import boards
from evaluation.record import ResultRecord

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def _variant(entry: Entry, name: str, scale: float, standard: bool = False) -> Entry:
    """The entry under another name with its clean and AutoAttack balanced accuracies scaled."""
    data = copy.deepcopy(entry.record.to_dict())
    data[BLOCK]["name"] = name
    data[BLOCK]["protocol"]["standard"] = standard
    data["clean"]["bacc"] *= scale
    for section in data["autoattack"].values():
        section["bacc"] *= scale * scale
    return Entry(ResultRecord.from_dict(data))


@pytest.fixture(scope="module")
def entries(quick_entry, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench_site_entries")
    entry = read_entry(quick_entry.path)
    made = [entry, _variant(entry, "half", 0.5), _variant(entry, "most", 0.8)]
    for e in made:
        write_entry(folder, e)
    return folder, made


def test_boards_never_mix_protocol_versions_or_standing(entries):
    _, made = entries
    standard = _variant(made[0], "standard-one", 0.9, standard=True)
    keys = boards([*made, standard])
    assert {k for k in keys if k[2]} == {(standard.protocol_label, "linf", True), (standard.protocol_label, "l2", True)}
    assert [e.name for e in keys[(made[0].protocol_label, "linf", False)]] == ["tiny-erm", "half", "most"]


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="chromium and chromium-driver are not installed "
                    "(apt-get install -y chromium chromium-driver)")
def test_the_page_opens_offline_sorts_and_shows_the_entries_numbers(entries, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    folder, made = entries
    assert main(["build", str(folder), "--out", str(tmp_path / "site")]) == 0
    html = (tmp_path / "site" / "index.html").read_text()
    assert "http://" not in html and "https://" not in html  # nothing fetched: no CDN
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get((tmp_path / "site" / "index.html").as_uri())
        driver.find_element(By.PARTIAL_LINK_TEXT, "Linf (non-standard)").click()
        assert "Linf" in driver.title
        rows = driver.find_elements(By.CSS_SELECTOR, "table.leaderboard tbody tr")
        assert len(rows) == 3
        by_name = {e.name: e.metrics("linf") for e in made}
        for row in rows:
            metrics = by_name[row.get_attribute("data-entry")]
            for column, key in (("clean_bacc", "test/clean_bacc"), ("aa_bacc@8/255", "test/aa_bacc@8_255"),
                                ("clean_ece", "test/clean_ece"), ("aa_nll", "test/aa_nll@8_255"),
                                ("corr_bacc", "test/corr_bacc")):
                cell = row.find_element(By.CSS_SELECTOR, f'td[data-column="{column}"]')
                value = [v for k, v in metrics.items() if str(k) == key][0]
                assert float(cell.get_attribute("data-value")) == value and cell.text == f"{value:.4f}"

        def order():
            return [r.get_attribute("data-entry") for r in
                    driver.find_elements(By.CSS_SELECTOR, "table.leaderboard tbody tr")]

        header = driver.find_element(By.CSS_SELECTOR, 'th[data-column="clean_bacc"]')
        header.click()
        assert order() == ["half", "most", "tiny-erm"]
        header.click()
        assert order() == ["tiny-erm", "most", "half"]
        for figure in ("robust-vs-clean", "calibration", "corruption-heatmap"):
            svg = driver.find_element(By.CSS_SELECTOR, f"#{figure} svg")
            assert svg.size["width"] > 100 and svg.size["height"] > 50, figure
            assert driver.execute_script("return arguments[0].querySelectorAll('path, use').length", svg) > 5
    finally:
        driver.quit()
