"""Ray layer: `ptray tune` runs configs x seeds as Ray Tune trials (search, schedulers, resume, confirm); a trial
trains in its own process or as a Ray Train TorchTrainer of DeepSpeed workers. Ray is imported only where used."""
