"""Stability analysis over per-seed results: figures (``plots``), the report (``report``, which also logs a folder to
MLflow with its figures) and loss landscapes (``landscape``). The statistics themselves are ptray.stats."""
