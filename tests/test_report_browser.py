"""The report's plan editor in a real browser (Debian's chromium through chromedriver, as
.ci/run installs them): a person assigns heads by mouse and by keyboard, reads the plan text and
its cost, downloads plan.json and runs the train command the report shows, for two plans in a
row; the page reads at 800 px; user patterns are scored in the report and train."""

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_patterns import USER_FILE

from attnsum.attention.plan import HeadPlan
from attnsum.checkpoints import read_config, read_plan_file, save_model
from attnsum.cli import main
from attnsum.config import ModelConfig
from attnsum.model import SummarizerModel

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER),
                                reason="chromium and chromium-driver not installed (.ci/run installs them)")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    (root / "mine.py").write_text(USER_FILE)
    # a short real run, so that the report's train command repeats its dataset, steps, length
    assert main(["train", "--preset", "tiny", "--plan", "0:1=sent/mask; 1:3=prev/synth",
                 "--steps", "2", "--limit", "4", "--max-len", "96", "--val-every", "2",
                 "--lr", "1e-6", "--precision", "fp32", "--out", str(root / "ckpt")]) == 0
    assert main(["analyze", "--checkpoint", str(root / "ckpt"), "--limit", "4",
                 "--patterns", str(root / "mine.py"), "--out", str(root / "rep")]) == 0
    return root


@pytest.fixture(scope="module")
def browser(report):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1300,1600"):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {"download.default_directory": str(report / "dl"),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def _wait_for(path: Path, seconds: float = 10.0) -> Path:
    end = time.time() + seconds
    while time.time() < end:
        if path.is_file() and path.stat().st_size > 0:
            return path
        time.sleep(0.1)
    raise AssertionError(f"{path} never appeared")


def test_plan_editor_assigns_downloads_and_trains(report, browser, monkeypatch):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    analysis = json.loads((report / "rep" / "analysis.json").read_text())
    assert "parity" in analysis["patterns"]  # the user pattern is scored
    offered = {k.rsplit("/", 1)[0] for k in analysis["costs"]["work"] if k != "learned"}
    assert offered <= set(analysis["patterns"])  # every pattern the editor offers has a score
    browser.get((report / "rep" / "report.html").as_uri())
    text = lambda: browser.find_element(By.ID, "plan-text").text  # noqa: E731
    suggested = HeadPlan.from_dict(analysis["plan"])
    assert text() == str(suggested) and str(suggested.layer(1)[3]) == "prev/synth"
    assert browser.get_log("browser") == []  # no script error

    def assign(layer, head, kind):
        browser.find_element(By.CSS_SELECTOR, f'td[data-layer="{layer}"][data-head="{head}"]').click()
        Select(browser.find_element(By.ID, "choice")).select_by_value(kind)

    assign(1, 0, "parity/mask")
    assign(0, 2, "window:4/mask")
    assign(0, 1, "learned")
    edits = {(1, 0): ("parity", "mask"), (0, 2): ("window:4", "mask")}
    kept = {(layer, h): (s.pattern, s.mode) for layer, row in enumerate(suggested.heads)
            for h, s in enumerate(row) if s is not None and (layer, h) != (0, 1)}
    want = HeadPlan.from_assignments(2, 4, {**kept, **edits})
    assert text() == str(want)
    # The cost of the edited plan: mean work fraction over heads and layers, per length.
    work = analysis["costs"]["work"]
    model_row = browser.find_element(By.ID, "plan-cost").text.splitlines()[-2].split()
    assert model_row[0] == "model" and len(model_row) == 1 + len(analysis["costs"]["lengths"])
    for i in range(len(analysis["costs"]["lengths"])):
        per_head = [work[str(s) if s else "learned"][i] for row in want.heads for s in row]
        assert model_row[1 + i] == f"{np.mean(per_head):.3f}"
    assert work["parity/mask"] == [1.0, 1.0]  # no range form: the dense reference path
    first = _download_and_train(report, browser, want, monkeypatch)

    # by keyboard: Tab reaches a head, arrows move, Enter selects, arrows in the list assign
    cell = browser.find_element(By.CSS_SELECTOR, 'td[data-layer="0"][data-head="0"]')
    cell.click()  # the head takes the focus
    browser.switch_to.active_element.send_keys(Keys.ARROW_DOWN, Keys.ARROW_RIGHT, Keys.ARROW_RIGHT)
    focused = browser.switch_to.active_element
    assert (focused.get_attribute("data-layer"), focused.get_attribute("data-head")) == ("1", "2")
    assert "importance" in focused.get_attribute("title")
    focused.send_keys(Keys.ENTER)
    assert browser.switch_to.active_element.get_attribute("id") == "choice"
    options = [o.get_attribute("value") for o in
               browser.find_elements(By.CSS_SELECTOR, "#choice option")]
    target = options.index("sent/mask")
    current = options.index(Select(browser.find_element(By.ID, "choice"))
                            .first_selected_option.get_attribute("value"))
    key = Keys.ARROW_DOWN if target > current else Keys.ARROW_UP
    browser.switch_to.active_element.send_keys(*[key] * abs(target - current))
    browser.switch_to.active_element.send_keys(Keys.ENTER)  # back to the head
    assert browser.switch_to.active_element.get_attribute("data-head") == "2"
    again = HeadPlan.from_assignments(2, 4, {**kept, **edits, (1, 2): ("sent", "mask")})
    assert text() == str(again)
    second = _download_and_train(report, browser, again, monkeypatch)
    assert first != second  # each plan trains into a folder of its own

    browser.find_element(By.ID, "reset-plan").click()
    assert text() == str(suggested)


def _download_and_train(report, browser, want, monkeypatch) -> Path:
    """Download plan.json and run the train command the report shows, as shown (plus --limit
    and --val-every to keep it short), from the download folder; returns its run folder."""
    import shlex

    from selenium.webdriver.common.by import By

    target = report / "dl" / "plan.json"
    target.unlink(missing_ok=True)
    browser.find_element(By.ID, "download-plan").click()
    assert read_plan_file(_wait_for(target)) == want
    command = browser.find_element(By.ID, "train-command").get_attribute("value")
    args = shlex.split(command)
    assert args[:2] == ["attnsum", "train"] and "--out" in args
    assert args[args.index("--steps") + 1] == "2" and args[args.index("--max-len") + 1] == "96"
    monkeypatch.chdir(report / "dl")
    assert main([*args[1:], "--limit", "4", "--val-every", "2", "--precision", "fp32"]) == 0
    run = report / "dl" / args[args.index("--out") + 1]
    assert read_config(run / "last").plan == want
    browser.find_element(By.ID, "copy-command").click()
    assert browser.find_element(By.ID, "copy-status").text != ""  # the copy says what happened
    return run


def test_the_editor_reads_at_800_px(tmp_path, browser):
    """Sixteen heads a layer: at 800 px the page does not scroll sideways, the grid scrolls
    inside its box, and the cost table stays in place when the side panel fills."""
    from selenium.webdriver.common.by import By

    torch.manual_seed(0)
    save_model(SummarizerModel(ModelConfig.from_preset("tiny", "*:0=sent/mask", heads=16)), tmp_path / "c")
    assert main(["analyze", "--checkpoint", str(tmp_path / "c"), "--limit", "2", "--max-len",
                 "64", "--out", str(tmp_path / "rep")]) == 0
    browser.set_window_size(800, 1000)
    try:
        browser.get((tmp_path / "rep" / "report.html").as_uri())
        width = browser.execute_script("return document.documentElement.clientWidth")
        assert browser.execute_script("return document.documentElement.scrollWidth") <= width
        box = browser.find_element(By.CSS_SELECTOR, "#editor .scroll")
        assert box.rect["x"] + box.rect["width"] <= width
        cost = browser.find_element(By.ID, "plan-cost")
        before = cost.rect
        browser.find_element(By.CSS_SELECTOR, 'td[data-layer="1"][data-head="15"]').click()
        assert "layer 1, head 15" in browser.find_element(By.ID, "panel-body").text
        assert cost.rect == before
        assert browser.get_log("browser") == []
    finally:
        browser.set_window_size(1300, 1600)


def test_profiles_table_sorts(report, browser):
    from selenium.webdriver.common.by import By

    browser.get((report / "rep" / "report.html").as_uri())
    table = browser.find_element(By.ID, "profiles-table")
    header = [th.text for th in table.find_elements(By.TAG_NAME, "th")]
    col = header.index("entropy")
    table.find_elements(By.TAG_NAME, "th")[col].click()
    rows = table.find_elements(By.TAG_NAME, "tr")[1:]
    values = [float(r.find_elements(By.TAG_NAME, "td")[col].get_attribute("data-v")) for r in rows]
    assert len(values) == 8 and values == sorted(values, reverse=True)
    th = lambda: table.find_elements(By.TAG_NAME, "th")[col]  # noqa: E731
    assert th().get_attribute("aria-sort") == "descending"
    th().click()
    assert th().get_attribute("aria-sort") == "ascending"
    assert sum(t.get_attribute("aria-sort") is not None
               for t in table.find_elements(By.TAG_NAME, "th")) == 1
    analysis = json.loads((report / "rep" / "analysis.json").read_text())
    assert max(values) == pytest.approx(np.max(analysis["profiles"]["entropy"]), rel=1e-5)


def test_a_checkpoint_with_user_patterns_needs_its_file(report, capsys):
    run = report / "user-run"
    args = ["--limit", "4", "--max-len", "96"]
    assert main(["train", "--preset", "tiny", "--plan", "*:0=second/synth; 1:1=parity/mask",
                 "--patterns", str(report / "mine.py"), "--steps", "1", "--val-every", "1",
                 "--out", str(run), *args]) == 0
    assert main(["analyze", "--checkpoint", str(run), "--patterns", str(report / "mine.py"),
                 "--out", str(report / "rep2"), *args]) == 0
    assert json.loads((report / "rep2" / "analysis.json").read_text())["pattern_scores"]
    from attnsum.attention import registry

    saved = dict(registry._REGISTRY)
    try:  # a fresh process: the user patterns are not registered
        for name in ("second", "parity"):
            del registry._REGISTRY[name]
        capsys.readouterr()
        assert main(["analyze", "--checkpoint", str(run), "--out", str(report / "rep3"), *args]) == 2
        err = capsys.readouterr().err
        assert "unknown pattern 'second'" in err and "--patterns" in err and str(run) in err
    finally:
        registry._REGISTRY.update(saved)


def _select(browser, element_id, value=None, text_prefix=None):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    select = Select(browser.find_element(By.ID, element_id))
    if value is not None:
        select.select_by_value(value)
    else:
        select.select_by_index(next(i for i, o in enumerate(select.options)
                                    if o.text.startswith(text_prefix)))


def test_heatmaps_have_axes_a_scale_overlays_and_a_readout(report, browser):
    """The first document's map of a head hard-wired to the intra-sentence pattern: a line and
    label at each sentence start, the outline of the cells `sent` allows (block diagonal: its
    squares touch at corners only, so 4 edges a token) and of `next` (isolated cells: 4 edges
    each), drawn in the outline's colour; a cell read under the pointer; the zoom; the head's
    average map and the pattern's score beside it."""
    from selenium.webdriver.common.by import By

    maps = json.loads((report / "rep" / "maps.json").read_text())
    analysis = json.loads((report / "rep" / "analysis.json").read_text())
    browser.get((report / "rep" / "report.html").as_uri())
    doc = maps[0]
    n = len(doc["tokens"])
    canvas = browser.find_element(By.CSS_SELECTOR, "#doc0 canvas")
    assert int(canvas.get_attribute("data-sentences")) == doc["tokens"].count("[CLS]")
    assert int(canvas.get_attribute("data-outlined")) == 0
    _select(browser, "map-head", text_prefix="L0 h1 ")
    _select(browser, "map-overlay", value="sent")
    assert int(canvas.get_attribute("data-outlined")) == 4 * n
    margin = browser.execute_script("return MARGIN")
    top_left = browser.execute_script(
        "return Array.from(arguments[0].getContext('2d').getImageData(arguments[1] + 1, "
        "arguments[1], 1, 1).data)", canvas, margin)
    assert top_left[:3] == [230, 120, 0]  # the top edge of cell (0, 0), in the outline colour
    _select(browser, "map-overlay", value="next")
    assert int(canvas.get_attribute("data-outlined")) == 4 * (n - 1)
    _select(browser, "map-overlay", value="sent")

    zoom = int(browser.find_element(By.ID, "map-zoom").get_attribute("value"))
    browser.execute_script(
        "const c = arguments[0], r = c.getBoundingClientRect(), z = arguments[1], m = arguments[2];"
        "c.dispatchEvent(new MouseEvent('mousemove', {clientX: r.left + m + z * 1 + z / 2, "
        "clientY: r.top + m + z * 2 + z / 2}));", canvas, zoom, margin)
    head = next(h for h in doc["heads"] if (h["layer"], h["head"]) == (0, 1))
    text = browser.find_element(By.CSS_SELECTOR, "#doc0 .readout").text
    assert f'query 2 "{doc["tokens"][2]}" (S1)' in text and f'key 1 "{doc["tokens"][1]}" (S1)' in text
    assert f"{head['attn'][2][1] / 1000:.3f} of the query's attention" in text
    assert "sent allows this cell" in text
    assert browser.find_element(By.CSS_SELECTOR, "#doc0 .legend-max").text != ""

    _select(browser, "map-zoom", value="8")
    assert int(canvas.get_attribute("width")) == margin + 8 * n + 2
    avg = browser.find_element(By.ID, "avg-map").find_elements(By.TAG_NAME, "tr")
    width = len(analysis["profiles"]["offsets"][0][1])
    assert [len(r.find_elements(By.TAG_NAME, "td")) for r in avg] == [0, width, width]
    info = browser.find_element(By.ID, "overlay-info").text
    score = analysis["pattern_scores"][0][1][analysis["patterns"].index("sent")]
    assert f"sent on L0 h1: score {score:.3f}" in info and "lift" in info
    assert browser.get_log("browser") == []


def test_the_plan_is_explained_and_priced(report, browser):
    """The suggestion's rule with its thresholds, the hard-wired heads chosen or not by it,
    what the modes do; the editor shows the measured speed of a plan where the analysis found
    one (bench/results of this checkout) and says so where it did not."""
    from selenium.webdriver.common.by import By

    analysis = json.loads((report / "rep" / "analysis.json").read_text())
    browser.get((report / "rep" / "report.html").as_uri())
    rule = browser.find_element(By.ID, "plan-rule").text
    assert "at least 0.50 of its attention mass" in rule and "at least 2 times" in rule
    chosen = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#plan-chosen tr")[1:]]
    assert chosen[0].startswith("L1 h3 prev/synth 1.000")  # the hard-wired previous-token head
    # Every other head stays learned, the hard-wired intra-sentence head among them: it follows
    # its pattern exactly, but sentences fill so much of these short inputs that its lift is < 2.
    sent = analysis["patterns"].index("sent")
    assert analysis["pattern_scores"][0][1][sent] / analysis["chance"][sent] < 2 and len(chosen) == 1
    modes = browser.find_element(By.ID, "plan-modes").text
    assert "synth (synthesize): the head computes no query or key" in modes
    measured = browser.find_element(By.ID, "plan-measured")
    assert "No measured speed of this plan" in measured.text  # the tiny run's own plan
    browser.execute_script("plan = plan.map(r => r.map((s, h) => PAPER[h % 4])); render();")
    assert browser.find_element(By.ID, "plan-text").text == "paper"
    paper = [r for r in analysis["measured"] if r["plan"] == "paper"]
    if paper:
        for r in paper:
            assert r["model"] in measured.text
    else:
        assert "No measured speed of this plan" in measured.text
