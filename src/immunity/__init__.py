"""immunity: make harmful fine-tuning of LLMs difficult, and measure how difficult.

    import immunity
    immunity.defend(...), immunity.attack(...), immunity.evaluate(...), immunity.run(...),
    immunity.bench(...), immunity.report(...)   # see immunity.api
"""

import types

__version__ = "0.2.0"
__all__ = ["attack", "attack_search", "bench", "catalogue", "defend", "demo", "evaluate", "generate", "prepare",
           "probe", "report", "run"]


class _CallableBench(types.ModuleType):
    """`immunity.bench` is the benchmark's package (light to import) and, called, the grid function
    `immunity.api.bench`: a subpackage and a function cannot otherwise share the name."""

    def __call__(self, *args, **kwargs):
        from .api import bench

        return bench(*args, **kwargs)


from . import bench  # noqa: E402  (the package, made callable; before __getattr__, which would load the api)

bench.__class__ = _CallableBench


def __getattr__(name):  # the stages load torch and transformers: only when first used
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'immunity' has no attribute {name!r}")
