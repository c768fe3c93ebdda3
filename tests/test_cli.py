"""Where `ptray train` writes when no --output is given (never inside a `ptray tune` experiment folder), and
`ptray landscape` saying how far it is, and `ptray ui` owning its MLflow server."""
import json
import subprocess

import pytest

from conftest import REPO, free_port, ptray_cmd, run_ptray


def _train(cwd, *args):
    return run_ptray("train", REPO / "experiments/quickstart.yaml", *args, cwd=cwd)


def test_train_refuses_an_output_inside_a_tune_experiment(tmp_path):
    exp = tmp_path / "outputs" / "quickstart"
    exp.mkdir(parents=True)
    (exp / "experiment.json").write_text(json.dumps({"name": "quickstart", "configs": {}}))
    p = _train(tmp_path, "--output", str(exp / "runs" / "x" / "seed0"))
    assert p.returncode != 0 and f"lies inside the tune experiment {exp}" in p.stderr
    assert not (exp / "runs").exists()


def test_train_default_output_sits_beside_tune_experiments(tmp_path, sentence_dir):
    # A tune experiment of the same config at its default place does not capture `ptray train`'s default output.
    exp = tmp_path / "outputs" / "quickstart"
    exp.mkdir(parents=True)
    (exp / "experiment.json").write_text(json.dumps({"name": "quickstart", "configs": {}}))
    p = _train(tmp_path, f"task.data_dir={sentence_dir}", "train.max_steps=1", "train.eval_every=1",
               "task.max_eval_examples=8")
    assert p.returncode == 0, p.stderr[-2000:]
    run = tmp_path / "outputs" / "train" / "quickstart" / "seed0"
    assert (run / "result.json").is_file()
    assert not (exp / "seed0").exists()

    # The landscape of that run: points^2 passes over the split, with a progress bar on stderr.
    p = run_ptray("landscape", run, "--points", "3", "--radius", "1", "--max-examples", "8", "--data-dir",
                  sentence_dir, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "landscape 3x3 on 8 train examples" in p.stderr and "9/9" in p.stderr
    assert (run / "landscape" / "landscape.json").is_file()


def _store(folder):
    """An experiment folder with an MLflow store that holds the experiment, as `ptray tune` leaves it."""
    import mlflow

    folder.mkdir(parents=True)
    (folder / "experiment.json").write_text(json.dumps({"name": "uitest", "configs": {}, "config": {}}))
    return mlflow.MlflowClient(f"sqlite:///{folder / 'mlflow.db'}").create_experiment("uitest")


def _listening(port):
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.mark.slow
def test_ui_stops_its_server_when_it_is_terminated(tmp_path):
    import signal
    import time

    experiment_id = _store(tmp_path / "exp")
    port = free_port()
    # Output to files, not pipes: the server's workers inherit them, and reading a pipe they hold open never ends.
    out, err = tmp_path / "ui.out", tmp_path / "ui.err"
    with out.open("w") as o, err.open("w") as e:
        ui = subprocess.Popen(ptray_cmd("ui", tmp_path / "exp", "--port", port), stdout=o, stderr=e, text=True,
                              cwd=REPO)
    try:
        # A guard against a server that never starts, not a speed check: MLflow 3's server has taken minutes to
        # start on a loaded 2-core machine.
        deadline = time.monotonic() + 600
        while not _listening(port):
            assert ui.poll() is None and time.monotonic() < deadline, err.read_text()[-2000:]
            time.sleep(1)
        ui.send_signal(signal.SIGTERM)
        assert ui.wait(timeout=30) == 0
        assert f"http://127.0.0.1:{port}/#/experiments/{experiment_id}" in out.read_text()
        deadline = time.monotonic() + 15
        while _listening(port):  # the server and its workers go with it
            assert time.monotonic() < deadline, f"port {port} still answers after ptray ui stopped"
            time.sleep(0.5)
    finally:
        if ui.poll() is None:
            ui.kill()


def test_ui_refuses_a_port_in_use(tmp_path):
    import socket

    _store(tmp_path / "exp")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        p = run_ptray("ui", tmp_path / "exp", "--port", port, timeout=120)
    assert p.returncode == 2 and f"port {port} on 127.0.0.1 is already in use" in p.stderr


def test_config_prints_the_resolved_config_and_refuses_unknown_keys():
    p = run_ptray("config", "experiments/quickstart.yaml", "train.lr=0.1", "train.seed=3")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "lr: 0.1" in p.stdout and "# default 0.03" in p.stdout
    assert "init_seed: 3" in p.stdout and "# from train.seed" in p.stdout
    assert "name: quickstart" in p.stdout and "# from the config file's name" in p.stdout
    # Overrides without a file: the defaults.
    values = json.loads(run_ptray("config", "train.lr=0.1", "--json").stdout)
    assert values["train.lr"]["value"] == 0.1 and values["train.lr"]["default"] == 0.03
    assert values["train.order_seed"] == {"value": 0, "default": None, "derived_from": "train.seed",
                                          "description": values["train.order_seed"]["description"]}
    bad = run_ptray("config", "experiments/quickstart.yaml", "method.num_token=4")
    assert bad.returncode == 2 and "method.num_token: unknown key" in bad.stderr and "num_tokens" in bad.stderr
