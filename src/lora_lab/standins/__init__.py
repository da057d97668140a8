"""Stand-in models and data: SmolLM2 from its wheel, the SQL task, the tiny Llama, the t4 rehearsal's model and rows. See `lora_lab`'s docstring for each module."""
