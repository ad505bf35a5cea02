"""immunity: make harmful fine-tuning of LLMs difficult, and measure how difficult."""

__version__ = "0.1.0"
