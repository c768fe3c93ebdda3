"""Population based training with one population per seed (`ptray tune` runs a Tuner per seed and grid cell).

Ray's PBT and PB2 copy the donor's whole config on exploit, seed and identity included. Here a member keeps its own
identity (config_id, seed, overrides, label: its population slot) and takes over only the donor's trained state, from
the donor's Tune checkpoint, and the explored knobs.
"""
from ray.tune.experiment import Trial
from ray.tune.schedulers import PopulationBasedTraining
from ray.tune.schedulers.pb2 import PB2

# The keys search.trial_config gives every trial to say who it is; here, as search imports this module (PB2 needs
# scikit-learn, so only when asked for).
IDENTITY = ("config_id", "seed", "overrides", "label")


class _KeepsIdentity:
    def __init__(self, *args, total_steps=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.total_steps = total_steps  # a trial's config -> its training steps (None: not known)

    def on_trial_result(self, tune_controller, trial, result):
        # A trial's last report (done_ptray) ends it. Exploiting there restarts the member from the donor's checkpoint
        # at the last step, which reports its end again at the same step: a second wave of a population (more members
        # than cores) was exploited and restarted at the end over and over.
        if result.get("done_ptray"):
            return self.CONTINUE
        # Nor is the evaluation at the last step a perturbation: a member exploited there would take the donor's final
        # state and end without a step at its explored values (a resized prompt's new tokens never trained).
        if self.total_steps is not None and result.get(self._time_attr, 0) >= self.total_steps(trial.config):
            return self.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)

    def _get_new_config(self, trial, trial_to_clone):
        config, operations = super()._get_new_config(trial, trial_to_clone)
        return {**config, **{k: trial.config[k] for k in IDENTITY}}, operations

    def _exploit(self, tune_controller, trial, trial_to_clone):
        super()._exploit(tune_controller, trial, trial_to_clone)
        _forget_abandoned_save(tune_controller, trial)


def _forget_abandoned_save(tune_controller, trial) -> None:
    """Synchronous PBT exploits a member that may still be saving for its pause at the boundary (on a busy machine the
    save's reply comes after the last member's boundary result). Ray 2.60 then pauses it by stopping it, and
    `TuneController._schedule_trial_stop` caches a STOP for the save it abandons (tune_controller.py: `if
    trial.is_saving: self._cached_trial_decisions[...] = STOP`). That save's reply is discarded with the actor's
    futures (whether the actor ends or is kept for another trial), so the STOP stays until the member's next save: the
    first report after it restarts from the donor's state. There the STOP ends the member, which never files its
    result (issue #16). The member is paused and holds no actor, so no save of it is in flight: any decision still
    cached for it belongs to the abandoned one."""
    if trial.status != Trial.PAUSED:
        return
    controller = getattr(tune_controller, "_tune_controller", tune_controller)  # Tune hands schedulers a wrapper
    cached = getattr(controller, "_cached_trial_decisions", None)
    if cached is not None:
        cached.pop(trial.trial_id, None)


class SeedPBT(_KeepsIdentity, PopulationBasedTraining):
    pass


class SeedPB2(_KeepsIdentity, PB2):
    pass
