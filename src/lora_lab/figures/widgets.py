"""The interactive VRAM calculator of notebook 01 (ipywidgets).

`vram_calculator()` returns a widget box. Every control change re-runs `lora_lab.estimation.vram.estimate`
(well under a millisecond) and redraws a stacked bar of the breakdown, with the verdict from
`lora_lab.estimation.vram.verdict` above it. A bad input (a rank larger than a layer, an unknown config
path) shows its message where the chart was; no traceback reaches the learner.

For browser tests the parts are findable by CSS class: `vram-calculator` (the box),
`vram-verdict` (the verdict HTML), `vram-chart` (the chart Output), `vram-error` (added to the
verdict while an input is bad), and each control carries a `vram-<name>` class.
"""

from __future__ import annotations

import html
import json
import math
import os

from lora_lab.estimation import vram

#: What the "targets" drop-down offers (label -> peft target_modules).
TARGET_CHOICES = {
    "all linear layers": "all-linear",
    "q and v only": ("q_proj", "v_proj"),
    "attention (q, k, v, o)": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "MLP (gate, up, down)": ("gate_proj", "up_proj", "down_proj"),
}
CUSTOM = "custom (parameter count or config.json path)"
#: The browser calculator's extra choice: a config.json pasted into its text box (state["config"]).
PASTED = "pasted config.json"


def _parse_custom(text: str):
    """A custom model entry: '7e9', '13B', '135M', a path to a config.json, or a Hub id ('org/name').

    Counts are parsed by `vram.parse_model_text`, as on the command line. Raises ValueError.
    """
    model = vram.parse_model_text(text)
    if isinstance(model, str) and not os.path.exists(model) and "/" not in model:
        raise ValueError(f"{text!r} is neither a parameter count (7B, 7e9), an existing config.json path, "
                         "nor a Hub model id (org/name).")
    return model


def _pasted_config(text: str) -> dict:
    """A pasted config.json as a dict. Raises ValueError saying what to paste instead."""
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"the pasted config is not JSON ({err.msg}, line {err.lineno}); paste a model's whole "
                         "config.json.") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"the pasted config is a JSON {type(cfg).__name__}, not an object; paste a model's whole "
                         "config.json ({ ... }).")
    return cfg


def calculator_inputs(state: dict) -> tuple[object, dict]:
    """Turn the calculator's control values into (model, estimate kwargs). Pure; raises ValueError."""
    if state["model"] == CUSTOM:
        model = _parse_custom(state["custom"])
    elif state["model"] == PASTED:
        model = _pasted_config(state.get("config", ""))
    else:
        model = state["model"]
    for key in ("rank", "batch_size", "seq_len"):
        value = state[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{key.replace('_', ' ')} must be a whole number (got {value!r}).")
    kwargs = dict(
        method=state["method"],
        rank=int(state["rank"]),
        target_modules=TARGET_CHOICES[state["targets"]],
        batch_size=int(state["batch_size"]),
        seq_len=int(state["seq_len"]),
        gradient_checkpointing=bool(state["gradient_checkpointing"]),
        optimizer=state["optimizer"],
        precision=state["precision"],
    )
    return model, kwargs


def render(state: dict):
    """(verdict text, estimate or None, error message or None) for the calculator's state."""
    try:
        model, kwargs = calculator_inputs(state)
        est = vram.quiet_estimate(model, **kwargs)
        return vram.verdict(model, state["gpu"], **kwargs), est, None
    except ValueError as err:
        return None, None, str(err)
    except (ArithmeticError, TypeError, KeyError) as err:  # never a traceback (or a stale verdict) in the widget
        return None, None, f"cannot use this input ({type(err).__name__}: {err}); change the highlighted value."


def calculator_answer(state: dict) -> dict:
    """What the browser calculator shows for `state`, JSON-ready: the widget's verdict and the breakdown in
    bytes, or its one-line error (the page at build/site/calculator/ calls this under Pyodide)."""
    text, est, error = render(state)
    if error is not None:
        return {"error": error}
    return {"verdict": text, "fits": est.fits(state["gpu"]), "total": est.total, "breakdown": est.breakdown(),
            "gpu_bytes": vram.GPUS[state["gpu"]].usable_bytes, "trainable_params": est.trainable_params}


def calculator_choices() -> dict:
    """The browser calculator's controls: the widget's choices, the pasted config added, and its defaults."""
    return {"model": [*vram.preset_names(), CUSTOM, PASTED], "method": list(vram.METHODS),
            "targets": list(TARGET_CHOICES), "optimizer": list(vram.OPTIMIZERS), "precision": list(vram.PRECISIONS),
            "gpu": list(vram.GPUS), "defaults": {**DEFAULT_STATE, "config": ""}}


DEFAULT_STATE = {
    "model": "Qwen/Qwen2.5-1.5B",
    "custom": "7B",
    "method": "qlora",
    "rank": 16,
    "targets": "all linear layers",
    "batch_size": 4,
    "seq_len": 512,
    "gradient_checkpointing": True,
    "optimizer": "paged_adamw_8bit",
    "precision": "fp16",
    "gpu": "Colab T4",
}


def vram_calculator(**initial):
    """Build the calculator widget; keyword arguments override `DEFAULT_STATE` entries."""
    import ipywidgets as w
    import matplotlib.pyplot as plt

    state = {**DEFAULT_STATE, **initial}
    style = {"description_width": "110px"}

    def layout():  # one Layout per control: a shared one would hide them all with the custom box
        return w.Layout(width="330px")

    controls = {
        "model": w.Dropdown(options=[*vram.preset_names(), CUSTOM], description="model", style=style, layout=layout()),
        # Read on Enter or when the box loses focus, not at every keystroke: a Hub id is looked up when it is complete.
        "custom": w.Text(description="custom", placeholder="7B, 13e9 or path/to/config.json (Enter)", style=style,
                         layout=layout(), continuous_update=False),
        "method": w.ToggleButtons(options=list(vram.METHODS), description="method", style=style),
        "rank": w.BoundedIntText(min=1, max=4096, description="LoRA rank", style=style, layout=layout()),
        "targets": w.Dropdown(options=list(TARGET_CHOICES), description="LoRA targets", style=style, layout=layout()),
        "batch_size": w.BoundedIntText(min=1, max=4096, description="batch size", style=style, layout=layout()),
        "seq_len": w.BoundedIntText(min=1, max=1 << 20, step=64, description="sequence length", style=style,
                                    layout=layout()),
        "gradient_checkpointing": w.Checkbox(description="gradient checkpointing", indent=False),
        "optimizer": w.Dropdown(options=list(vram.OPTIMIZERS), description="optimizer", style=style, layout=layout()),
        "precision": w.Dropdown(options=list(vram.PRECISIONS), description="precision", style=style, layout=layout()),
        "gpu": w.Dropdown(options=list(vram.GPUS), description="GPU", style=style, layout=layout()),
    }
    for name, control in controls.items():
        control.value = state[name]
        control.add_class(f"vram-{name.replace('_', '-')}")
    verdict = w.HTML(description="verdict")
    verdict.add_class("vram-verdict")
    chart = w.Output(layout=w.Layout(min_height="330px"))
    chart.add_class("vram-chart")

    def update(_=None):
        current = {name: control.value for name, control in controls.items()}
        controls["custom"].layout.display = "" if current["model"] == CUSTOM else "none"
        text, est, error = render(current)
        # Set the Output's contents directly (not `with chart:`), so it works in any front end and in tests.
        if error is not None:
            verdict.add_class("vram-error")
            verdict.value = f"<b style='color:#b00020'>Cannot estimate:</b> {html.escape(error)}"
            chart.outputs = ()
            chart.append_stdout(error + "\n")
            return
        verdict.remove_class("vram-error")
        verdict.value = f"<b>{html.escape(text)}</b>"
        from lora_lab.figures.plots import stacked_breakdown

        label = f"{current['method']}, batch {current['batch_size']} x {current['seq_len']}"
        fig = stacked_breakdown({label: est}, gpus=(current["gpu"],))
        chart.outputs = ()
        chart.append_display_data(fig)
        plt.close(fig)

    for control in controls.values():
        control.observe(update, names="value")
    update()
    box = w.VBox([w.HBox([w.VBox(list(controls.values())[:6]), w.VBox(list(controls.values())[6:])]), verdict, chart])
    box.add_class("vram-calculator")
    box.controls, box.verdict, box.chart = controls, verdict, chart  # handles for tests
    return box
