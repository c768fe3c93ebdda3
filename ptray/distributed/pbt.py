"""Population based training with one population per seed (`ptray tune` runs a Tuner per seed and grid cell).

Ray's PBT and PB2 copy the donor's whole config on exploit, seed and identity included. Here a member keeps its own
identity (config_id, seed, overrides, label: its population slot) and takes over only the donor's trained state, from
the donor's Tune checkpoint, and the explored knobs.
"""
from ray.tune.schedulers import PopulationBasedTraining
from ray.tune.schedulers.pb2 import PB2

from ptray.distributed.search import IDENTITY


class _KeepsIdentity:
    def _get_new_config(self, trial, trial_to_clone):
        config, operations = super()._get_new_config(trial, trial_to_clone)
        return {**config, **{k: trial.config[k] for k in IDENTITY}}, operations


class SeedPBT(_KeepsIdentity, PopulationBasedTraining):
    pass


class SeedPB2(_KeepsIdentity, PB2):
    pass
