"""`llmcxr-jax serve`: a trained model's three tasks in a browser (a Gradio app).

    server = start("run/stage2", vqgan="run/vqgan/model")   # load, compile, listen
    print(server.url); server.block()                       # until Ctrl-C

Why it is built the way it is:

- The model is loaded once, at start-up, and the three tasks are compiled then (`App.warm_up`),
  before the port opens: the first user does not wait for XLA. Compiled programs also go to a
  persistent cache on disk (`compile_cache`), so a restart of the same model compiles nothing.
- One request uses the model at a time: every event shares one queue slot
  (`concurrency_id="model"`, limit 1) and at most `max_queue` requests wait, so a crowd of
  users queues (or is told the queue is full) instead of exhausting the machine's memory.
- Bad input (an unreadable, too small or non-image upload, a DICOM without pixels, an empty
  report or question) shows its `InputError` message, one line, in the tab's status line; never
  a traceback. Any other exception is a bug: its traceback goes to the server's log, the page
  says the request failed, and the server keeps serving.
- It binds 127.0.0.1 unless told otherwise, with no share link, analytics or web fonts: films
  are patient data, and nothing leaves the machine unless the operator asks for it.
- Uploads are read by content (`data/images.py`), not by extension, so a DICOM named `IM0001`
  works; the upload field therefore accepts any file and the reader says what is wrong with it.
"""

from __future__ import annotations

import dataclasses
import html
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

from llmcxr_jax import checkpoint, decode
from llmcxr_jax.data import images as image_io
from llmcxr_jax.errors import InputError
from llmcxr_jax.generate import Generator

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
MAX_QUEUE = 16  # requests waiting for the model; more are refused with "queue is full"
MAX_UPLOAD = "200mb"  # a large DICOM is tens of MB
UPDATE_S = 0.05  # at most ~20 page updates a second while a report streams or codes come out
VQA_TOKENS = 48  # answers are short (the batched `answers` default)
FAILED = "The request failed (an internal error, logged on the server). Please try again."
EXAMPLE_REPORT = "Moderate left pleural effusion. Mild cardiomegaly. No pneumothorax."
EXAMPLE_QUESTION = "Is there a pleural effusion?"
GREEDY, TOP_P = "greedy", "top-p sampling"

# Library hints name the Python API; in the page, say what the user or operator can do.
HINTS = (
    ("(pass allow_upscale=True to upscale)", "(the server upscales only with --allow-upscale)"),
    ("(use Sampler.argmax() for greedy)", "(or choose greedy decoding)"),
)

# Films are small (64-256 px): shown large, pixels kept sharp.
CSS = """
.llmcxr-status p { color: #b91c1c; font-weight: 600; }
.llmcxr-film img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }
"""


def message(e: BaseException) -> str:
    """An InputError as the page shows it: one line, hints in the page's words."""
    text = " ".join(str(e).split()) or type(e).__name__
    for api, words in HINTS:
        text = text.replace(api, words)
    return text


def status_markdown(text: str) -> str:
    """Plain text for a gr.Markdown: HTML-escaped, and Markdown's own characters escaped."""
    text = html.escape(text, quote=False)
    return "".join("\\" + c if c in "\\`*_{}[]()#+-.!|~" else c for c in text)


def sampler_of(mode: str, top_p: Any, temperature: Any) -> decode.Sampler:
    """The page's sampling controls as a Sampler (an InputError for values out of range)."""
    if mode == GREEDY:
        return decode.GREEDY
    try:
        p, t = float(top_p), float(temperature)
    except (TypeError, ValueError):
        raise InputError(f"top-p {top_p!r} and temperature {temperature!r}: not numbers") from None
    if not 0.0 < p <= 1.0:
        raise InputError(f"top-p must be in (0, 1], got {p:g}")
    if not 0.0 < t < float("inf"):
        raise InputError(f"temperature must be > 0, got {t:g} (or choose greedy decoding)")
    return decode.Sampler(temperature=t, top_p=p)


def seed_of(seed: Any) -> int:
    try:
        value = float(seed)
    except (TypeError, ValueError):
        value = float("nan")
    if not (value.is_integer() and 0 <= value < 2**31):
        raise InputError(f"seed must be a whole number in [0, 2^31), got {seed!r}")
    return int(value)


def picture(pixels: np.ndarray) -> np.ndarray:
    """[-1, 1] pixels [H, W, C] -> uint8 [H, W] (grey) or [H, W, 3] for a gr.Image."""
    out = image_io.to_uint8(pixels)
    if out.ndim == 3 and out.shape[2] == 1:
        out = out[:, :, 0]
    return out


class App:
    """The three tasks on one Generator, as the page's event handlers.

    Each handler catches what it must show (InputError: its message; anything else: logged,
    and FAILED shown) so that no request can take the server down or show a traceback.
    """

    def __init__(
        self, gen: Generator, *, max_new_tokens: int = 256, allow_upscale: bool = False
    ) -> None:
        self.resolution = gen.resolution  # no VQ-GAN: an InputError now, not per request
        self.gen = gen
        self.max_new_tokens = max_new_tokens
        self.allow_upscale = allow_upscale
        self.lock = threading.Lock()  # one request on the model, whatever the queue says

    # -- inputs ------------------------------------------------------------------------------

    def read_film(self, path: str | os.PathLike | None) -> tuple[np.ndarray, np.ndarray]:
        """An uploaded file -> (preprocessed pixels [res, res, 3], codes [h*w])."""
        if not path:
            raise InputError("no film: upload a PNG, JPEG or DICOM file first")
        pixels = image_io.load_cxr(
            path,
            self.resolution,
            allow_upscale=self.allow_upscale,
            name=Path(path).name,  # the user's file name, not Gradio's upload path
        )
        return pixels, self.gen.encode_pixels(pixels[None])[0]

    # -- the three tasks ---------------------------------------------------------------------

    def report(
        self, film: str | None, mode: str, top_p: float, temperature: float, seed: float
    ) -> Iterator[tuple[Any, Any, Any, str]]:
        """CXR-to-report: (the film as the model sees it, its VQ-GAN reconstruction, the
        report so far, status), the report streamed as it is written."""
        try:
            sampler, seed_ = sampler_of(mode, top_p, temperature), seed_of(seed)
            with self.lock:
                pixels, codes = self.read_film(film)
                recon = self.gen.decode(codes[None])[0]
                texts = self.gen.stream_report(
                    codes, sampler=sampler, seed=seed_, max_new_tokens=self.max_new_tokens
                )
                yield picture(pixels), picture(recon), "", ""
                last, text = time.monotonic(), ""
                for text in texts:
                    if time.monotonic() - last >= UPDATE_S:
                        last = time.monotonic()
                        yield gr.skip(), gr.skip(), text, gr.skip()
                yield gr.skip(), gr.skip(), text, gr.skip()
        except InputError as e:
            yield None, None, "", status_markdown(message(e))
        except Exception:
            logger.exception("CXR-to-report failed")
            yield None, None, "", status_markdown(FAILED)

    def film(
        self,
        report: str,
        mode: str,
        top_p: float,
        temperature: float,
        seed: float,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio's way to ask for a bar)
    ) -> tuple[Any, str]:
        """Report-to-CXR: (the film, status), with a progress bar over its h*w codes."""
        try:
            sampler, seed_ = sampler_of(mode, top_p, temperature), seed_of(seed)
            n = self.gen.num_codes
            with self.lock:
                stream = self.gen.stream_image(report, sampler=sampler, seed=seed_)
                codes: list[int] = []
                progress((0, n), desc="image codes", unit="codes")
                last = time.monotonic()
                for code in stream:
                    codes.append(code)
                    if time.monotonic() - last >= UPDATE_S:
                        last = time.monotonic()
                        progress((len(codes), n), desc="image codes", unit="codes")
                pixels = self.gen.decode(np.asarray(codes, np.int32)[None])[0]
            return picture(pixels), ""
        except InputError as e:
            return None, status_markdown(message(e))
        except Exception:
            logger.exception("report-to-CXR failed")
            return None, status_markdown(FAILED)

    def answer(
        self,
        film: str | None,
        question: str,
        mode: str,
        top_p: float,
        temperature: float,
        seed: float,
    ) -> tuple[str, str]:
        """CXR-VQA: (the answer, status)."""
        try:
            sampler, seed_ = sampler_of(mode, top_p, temperature), seed_of(seed)
            with self.lock:
                _, codes = self.read_film(film)
                texts = self.gen.stream_answer(
                    codes,
                    question,
                    sampler=sampler,
                    seed=seed_,
                    max_new_tokens=min(self.max_new_tokens, VQA_TOKENS),
                )
                text = ""
                for so_far in texts:  # answers are a few tokens: shown whole
                    text = so_far
            return text, ""
        except InputError as e:
            return "", status_markdown(message(e))
        except Exception:
            logger.exception("VQA failed")
            return "", status_markdown(FAILED)

    def warm_up(self) -> None:
        """Compile what the three tasks run (default sampler), so the first request is fast:
        the encoder and decoder, and each task's first two decoding steps."""
        gen, sampler = self.gen, sampler_of(TOP_P, 0.92, 1.0)
        res = gen.resolution
        codes = gen.encode_pixels(np.zeros((1, res, res, 3), np.float32))[0]
        gen.decode(codes[None])
        streams = (
            gen.stream_report(codes, sampler=sampler, max_new_tokens=self.max_new_tokens),
            gen.stream_answer(
                codes, EXAMPLE_QUESTION, max_new_tokens=min(self.max_new_tokens, VQA_TOKENS)
            ),
            gen.stream_image(EXAMPLE_REPORT, sampler=sampler),
        )
        for s in streams:
            for i, _ in enumerate(s):
                if i == 1:
                    break


def build_ui(app: App, *, title: str = "LLM-CXR") -> gr.Blocks:
    """The page: sampling controls, then one tab per task."""
    gen = app.gen
    res = gen.resolution
    films = dict(
        format="png",
        height=320,
        buttons=["download", "fullscreen"],
        elem_classes=["llmcxr-film"],
        interactive=False,
    )
    model = dict(concurrency_id="model", concurrency_limit=1)
    with gr.Blocks(title=title, analytics_enabled=False) as blocks:
        gr.Markdown(
            f"# {html.escape(title)}\n"
            f"Films are {res}x{res} pixels, {gen.num_codes} VQ-GAN codes each. "
            "One request runs at a time; others wait in the queue."
        )
        with gr.Row():
            mode = gr.Radio([TOP_P, GREEDY], value=TOP_P, label="decoding", elem_id="mode")
            top_p = gr.Slider(0.05, 1.0, value=0.92, step=0.01, label="top-p", elem_id="top-p")
            temperature = gr.Slider(
                0.1, 2.0, value=1.0, step=0.05, label="temperature", elem_id="temperature"
            )
            seed = gr.Number(0, precision=0, minimum=0, label="seed", elem_id="seed")
        sampling = [mode, top_p, temperature, seed]
        with gr.Tabs():
            with gr.Tab("CXR-to-report", id="report", elem_id="tab-report"):
                film = gr.File(label="film (PNG, JPEG or DICOM)", elem_id="report-film")
                go = gr.Button("Write the report", variant="primary", elem_id="report-go")
                status = gr.Markdown(elem_id="report-status", elem_classes=["llmcxr-status"])
                with gr.Row():
                    seen = gr.Image(
                        label="the film as the model sees it", elem_id="report-seen", **films
                    )
                    recon = gr.Image(
                        label="VQ-GAN reconstruction (the codes the model reads)",
                        elem_id="report-recon",
                        **films,
                    )
                text = gr.Textbox(label="report", lines=6, elem_id="report-text")
                go.click(app.report, [film, *sampling], [seen, recon, text, status], **model)
            with gr.Tab("report-to-CXR", id="film", elem_id="tab-film"):
                report = gr.Textbox(
                    label="report", lines=4, placeholder=EXAMPLE_REPORT, elem_id="film-report"
                )
                go = gr.Button("Generate the film", variant="primary", elem_id="film-go")
                status = gr.Markdown(elem_id="film-status", elem_classes=["llmcxr-status"])
                image = gr.Image(
                    label=f"generated film ({res}x{res} PNG)",
                    elem_id="film-image",
                    **films,
                )
                go.click(app.film, [report, *sampling], [image, status], **model)
            with gr.Tab("VQA", id="vqa", elem_id="tab-vqa"):
                vfilm = gr.File(label="film (PNG, JPEG or DICOM)", elem_id="vqa-film")
                question = gr.Textbox(
                    label="question", placeholder=EXAMPLE_QUESTION, elem_id="vqa-question"
                )
                go = gr.Button("Ask", variant="primary", elem_id="vqa-go")
                status = gr.Markdown(elem_id="vqa-status", elem_classes=["llmcxr-status"])
                answer = gr.Textbox(label="answer", elem_id="vqa-answer")
                go.click(app.answer, [vfilm, question, *sampling], [answer, status], **model)
    return blocks


def compile_cache(path: str | os.PathLike | None) -> None:
    """Keep XLA's compiled programs in `path` (every program, however quick to compile), so
    that a restarted server compiles nothing. None or "": no persistent cache."""
    if not path:
        return
    import jax

    jax.config.update("jax_compilation_cache_dir", os.fspath(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def default_compile_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "llmcxr_jax" / "xla"


@dataclasses.dataclass
class Server:
    """A running app: its page's address; `close` stops it, `block` waits for Ctrl-C."""

    blocks: gr.Blocks
    app: App
    url: str
    timings_s: dict[str, float]

    def close(self) -> None:
        self.blocks.close()

    def block(self) -> None:
        try:
            self.blocks.block_thread()
        finally:
            self.close()


def start(
    checkpoint_dir: str | os.PathLike,
    vqgan: str | os.PathLike | None = None,
    *,
    tokenizer: str | os.PathLike | None = None,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    max_new_tokens: int = 256,
    allow_upscale: bool = False,
    max_queue: int = MAX_QUEUE,
    warm_up: bool = True,
    gen: Generator | None = None,
    quantize: str | None = None,
) -> Server:
    """Load the model (a checkpoint or a training workdir, for the LM and the VQ-GAN), compile
    the tasks, and serve the page at http://host:port/ (in background threads)."""
    t0 = time.perf_counter()
    if gen is None:
        if not vqgan:
            raise InputError("--vqgan: the page reads and shows films, so it needs a VQ-GAN")
        vq = checkpoint.model_dir(vqgan)
        gen = Generator.load(
            checkpoint_dir, vq, tokenizer=tokenizer, batch_size=1, quantize=quantize
        )
    app = App(gen, max_new_tokens=max_new_tokens, allow_upscale=allow_upscale)
    timings = {"load": time.perf_counter() - t0}
    if warm_up:
        t = time.perf_counter()
        app.warm_up()
        timings["compile"] = time.perf_counter() - t
    blocks = build_ui(app, title=f"LLM-CXR: {Path(checkpoint_dir).name or 'model'}")
    blocks.queue(default_concurrency_limit=1, max_size=max_queue)
    if host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning(
            "serving on %s: anyone who can reach this machine can upload films and use the model",
            host,
        )
    t = time.perf_counter()
    try:
        blocks.launch(
            server_name=host,
            server_port=port,
            prevent_thread_lock=True,
            share=False,
            show_error=False,
            quiet=True,
            ssr_mode=False,
            pwa=False,
            mcp_server=False,
            max_file_size=MAX_UPLOAD,
            theme=gr.themes.Default(
                font=["ui-sans-serif", "system-ui", "sans-serif"],  # local fonts: no web fonts
                font_mono=["ui-monospace", "monospace"],
            ),
            css=CSS,
        )
    except OSError as e:
        raise InputError(f"--host {host} --port {port}: cannot listen there ({e})") from e
    timings["listen"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    url = f"http://{'[' + host + ']' if ':' in host else host}:{blocks.server_port}/"
    logger.info(
        "serving %s at %s (load %.1f s, compile %.1f s, start-up %.1f s)",
        checkpoint_dir,
        url,
        timings["load"],
        timings.get("compile", 0.0),
        timings["total"],
    )
    return Server(blocks, app, url, timings)
