"""The benchmark's machinery: pipeline, store, grid, launchers, reports. (`immunity.bench(...)`,
the package called, is `immunity.api.bench`: see `immunity/__init__.py`.)"""
