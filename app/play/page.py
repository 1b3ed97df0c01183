"""The Gradio page: one HTML component (canvas, HUD, controls, key map) whose script talks to
``/ws`` directly. Gradio serves and themes the page; frames never go through Gradio's queue
(its image streaming writes a file per frame and has no input channel).

The page's HTML, CSS and JavaScript live in ``app/play/web/`` as plain files.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

# A local server never phones home: Gradio reads this when it is imported (and Blocks below say it too).
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
import gradio as gr

from app.play.controls import KEY_TO_BUTTON, KEYS, PAD_LABELS
from app.play.gate import Routes
from engine.action import BUTTONS

WEB = Path(__file__).with_name("web")
# What the page loads from Gradio (GET only; seen in Chromium, tests/test_browser.py): the play server
# serves nothing else of Gradio's (app/play/gate.py), so no upload, proxy, file or queue route is reachable.
PAGE_ROUTES = Routes(exact=frozenset({"/", "/config", "/theme.css", "/favicon.ico", "/manifest.json", "/robots.txt"}),
                     prefixes=("/assets/", "/static/"))
KEY_LABELS = {"ArrowUp": "↑", "ArrowDown": "↓", "ArrowLeft": "←", "ArrowRight": "→", "Space": "Space",
              "ControlLeft": "Ctrl", "ControlRight": "Ctrl R"}


def _label(code: str) -> str:
    return KEY_LABELS.get(code, code.removeprefix("Key"))


def _keymap_rows() -> str:
    rows = []
    for button in BUTTONS:
        codes = KEYS[button]
        keys = "".join(f"<kbd>{html.escape(_label(k))}</kbd>" for k in codes)
        rows.append(f'<tr data-keys="{" ".join(codes)}"><td>{button.replace("_", " ")}</td>'
                    f"<td>{keys}</td><td>{html.escape(PAD_LABELS[button])}</td></tr>")
    return "".join(rows)


def page_html(model: str, fps: float, width: int, height: int) -> str:
    config = {"keys": sorted(KEY_TO_BUTTON), "fps": fps, "width": width, "height": height}
    return (WEB.joinpath("play.html").read_text()
            .replace("__CONFIG__", html.escape(json.dumps(config), quote=True))
            .replace("__MODEL__", html.escape(model)).replace("__W__", str(width)).replace("__H__", str(height))
            .replace("__KEYMAP__", _keymap_rows()))


def build_page(model: str, fps: float, width: int, height: int) -> tuple[gr.Blocks, str, str]:
    """(Blocks, css, head) for ``gr.mount_gradio_app``."""
    with gr.Blocks(title="worldstream — play", analytics_enabled=False) as demo:
        gr.HTML(html_template=page_html(model, fps, width, height), js_on_load=WEB.joinpath("play.js").read_text(),
                apply_default_css=False, container=False, padding=False)
    css = WEB.joinpath("play.css").read_text() + "\nfooter { display: none !important; }\n"
    head = '<meta name="color-scheme" content="dark">'
    return demo, css, head
