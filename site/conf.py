"""Sphinx configuration of the course website (`make site`; sources assembled by lora_lab.tooling.site).

The lessons are the notebooks CI executed on the cpu profile (build/notebooks/): rendered with their outputs,
never executed again here. Everything is served from the site itself: no CDN at build or view time.
"""

project = "lora-lab"
author = "the lora-lab authors"
extensions = ["myst_nb"]
nb_execution_mode = "off"  # the notebooks come executed; a second run would differ and take minutes
myst_enable_extensions = ["colon_fence"]
html_theme = "furo"
html_title = "lora-lab: LoRA and QLoRA on a budget"
exclude_patterns = ["_build"]
suppress_warnings = ["mystnb.unknown_mime_type"]
