"""Stability analysis over per-seed results: statistics (``stats``) and figures (``plots``)."""
