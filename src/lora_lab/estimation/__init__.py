"""Estimation and measurement: the memory estimator, measured steps, preflights, T4 budgets. See `lora_lab`'s docstring for each module."""
