"""Training and evaluation: data, tokenization, models, checkpoints, callbacks, trl SFT, scoring runs. See `lora_lab`'s docstring for each module."""
