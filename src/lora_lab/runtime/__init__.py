"""Where the course runs: units and caches, the machine, profiles, the Hub, library workarounds, Drive. See `lora_lab`'s docstring for each module."""
