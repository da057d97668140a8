"""The classroom: quizzes and exercise checks. See `lora_lab`'s docstring for each module."""
