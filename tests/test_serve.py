"""`llmcxr-jax serve` in a real browser: headless Chromium (Debian's) driven by Playwright.

The server runs in this process on a free port, on a tiny random LM and VQ-GAN saved with the
project's checkpoint functions (the model's words are noise; what is tested is the page: films
in, reports, films and answers out, bad uploads shown as one line, requests queued). The whole
module is skipped, with one reason, where /usr/bin/chromium or playwright is missing (`make
test` installs Chromium where it can; CI installs it and sets LLMCXR_REQUIRE_BROWSER=1, which
turns the skip into a failure).

LLMCXR_SCREENSHOTS=1 also writes docs/serve_report.png, docs/serve_film.png and
docs/serve_vqa.png; LLMCXR_SERVE_CHECKPOINT and LLMCXR_SERVE_VQGAN run the same tests on a
trained model instead (the docs' screenshots are of the demo's model).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fixtures import write_dicom

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"


def _missing() -> str | None:
    if importlib.util.find_spec("playwright") is None:
        return "browser tests need playwright (pip install -e '.[test]')"
    if not os.access(CHROMIUM, os.X_OK):
        return f"browser tests need {CHROMIUM} (apt-get install -y chromium; make test does)"
    return None


pytestmark = [
    pytest.mark.browser,
    # Gradio's own queue code, under pandas 3: not ours to fix
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]
if _missing() and os.environ.get("LLMCXR_REQUIRE_BROWSER") == "1":  # CI (.ci/run)
    pytest.fail(f"LLMCXR_REQUIRE_BROWSER=1, but {_missing()}", pytrace=False)
if _missing():
    pytest.skip(_missing(), allow_module_level=True)

from playwright.sync_api import Browser, Page, sync_playwright  # noqa: E402

from llmcxr_jax.data.phantoms.cases import make_case  # noqa: E402
from llmcxr_jax.data.phantoms.render import render  # noqa: E402

TIMEOUT_MS = 60_000  # a generous bound for one request on a busy 2-core machine
REPORT = "Large right pleural effusion. The heart size is normal. No pneumothorax."
QUESTION = "Is there a pleural effusion?"


# --- files and models -----------------------------------------------------------------------


def _film(size: int) -> np.ndarray:
    """A phantom chest film, uint8 grey [size, size]: a picture a person recognises."""
    case = make_case(["pleural_effusion"], seed=3)
    return render(case, size, np.random.default_rng(0))


def _png(path: Path, pixels: np.ndarray) -> Path:
    from PIL import Image

    Image.fromarray(pixels).save(path)
    return path


def _tiny_model(root: Path) -> tuple[Path, Path]:
    """A random tiny LM (in a training workdir's layout, tokenizer beside it) and VQ-GAN,
    saved as checkpoints; weights drawn in numpy over the abstract shapes (fast)."""
    import jax

    from llmcxr_jax import checkpoint
    from llmcxr_jax.data import instructions
    from llmcxr_jax.models import common
    from llmcxr_jax.models.gpt_neox import GPTNeoX, get_preset
    from llmcxr_jax.models.vqgan import VQGAN
    from llmcxr_jax.models.vqgan import get_preset as vq_preset
    from llmcxr_jax.tokenizer import MultimodalTokenizer

    rng = np.random.default_rng(0)

    def random_variables(model_cls: type, config: object) -> dict:
        shapes = common.variables_of(common.abstract(model_cls, config))
        draw = lambda a: (0.02 * rng.standard_normal(a.shape)).astype(a.dtype)  # noqa: E731
        return jax.tree.map(draw, shapes)

    vq_cfg = vq_preset("tiny")
    texts = [REPORT, QUESTION, "No acute cardiopulmonary process.", "yes", "no"] * 5
    tok = MultimodalTokenizer.train_bpe(
        texts + list(instructions.CXR_TO_REPORT + instructions.REPORT_TO_CXR + ("yes", "no")),
        vocab_size=320,
        num_image_codes=vq_cfg.n_embed,
    )
    cfg = get_preset("tiny", vocab_size=tok.vocab_size, vocab_pad_multiple=128)
    checkpoint.save_params(root / "lm" / "model", cfg, random_variables(GPTNeoX, cfg))
    tok.save(root / "lm" / "model" / "tokenizer")
    checkpoint.save_params(root / "vq", vq_cfg, random_variables(VQGAN, vq_cfg))
    return root / "lm", root / "vq"  # the LM as a workdir: serve finds workdir/model


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from llmcxr_jax import serve

    lm, vq = os.environ.get("LLMCXR_SERVE_CHECKPOINT"), os.environ.get("LLMCXR_SERVE_VQGAN")
    if not (lm and vq):
        lm, vq = _tiny_model(tmp_path_factory.mktemp("model"))
    srv = serve.start(lm, vq, port=_free_port(), max_new_tokens=64)
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture(scope="module")
def files(tmp_path_factory, server) -> dict[str, Path]:
    """Good and bad uploads, sized for the served model's resolution."""
    d = tmp_path_factory.mktemp("films")
    res = server.app.resolution
    film = _film(2 * res)
    text = d / "notes.png"
    text.write_text("this is not an image\n")
    cut = d / "cut.png"
    cut.write_bytes(_png(d / "whole.png", film).read_bytes()[:200])
    return {
        "png": _png(d / "film.png", film),
        "dicom": write_dicom(d / "film.dcm", film),
        "text": text,
        "small": _png(d / "small.png", film[: res // 2, : res // 2]),
        "nopixels": write_dicom(d / "nopixels.dcm", None),
        "cut": cut,
    }


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-background-networking"]
        )
        try:
            yield b
        finally:
            b.close()


@contextlib.contextmanager
def _opened(browser: Browser, url: str) -> Iterator[Page]:
    """A fresh page on the app; fails the test if it asks anything of another host."""
    context = browser.new_context(viewport={"width": 1200, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    elsewhere: list[str] = []
    pg.on("request", lambda r: elsewhere.append(r.url) if "//127.0.0.1:" not in r.url else None)
    pg.goto(url)
    pg.wait_for_selector("#report-go")
    try:
        yield pg
    finally:
        context.close()
    assert not elsewhere, f"the page fetched from other hosts: {elsewhere}"


@pytest.fixture
def page(browser: Browser, server) -> Iterator[Page]:
    with _opened(browser, server.url) as pg:
        yield pg


# --- driving the page -----------------------------------------------------------------------


def _tab(page: Page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def _upload(page: Page, field: str, path: Path) -> None:
    """Put `path` in a gr.File (replacing what is there) and wait for the upload to finish."""
    clear = page.locator(f"#{field} button[aria-label=Clear]")
    if clear.count():
        clear.click()
    page.set_input_files(f"#{field} input[type=file]", str(path))
    page.wait_for_selector(f"#{field} a[download='{path.name}']")


def _value(page: Page, selector: str) -> str:
    return page.input_value(f"{selector} textarea")


def _done(page: Page, component: str) -> None:
    """Wait until the request that updates `component` has finished (Gradio's tracker)."""
    page.wait_for_function(
        "id => { const t = document.querySelector(`#${id} [data-testid=status-tracker]`);"
        " return t && t.classList.contains('hide'); }",
        arg=component,
    )


def _write_report(page: Page, path: Path) -> str:
    """Upload, ask, and wait for the whole report (the page's report field starts empty)."""
    _upload(page, "report-film", path)
    page.click("#report-go")
    page.wait_for_function("() => document.querySelector('#report-text textarea').value")
    _done(page, "report-text")
    page.wait_for_selector("#report-recon img")
    return _value(page, "#report-text")


STATUS_JS = """id => {
    const el = document.querySelector(`#${id}-status`).cloneNode(true);
    el.querySelectorAll('[data-testid=status-tracker]').forEach(t => t.remove());
    return el.textContent.trim();
}"""  # the message alone, without Gradio's progress tracker (its timer reads "0.1s")


def _status(page: Page, which: str) -> str:
    return page.evaluate(STATUS_JS, which)


def _wait_status(page: Page, which: str, expected: str) -> str:
    page.wait_for_function(f"([id, t]) => ({STATUS_JS})(id).includes(t)", arg=[which, expected])
    return _status(page, which)


def _natural_size(page: Page, selector: str) -> tuple[int, int]:
    img = page.locator(f"{selector} img").first
    img.evaluate("im => im.decode()")
    return tuple(img.evaluate("im => [im.naturalWidth, im.naturalHeight]"))


def _screenshot(page: Page, name: str) -> None:
    """docs/serve_NAME.png when LLMCXR_SCREENSHOTS=1 (a temporary name, then renamed)."""
    if os.environ.get("LLMCXR_SCREENSHOTS") != "1":
        return
    final = ROOT / "docs" / f"serve_{name}.png"
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}.png")
    page.screenshot(path=str(tmp), full_page=True)
    os.replace(tmp, final)


# --- the tests ------------------------------------------------------------------------------


def test_report_from_a_png_and_from_a_dicom(browser, server, files):
    res = server.app.resolution
    for kind in ("dicom", "png"):  # the PNG last: it is the one in the screenshot
        with _opened(browser, server.url) as page:
            report = _write_report(page, files[kind])
            assert report.strip(), f"no report for the {kind}"
            assert _status(page, "report") == ""
            for shown in ("#report-seen", "#report-recon"):  # the film as the model sees it
                assert _natural_size(page, shown) == (res, res)
            if kind == "png":
                _screenshot(page, "report")


def test_film_from_a_report_is_a_png_of_the_models_size(page, server):
    from PIL import Image

    _tab(page, "report-to-CXR")
    page.fill("#film-report textarea", REPORT)
    page.click("#film-go")
    page.wait_for_selector("#film-image img")
    _done(page, "film-image")
    res = server.app.resolution
    assert _natural_size(page, "#film-image") == (res, res)
    link = page.locator("#film-image a[download]").first  # the download button
    assert link.get_attribute("download").endswith(".png")
    got = page.request.get(link.get_attribute("href"))
    assert got.ok
    im = Image.open(io.BytesIO(got.body()))
    assert im.format == "PNG" and im.size == (res, res)
    assert _status(page, "film") == ""
    _screenshot(page, "film")


def test_vqa_answers_a_question_about_a_film(page, files):
    _tab(page, "VQA")
    _upload(page, "vqa-film", files["png"])
    page.fill("#vqa-question textarea", QUESTION)
    page.click("#vqa-go")
    _done(page, "vqa-answer")
    assert _status(page, "vqa") == ""
    assert _value(page, "#vqa-answer").strip()
    _screenshot(page, "vqa")


BAD_UPLOADS = {  # file -> what the page says (the InputError's message)
    "text": "notes.png: not an image (not a JPEG, PNG or DICOM file)",
    "small": "small.png: image is",
    "nopixels": "nopixels.dcm: DICOM file has no pixel data",
    "cut": "cut.png: cannot decode PNG image, truncated or corrupt",
}


def test_bad_input_shows_one_line_and_the_server_keeps_serving(page, files):
    for kind, expected in BAD_UPLOADS.items():
        _upload(page, "report-film", files[kind])
        page.click("#report-go")
        shown = _wait_status(page, "report", expected)
        assert "\n" not in shown and "Traceback" not in page.content(), shown
        assert _value(page, "#report-text") == ""
    _tab(page, "report-to-CXR")
    page.fill("#film-report textarea", "   ")
    page.click("#film-go")
    assert _wait_status(page, "film", "empty report") == "empty report"
    _tab(page, "VQA")
    page.click("#vqa-go")  # no film at all
    assert _wait_status(page, "vqa", "no film").startswith("no film: upload")
    _tab(page, "CXR-to-report")  # and a good film still gets its report
    assert _write_report(page, files["png"]).strip()
    assert _status(page, "report") == ""


def test_two_requests_at_once_both_complete(browser, server, files):
    with _opened(browser, server.url) as one, _opened(browser, server.url) as two:
        for pg in (one, two):
            _upload(pg, "report-film", files["png"])
        for pg in (one, two):  # both sent before either is done: the second waits its turn
            pg.click("#report-go")
        for pg in (one, two):
            pg.wait_for_function("() => document.querySelector('#report-text textarea').value")
            _done(pg, "report-text")
            assert _status(pg, "report") == ""


def test_a_report_streams_and_one_request_holds_the_model(server, files, monkeypatch):
    """Below the page: the CXR-to-report handler yields the text as it grows, and the app's
    lock keeps a second request off the model until the first is done."""
    from llmcxr_jax import serve

    monkeypatch.setattr(serve, "UPDATE_S", 0.0)
    app = server.app
    updates = list(app.report(str(files["png"]), serve.TOP_P, 0.92, 1.0, 0))
    assert not [u[3] for u in updates if isinstance(u[3], str) and u[3]]  # no error shown
    texts = [u[2] for u in updates]
    assert texts[0] == "" and len(texts) >= 3 and texts[-1]

    order: list[str] = []

    def ask() -> None:
        order.append(app.answer(str(files["png"]), QUESTION, serve.GREEDY, 1.0, 1.0, 0)[1])

    with app.lock:
        thread = threading.Thread(target=ask)
        thread.start()
        time.sleep(0.3)
        order.append("first")
    thread.join(TIMEOUT_MS / 1000)
    assert order == ["first", ""]


def test_serve_binds_localhost_by_default():
    from llmcxr_jax import cli

    args = cli.build_parser().parse_args(["serve", "--checkpoint", "a", "--vqgan", "b"])
    assert (args.host, args.port, args.func) == ("127.0.0.1", 7860, cli._serve)
