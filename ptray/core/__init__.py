"""The training core: tasks, backbones, prompt methods and the train/eval loop. No Ray, no MLflow."""
