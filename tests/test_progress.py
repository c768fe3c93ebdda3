"""ptray's live view of a sweep, fed Tune's events by hand: one line per config x seed (each seed of a pack its own),
printed only when something changed, with step/total, the selection score, the best so far, an ETA and why a seed
failed or stopped."""
import io
import sys
from types import SimpleNamespace

from ptray.distributed.progress import LiveView


def trial(label, seeds, error=None):
    return SimpleNamespace(config={"label": label, "seed": seeds[0], "seeds": seeds}, get_error=lambda: error)


def test_each_seed_of_a_pack_is_its_own_line_printed_when_it_changes():
    out = io.StringIO()
    view = LiveView("accuracy", total_of=lambda config: 10, stream=out, live=False)
    pack = trial("residual", [0, 1])
    view.on_trial_start(0, [], pack)
    view.on_trial_result(0, [], pack, {"seed": 0, "step": 5, "selection/accuracy": 0.6})
    view.on_trial_result(0, [], pack, {"seed": 1, "step": 5, "selection/accuracy": 0.7})
    view.on_trial_result(0, [], pack, {"seed": 0, "step": 10, "selection/accuracy": 0.5})
    view.on_trial_result(0, [], pack, {"seed": 0, "step": 10, "selection/accuracy": 0.5, "done_ptray": True,
                                       "status": "ok"})
    view.on_trial_result(0, [], pack, {"seed": 1, "step": 10, "done_ptray": True, "status": "failed",
                                       "reason": "loss diverged at step 9", "selection/accuracy": float("nan")})
    view.on_trial_complete(0, [], pack)  # nothing new: no line
    lines = [line.split("]", 1)[1].strip() for line in out.getvalue().splitlines()]
    assert lines[:2] == ["residual  seed 0  running  step 0/10", "residual  seed 1  running  step 0/10"]
    assert lines[2].startswith("residual  seed 0  running  step 5/10  accuracy 0.6000 (best 0.6000)  ETA ")
    assert lines[3].startswith("residual  seed 1  running  step 5/10  accuracy 0.7000 (best 0.7000)  ETA ")
    assert lines[4] == "residual  seed 0  running  step 10/10  accuracy 0.5000 (best 0.6000)  ETA 0s"
    assert lines[5] == "residual  seed 0  ok       step 10/10  accuracy 0.5000 (best 0.6000)"
    # A failed seed keeps its last real score and says why.
    assert lines[6] == "residual  seed 1  failed   step 10/10  accuracy 0.7000 (best 0.7000)  loss diverged at step 9"
    assert len(lines) == 7


def test_stopped_and_crashed_trials_say_so():
    out = io.StringIO()
    view = LiveView("accuracy", total_of=lambda config: None, stream=out, live=False)
    pruned, crashed = trial("lr=0.1", [3]), trial("lr=0.3", [3], error="Traceback...\nRayActorError: worker died")
    for t in (pruned, crashed):
        view.on_trial_start(0, [], t)
    view.on_trial_result(0, [], pruned, {"seed": 3, "step": 2, "selection/accuracy": 0.4})
    view.on_trial_complete(0, [], pruned)  # no last report from ptray: a scheduler ended it
    view.on_trial_error(0, [], crashed)
    lines = [line.split("]", 1)[1].strip() for line in out.getvalue().splitlines()]
    assert "lr=0.1  seed 3  stopped  step 2  accuracy 0.4000 (best 0.4000)" in lines
    assert "lr=0.3  seed 3  failed   step 0  RayActorError: worker died" in lines


def test_on_a_terminal_the_table_is_redrawn_in_place():
    out = io.StringIO()
    view = LiveView("accuracy", total_of=lambda config: 4, stream=out, live=True)
    t = trial("vanilla", [0])
    view.on_trial_start(0, [], t)
    view.on_trial_result(0, [], t, {"seed": 0, "step": 4, "selection/accuracy": 0.55, "done_ptray": True,
                                    "status": "ok"})
    view.on_experiment_end([])
    text = out.getvalue()
    assert "vanilla" in text and "4/4" in text and "0.5500" in text and "ETA" in text
    assert text.count("\n") < 20  # redrawn, not appended line by line


def test_the_view_survives_tunes_pickling_while_stdout_is_redirected(tmp_path):
    # Tune pickles its callbacks into the experiment state while ptray sends stdout to DIR/logs/ray.log.
    import pickle

    import cloudpickle

    with open(tmp_path / "ray.log", "w") as log:
        view = LiveView("accuracy", total_of=lambda config: 4, stream=log, live=False)
        view.on_trial_start(0, [], trial("vanilla", [0]))
        restored = pickle.loads(cloudpickle.dumps(view))
    # The open log file is not pickled: a restored view writes to the process's own stdout.
    assert restored.lines.keys() == view.lines.keys() and restored.stream is sys.__stdout__
