"""immunity: make harmful fine-tuning of LLMs difficult, and measure how difficult.

import immunity
immunity.defend(...), immunity.attack(...), immunity.evaluate(...), immunity.run(...),
immunity.bench(...), immunity.report(...)   # see immunity.api
"""

__version__ = "0.2.0"
__all__ = [
    "attack",
    "attack_search",
    "bench",
    "catalogue",
    "clean_cache",
    "defend",
    "demo",
    "evaluate",
    "generate",
    "prepare",
    "probe",
    "report",
    "run",
]


def __getattr__(name):  # the stages load torch and transformers: only when first used
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'immunity' has no attribute {name!r}")
