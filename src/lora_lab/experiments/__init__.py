"""The experiments behind notebooks 02, 04, 05 and 06: ranks, 4-bit formats, adapters, export, scale. See `lora_lab`'s docstring for each module."""
