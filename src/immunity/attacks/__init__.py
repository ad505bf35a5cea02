"""Attacks, one file each (`immunity.builtins` imports and so registers them all)."""
