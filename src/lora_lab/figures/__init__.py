"""Figures and widgets: the notebooks' charts and diagrams, and the interactive VRAM calculator. See `lora_lab`'s docstring for each module."""
