"""The website in build/site/ (`make site`; run by `make site-test`): lesson pages with their outputs and figures,
the answer key off the learner pages, nothing from a CDN, and the browser calculator equal to Python.

The calculator test serves build/site/ from this machine and drives it in Debian's Chromium with every request
that leaves 127.0.0.1 refused: the page must load and answer offline. Each total it shows must equal
`lora_lab.estimation.vram.estimate` in Python to the byte, and each verdict and error the widget's text.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import threading
import time
from pathlib import Path

import pytest

from lora_lab.estimation import vram
from lora_lab.figures import widgets
from lora_lab.tooling import site

pytestmark = pytest.mark.site
SITE = Path(os.environ.get("LORA_LAB_SITE", site.OUT))
CHROMIUM = os.environ.get("LORA_LAB_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
#: Pages a learner reads: none may link the answer key.
LEARNER_PAGES = ("index.html", "learners.html", "pre-workshop.html", "calculator/index.html")


def lesson_pages() -> list[Path]:
    from lora_lab.tooling.course import course_notebooks

    return [SITE / "lessons" / f"{p.stem}.html" for p in course_notebooks()]


@pytest.fixture(scope="module", autouse=True)
def built():
    if not (SITE / "index.html").exists():
        pytest.fail(f"{SITE} has no site: run `make site` first (after `make nbtest`).")


def test_every_lesson_page_has_its_outputs_a_figure_with_alt_text_and_the_t4_note():
    for page in lesson_pages():
        text = page.read_text()
        assert text.count('class="cell_output') >= 5, f"{page.name}: too few cell outputs"
        figures = re.findall(r'<img[^>]*src="data:image/png;base64,[^"]+"[^>]*>', text)
        assert figures, f"{page.name}: no figure"
        for img in figures:
            alt = re.search(r'alt="([^"]*)"', img)
            assert alt and len(alt.group(1)) > 20, f"{page.name}: a figure without alt text"
        assert "On a Colab T4 the same notebook" in text, page.name
        assert "Traceback (most recent call last)" not in text, f"{page.name}: a traceback in the rendered run"


def test_the_answer_key_is_built_but_no_learner_page_links_it():
    assert (SITE / "answer-key.html").exists()
    assert "answer-key.html" in (SITE / "instructor-guide.html").read_text()
    for page in [*map(SITE.joinpath, LEARNER_PAGES), *lesson_pages()]:
        assert "answer-key" not in page.read_text(), f"{page.relative_to(SITE)} links the answer key"


def test_the_index_has_the_readmes_badges_and_every_lesson():
    text = (SITE / "index.html").read_text()
    assert text.count('href="https://colab.research.google.com/github/') == 2 * len(lesson_pages())
    for page in lesson_pages():
        assert f'href="lessons/{page.name}"' in text
    assert 'href="calculator/index.html"' in text


def test_nothing_is_loaded_from_another_host():
    for page in SITE.rglob("*.html"):
        text = page.read_text()
        for tag in re.findall(r"<(?:script|link|img)\b[^>]*>", text):
            assert not re.search(r'(?:src|href)="(?:https?:)?//', tag), f"{page.relative_to(SITE)}: {tag[:120]}"


def test_the_calculator_bundle_holds_the_estimator_and_no_torch():
    import zipfile

    names = zipfile.ZipFile(SITE / "calculator" / "lora_lab.zip").namelist()
    assert "lora_lab/estimation/vram.py" in names and "lora_lab/figures/widgets.py" in names
    assert not any("torch" in n for n in names)
    bundle = zipfile.ZipFile(SITE / "calculator" / "lora_lab.zip")
    for name in names:  # the course's own files, byte for byte (not a port)
        assert bundle.read(name) == (site.ROOT / "src" / name).read_bytes(), name


# --------------------------------------------------------------------------------------------
# The calculator page in Chromium
# --------------------------------------------------------------------------------------------

D = widgets.DEFAULT_STATE
LLAMA_1B = json.dumps({**vram.preset_config("meta-llama/Llama-3.2-1B"), "num_hidden_layers": 12})
#: Twenty-four configurations: every method, targets, optimizer and precision, long sequences, counts, a pasted config.
CONFIGS = [
    {},
    {"method": "lora", "precision": "bf16", "optimizer": "adamw"},
    {"method": "full", "precision": "mixed", "optimizer": "adamw", "batch_size": 1},
    {"method": "full", "precision": "mixed", "optimizer": "paged_adamw_8bit", "model": "HuggingFaceTB/SmolLM2-360M"},
    {"method": "full", "precision": "fp32", "optimizer": "sgd", "model": "HuggingFaceTB/SmolLM2-135M"},
    {"model": "Qwen/Qwen2.5-7B", "rank": 64, "targets": "q and v only"},
    {"model": "Qwen/Qwen2.5-7B", "seq_len": 8192, "gradient_checkpointing": False},
    {"model": "meta-llama/Llama-3.1-8B", "seq_len": 32768, "batch_size": 1},
    {"model": "meta-llama/Llama-2-13b-hf", "gpu": list(vram.GPUS)[-1]},
    {"model": "google/gemma-2-2b", "targets": "MLP (gate, up, down)", "precision": "bf16"},
    {"model": "mistralai/Mistral-7B-v0.3", "method": "lora", "targets": "attention (q, k, v, o)"},
    {"model": "microsoft/Phi-3-mini-4k-instruct", "optimizer": "adamw_8bit", "batch_size": 16},
    {"model": "TinyLlama/TinyLlama-1.1B", "rank": 256, "seq_len": 2048},
    {"model": "Qwen/Qwen2.5-0.5B", "method": "full", "precision": "bf16", "optimizer": "paged_adamw_32bit"},
    {"model": "stabilityai/stablelm-3b-4e1t", "method": "qlora", "rank": 8},
    {"model": "meta-llama/Llama-3.2-3B", "gpu": list(vram.GPUS)[1], "batch_size": 32, "seq_len": 4096},
    {"model": widgets.CUSTOM, "custom": "7B"},
    {"model": widgets.CUSTOM, "custom": "13e9", "method": "lora", "precision": "fp16"},
    {"model": widgets.CUSTOM, "custom": "70B", "method": "full", "precision": "mixed"},
    {"model": widgets.CUSTOM, "custom": "meta-llama/Llama-2-7b-hf"},  # a preset typed as text: no Hub request
    {"model": widgets.PASTED, "config": LLAMA_1B},
    {"model": widgets.PASTED, "config": LLAMA_1B, "method": "full", "precision": "mixed", "seq_len": 16384},
    {"model": "HuggingFaceTB/SmolLM2-1.7B", "gradient_checkpointing": False, "batch_size": 8, "seq_len": 1024},
    {"model": "Qwen/Qwen2.5-3B", "method": "lora", "precision": "fp32", "optimizer": "sgd"},
]
#: Bad input: each gets the widget's one-line message where the verdict was.
BAD = [
    {"rank": 100000},
    {"model": widgets.PASTED, "config": '{"model_type": "llama", "hidden_size": '},
    {"model": widgets.CUSTOM, "custom": "not a model"},
    {"batch_size": 0},
]


@pytest.fixture(scope="module")
def calculator_page():
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing in CI: .ci/run should have installed Debian's chromium.")
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # one line per file would bury the test's own output
            pass

    handler = functools.partial(Quiet, directory=str(SITE))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    refused = []

    def offline(route):  # the network is off: only this machine's server answers
        if route.request.url.startswith(base):
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort("internetdisconnected")

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_context().new_page()
        page.route("**/*", offline)
        errors = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        start = time.perf_counter()
        page.goto(f"{base}/calculator/index.html")
        page.wait_for_function("document.body.dataset.ready", timeout=60_000)
        page.load_seconds = time.perf_counter() - start
        page.refused_at_load, page.refused, page.errors = list(refused), refused, errors
        yield page
        browser.close()
    server.shutdown()


def set_state(page, changes: dict) -> dict:
    """Put `changes` (over the defaults) into the page's controls, each with the change event a learner's edit
    fires, and return the full state once the page has answered."""
    state = {**D, "config": "", **changes}
    for name, value in state.items():
        selector = f"#{name}"
        if name in ("model", "method", "targets", "optimizer", "precision", "gpu"):
            page.select_option(selector, value)
        elif name == "gradient_checkpointing":
            page.set_checked(selector, bool(value))
        else:  # text boxes, some hidden until their model choice shows them
            page.locator(selector).evaluate("(el, v) => { el.value = v; el.dispatchEvent(new Event('change')); }",
                                            str(value))
    page.evaluate("update()")
    return state


def test_the_calculator_loads_offline_from_the_site_alone(calculator_page):
    page = calculator_page
    assert page.evaluate("document.body.dataset.ready") == "1", page.locator("#status").inner_text()
    assert page.errors == []
    assert page.refused_at_load == [], f"the page asked another host for {page.refused_at_load}"
    print(f"calculator first load: {page.load_seconds:.1f} s to a first verdict (page's own count "
          f"{page.evaluate('document.body.dataset.loadSeconds')} s)")


@pytest.mark.parametrize("changes", CONFIGS, ids=[f"config{i}" for i in range(len(CONFIGS))])
def test_the_calculator_page_equals_python_to_the_byte(calculator_page, changes):
    state = set_state(calculator_page, changes)
    model, kwargs = widgets.calculator_inputs(state)
    expected = vram.quiet_estimate(model, **kwargs)
    shown = calculator_page.locator("#verdict").inner_text()
    assert calculator_page.evaluate("document.body.dataset.total") == str(expected.total), shown
    assert int(calculator_page.locator("#total").get_attribute("data-bytes")) == expected.total
    for part, value in expected.breakdown().items():
        assert int(calculator_page.locator(f"#part-{part}").get_attribute("data-bytes")) == value
    assert shown == vram.verdict(model, state["gpu"], **kwargs)


@pytest.mark.parametrize("changes", BAD, ids=["rank-too-large", "broken-json", "not-a-model", "batch-zero"])
def test_bad_input_gets_the_widgets_message_in_place_of_the_verdict(calculator_page, changes):
    state = set_state(calculator_page, changes)
    verdict = calculator_page.locator("#verdict")
    assert "error" in verdict.get_attribute("class")
    assert verdict.inner_text() == widgets.render(state)[2]
    assert calculator_page.locator("#breakdown tr").count() == 0
    assert calculator_page.evaluate("document.body.dataset.total") == ""


def test_a_hub_id_offline_says_to_paste_the_config(calculator_page):
    set_state(calculator_page, {"model": widgets.CUSTOM, "custom": "someone/unknown-model-7b"})
    text = calculator_page.locator("#verdict").inner_text()
    assert "cannot reach the Hugging Face Hub" in text and "paste its config.json" in text
    assert any("huggingface.co/someone/unknown-model-7b/resolve/main/config.json" in u for u in calculator_page.refused)
