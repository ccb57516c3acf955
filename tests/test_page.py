"""The try-it page at ``/``, in a real headless Chromium against a real ``flare-onnx serve``.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them) and the
``selenium`` package; skipped with the reason where either is missing. Screenshots go to
``$FLARE_ONNX_ARTIFACTS`` (default: pytest's temporary directory).
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import httpx
import pytest

from .test_serve import _start, _stop

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="the browser tests need Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
)]
webdriver = pytest.importorskip("selenium.webdriver", reason="the browser tests need selenium (in the test extra)")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

XSS = "Mario <script>window.__xss=1</script> e <img src=x onerror=\"window.__xss=2\"> vivono a Roma."


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = Path(os.environ.get("FLARE_ONNX_ARTIFACTS") or tmp_path_factory.mktemp("screenshots"))
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_window_size(1100, 1000)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def servers(tiny_tagger, tiny_bundle, tiny_classifier):
    started = {name: _start(bundle) for name, bundle in (("tag", tiny_tagger), ("mask", tiny_bundle), ("classify", tiny_classifier))}
    yield {name: url for name, (_, url) in started.items()}
    for proc, _ in started.values():
        _stop(proc)


def _open(browser, url: str) -> None:
    browser.get(url + "/")
    WebDriverWait(browser, 20).until(lambda d: d.find_elements(By.CSS_SELECTOR, "input[name=task]") or "error" in d.find_element(By.ID, "status").get_attribute("class"))


def _run(browser) -> str:
    browser.find_element(By.ID, "run").click()
    return _answer(browser)


def _answer(browser) -> str:
    status = browser.find_element(By.ID, "status")
    WebDriverWait(browser, 30).until(lambda d: status.text.startswith(("Answered", "Error", "The service")))
    return status.text


def _type(browser, text: str) -> None:
    box = browser.find_element(By.ID, "text")
    box.clear()
    box.send_keys(text)


def _choose(browser, task: str) -> None:
    browser.find_element(By.ID, f"task-{task}").click()


def _shot(browser, path: Path) -> None:
    """A screenshot of the whole page, below the fold included (Chromium's DevTools protocol)."""
    import base64

    width, height = browser.execute_script(
        "return [document.documentElement.scrollWidth, document.documentElement.scrollHeight]"
    )
    shot = browser.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
    })
    path.write_bytes(base64.b64decode(shot["data"]))


def _marks(browser) -> list[tuple[str, str]]:
    """(text, label) of each highlighted span, the label read from the visible tag."""
    out = []
    for mark in browser.find_elements(By.CSS_SELECTOR, "[data-testid=tagged] mark"):
        label = mark.find_element(By.CSS_SELECTOR, ".lab").text
        out.append((mark.text[: len(mark.text) - len(label)], label))
    return out


def test_tag_highlights_the_entities_the_api_returns(browser, servers, artifacts):
    url = servers["tag"]
    _open(browser, url)
    facts = browser.find_element(By.ID, "facts").text
    assert "precision" in facts and "fp32" in facts and "tag" in facts and "MB" in facts
    text = "Mario Rossi lavora all'Università di Bologna con Giulia Bianchi dal 1998."
    _type(browser, text)
    assert _run(browser).startswith("Answered in")
    entities = httpx.post(url + "/v1/tag", json={"texts": [text]}).json()["results"][0]["tags"]["entities"]
    assert entities, "the tiny tagger finds entities in this text"
    # what the page highlights is exactly the API's spans, sliced from the typed text
    assert _marks(browser) == [(text[e["start"] : e["end"]], e["label"]) for e in entities]
    tagged = browser.find_element(By.CSS_SELECTOR, "[data-testid=tagged]")
    labels = "".join(m.find_element(By.CSS_SELECTOR, ".lab").text for m in tagged.find_elements(By.TAG_NAME, "mark"))
    assert browser.execute_script(
        "const p = arguments[0].cloneNode(true); p.querySelectorAll('.lab').forEach(n => n.remove()); return p.textContent;", tagged
    ) == text and labels
    first = tagged.find_element(By.TAG_NAME, "mark")
    assert first.get_attribute("title").startswith(entities[0]["label"] + " ") and first.get_attribute("title").endswith("%")
    _shot(browser, artifacts / "page-tag.png")


def test_an_xss_attempt_stays_text(browser, servers):
    _open(browser, servers["tag"])
    _type(browser, XSS)
    assert _run(browser).startswith("Answered in")
    assert browser.execute_script("return window.__xss === undefined")
    out = browser.find_element(By.ID, "output")
    assert not out.find_elements(By.TAG_NAME, "script") and not out.find_elements(By.TAG_NAME, "img")
    assert browser.execute_script(
        "const p = document.querySelector('[data-testid=tagged]').cloneNode(true);"
        "p.querySelectorAll('.lab').forEach(n => n.remove()); return p.textContent;"
    ) == XSS
    # the markup of the attack shows as characters, inside a highlighted entity or around one
    assert any("<" in text or ">" in text for text, _ in _marks(browser)) or "<script>" in out.text


def test_fill_mask_by_keyboard_shows_candidates_with_bars(browser, servers, artifacts):
    _open(browser, servers["mask"])
    _choose(browser, "fill-mask")
    box = browser.find_element(By.ID, "text")
    box.clear()
    box.send_keys("Roma è la <mask> d'Italia e il <mask> scorre.")
    box.send_keys(Keys.CONTROL, Keys.ENTER)  # keyboard only: Ctrl+Enter submits
    assert _answer(browser).startswith("Answered in")
    groups = browser.find_elements(By.CSS_SELECTOR, "#output ul.bars")
    assert len(groups) == 2 and all(len(g.find_elements(By.TAG_NAME, "li")) == 5 for g in groups)
    scores = [float(n.text.rstrip("%")) for n in groups[0].find_elements(By.CSS_SELECTOR, ".num")]
    assert scores == sorted(scores, reverse=True) and 0 < scores[0] <= 100
    _shot(browser, artifacts / "page-fill-mask.png")


def test_embed_shows_a_similarity_matrix(browser, servers, artifacts):
    _open(browser, servers["mask"])
    _choose(browser, "embed")
    sentences = ["Il gatto dorme sul divano.", "Un gatto riposa sul sofà.", "Il treno parte alle otto."]
    _type(browser, "\n".join(sentences))
    assert _run(browser).startswith("Answered in")
    table = browser.find_element(By.CSS_SELECTOR, "[data-testid=similarity]")
    rows = [[float(td.text) for td in tr.find_elements(By.TAG_NAME, "td")] for tr in table.find_elements(By.TAG_NAME, "tr")[1:]]
    assert len(rows) == 3 and all(len(r) == 3 for r in rows)
    assert all(abs(rows[i][i] - 1) < 1e-3 for i in range(3)) and rows[0][1] == rows[1][0]
    _shot(browser, artifacts / "page-embed.png")


def test_classify_shows_every_label(browser, servers, artifacts):
    _open(browser, servers["classify"])
    assert browser.find_element(By.ID, "task-classify").is_selected()
    assert _run(browser).startswith("Answered in")
    names = [li.find_element(By.TAG_NAME, "span").text for li in browser.find_elements(By.CSS_SELECTOR, "#output .bars li")]
    assert sorted(names) == ["negative", "positive"]
    _shot(browser, artifacts / "page-classify.png")


def test_bad_input_is_a_clear_message(browser, servers):
    _open(browser, servers["mask"])
    _choose(browser, "fill-mask")
    _type(browser, "Nessuna maschera in questa frase.")
    assert _run(browser).startswith("Error 422: text 0 has no <mask>")
    assert not browser.find_elements(By.CSS_SELECTOR, "#output ul.bars")


def test_phone_width_has_no_sideways_scroll(browser, servers):
    browser.set_window_size(390, 844)
    try:
        _open(browser, servers["tag"])
        _type(browser, "Mario Rossi lavora all'Università di Bologna.")
        assert _run(browser).startswith("Answered in")
        assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    finally:
        browser.set_window_size(1100, 1000)


def test_an_api_key_server_refuses_without_the_key(browser, tiny_tagger, tmp_path):
    key = "chiave-segreta-è-42"
    key_file = tmp_path / "key"
    key_file.write_text(key + "\n", encoding="utf-8")
    proc, url = _start(tiny_tagger, "--api-key-file", str(key_file))
    try:
        _open(browser, url)
        assert browser.find_element(By.ID, "keyrow").is_displayed()
        assert "needs an API key" in browser.find_element(By.ID, "status").text
        assert _run(browser).startswith("Error 401")
        browser.find_element(By.ID, "apikey").send_keys("sbagliata")
        assert _run(browser).startswith("Error 401")
        browser.find_element(By.ID, "apikey").clear()
        browser.find_element(By.ID, "apikey").send_keys(key)
        assert _run(browser).startswith("Answered in")
        assert browser.find_elements(By.CSS_SELECTOR, "[data-testid=tagged]")
        assert key not in browser.current_url
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    logs = proc.stdout.read() + proc.stderr.read()
    assert '"route": "/v1/models/{name}/{task}", "status": 200' in logs and key not in logs and "Traceback" not in logs


def test_the_page_is_locked_down(servers):
    r = httpx.get(servers["tag"] + "/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'sha256-" in csp and "unsafe-inline" not in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    info = httpx.get(servers["tag"] + "/v1/info").json()
    assert info["tasks"] == ["tag"] and info["precision"] == "fp32" and info["labels"][0] == "O" and info["graph_bytes"] > 0


def test_a_pos_tagger_gets_a_tag_on_every_word(browser, tmp_path_factory):
    """Labels without B-/I- prefixes (UPOS) are shown word by word, not grouped as entities."""
    from flare_onnx_export import export_bundle, write_reference

    labels = ["ADP", "DET", "NOUN", "PROPN", "PUNCT", "VERB"]
    ckpt = write_reference(tmp_path_factory.mktemp("pos") / "ckpt", tiny=True, task="token-classification", labels=labels)
    bundle = export_bundle(str(ckpt), tmp_path_factory.mktemp("posb") / "b", log=lambda _: None)
    proc, url = _start(bundle)
    try:
        _open(browser, url)
        text = "Il gatto dorme sul divano di Roma."
        _type(browser, text)
        assert _run(browser).startswith("Answered in")
        assert browser.find_element(By.CSS_SELECTOR, "#output h2").text == "Tags"
        words = httpx.post(url + "/v1/tag", json={"texts": [text]}).json()["results"][0]["tags"]["words"]
        assert _marks(browser) == [(text[w["start"] : w["end"]], w["label"]) for w in words]
        assert len(words) == 8 and all(label in labels for _, label in _marks(browser))
    finally:
        _stop(proc)


def test_embed_shows_int8_beside_the_fp32_reference(browser, tiny_bundle, artifacts):
    proc, url = _start(tiny_bundle, "--precision", "int8", "--reference-fp32")
    try:
        assert httpx.get(url + "/v1/info").json()["reference"] == "fp32"
        assert "/v1/reference/embed" in httpx.get(url + "/openapi.json").json()["paths"]
        assert httpx.post(url + "/v1/reference/embed", json={"texts": ["Ciao"]}).json()["precision"] == "fp32"
        _open(browser, url)
        _choose(browser, "embed")
        _type(browser, "Il gatto dorme sul divano.\nUn gatto riposa sul sofà.\nIl treno parte alle otto.")
        assert _run(browser).startswith("Answered in")
        tables = [browser.find_element(By.CSS_SELECTOR, f"[data-testid={t}]") for t in ("similarity", "similarity-reference")]
        values = [[float(td.text) for td in t.find_elements(By.TAG_NAME, "td")] for t in tables]
        worst = float(browser.find_element(By.CSS_SELECTOR, "[data-testid=agreement]").text.rsplit(" ", 1)[1])
        assert len(values[0]) == len(values[1]) == 9 and values[0] != [] and 0 <= worst < 0.05
        assert max(abs(a - b) for a, b in zip(*values)) <= worst + 1e-3  # the figure is the tables' own difference
        assert "(int8)" in tables[0].text and "fp32" in tables[1].text
        _shot(browser, artifacts / "page-embed-reference.png")
    finally:
        _stop(proc)


def test_the_page_says_what_a_newcomer_needs(browser, servers, artifacts):
    """A random-weights bundle says so, the export's checks are in words, the colour scale
    spans the values shown, and the answer is scrolled into view."""
    _open(browser, servers["mask"])
    assert browser.find_element(By.CSS_SELECTOR, "[data-testid=random-note]").is_displayed()
    assert not browser.find_element(By.ID, "promptrow").is_displayed()  # this bundle stores no prompts
    facts = browser.find_element(By.ID, "facts").text
    assert "random" in facts and "checked at export" in facts and "mean cosine" in facts
    assert "embedding_cosine_mean" not in facts
    browser.set_window_size(1280, 600)  # a short window: the results start below the fold
    _choose(browser, "embed")
    _type(browser, "\n".join(["Il gatto dorme sul divano.", "Un gatto riposa sul sofà.", "Il treno parte alle otto."]))
    assert _run(browser).startswith("Answered in")
    top = browser.execute_script("return document.getElementById('output').getBoundingClientRect().top")
    assert 0 <= top < 600, f"the results start at {top}px, out of view"
    cells = browser.find_elements(By.CSS_SELECTOR, "[data-testid=similarity] td")
    shades = {c.value_of_css_property("background-color") for c in cells if abs(float(c.text) - 1) > 1e-3}
    assert len(shades) >= 2  # the off-diagonal values do not all look alike
    _shot(browser, artifacts / "page-newcomer.png")
    browser.set_window_size(1280, 900)


def test_a_service_of_several_models_has_a_model_picker(browser, tiny_tagger, tiny_feature_bundle, artifacts):
    proc, url = _start(f"ner={tiny_tagger}", f"embed={tiny_feature_bundle}")
    try:
        _open(browser, url)
        picker = browser.find_element(By.ID, "model")
        assert picker.is_displayed() and picker.get_attribute("value") == "ner"
        tasks = lambda: [e.get_attribute("value") for e in browser.find_elements(By.CSS_SELECTOR, "input[name=task]")]  # noqa: E731
        assert tasks() == ["tag"]
        assert _run(browser).startswith("Answered in") and browser.find_elements(By.CSS_SELECTOR, "[data-testid=tagged]")
        browser.find_element(By.CSS_SELECTOR, "#model option[value=embed]").click()
        assert tasks() == ["embed"]  # the task choices follow the model
        _type(browser, "Il gatto dorme sul divano.\nUn gatto riposa sul sofà.")
        assert _run(browser).startswith("Answered in")
        assert browser.find_elements(By.CSS_SELECTOR, "[data-testid=similarity]")
        _shot(browser, artifacts / "page-models.png")
    finally:
        _stop(proc)
