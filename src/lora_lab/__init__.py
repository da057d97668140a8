"""lora-lab: the helper package behind the course's notebooks.

Modules (import the one you need):
    hardware  what machine this is and which dtype to compute in
    profiles  the `t4` / `cpu` run profiles
    tiny      the cpu profile's locally built tiny Llama and tokenizer
    data      the course's synthetic instruction tasks and the t4 dataset loader
"""

__version__ = "0.1.0"
