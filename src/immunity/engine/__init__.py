"""The engine of one run: the pipeline (defend -> attack -> evaluate), its identity and result row, the base
model's answers, released models written to disk, memory and disk named, and the probes."""
