"""Build tooling of the course, kept apart from the lesson helpers the notebooks import.

    course          runs, checks, strips and exports the notebooks (`python -m lora_lab.tooling.course`)
    colab           Open-in-Colab badges, the Colab install cell, `set-repo` and `check` (standard library only)
    figure_backend  the matplotlib backend that saves every figure as PNG and SVG (`course figures`)
"""
