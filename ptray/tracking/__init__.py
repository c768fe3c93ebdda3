"""Tracking: per-seed results of an experiment folder (`results`), their MLflow records (`store`; the Ray Tune
callback that feeds it live is ptray.distributed.mlflow_callback), and the summary table `ptray tune` prints
(`summary`). No Ray here."""
