"""Tracking: per-seed results of an experiment folder (`results`), their MLflow records (`store`, and the Ray Tune
callback in `mlflow_callback`), and the summary table `ptray tune` prints (`summary`)."""
