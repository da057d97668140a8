"""The lesson layer: the code the notebooks teach, torch and the standard library only. See `lora_lab`'s docstring for each module."""
