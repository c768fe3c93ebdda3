"""Where `ptray train` writes when no --output is given (never inside a `ptray tune` experiment folder), and
`ptray landscape` saying how far it is."""
import json
import subprocess
import sys

from conftest import REPO


def _train(cwd, *args):
    return subprocess.run([sys.executable, "-m", "ptray.cli", "train", str(REPO / "experiments/quickstart.yaml"),
                           *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_train_refuses_an_output_inside_a_tune_experiment(tmp_path):
    exp = tmp_path / "outputs" / "quickstart"
    exp.mkdir(parents=True)
    (exp / "experiment.json").write_text(json.dumps({"name": "quickstart", "configs": {}}))
    p = _train(tmp_path, "--output", str(exp / "runs" / "x" / "seed0"))
    assert p.returncode != 0 and f"lies inside the tune experiment {exp}" in p.stderr
    assert not (exp / "runs").exists()


def test_train_default_output_sits_beside_tune_experiments(tmp_path, data_dir):
    # A tune experiment of the same config at its default place does not capture `ptray train`'s default output.
    exp = tmp_path / "outputs" / "quickstart"
    exp.mkdir(parents=True)
    (exp / "experiment.json").write_text(json.dumps({"name": "quickstart", "configs": {}}))
    p = _train(tmp_path, f"task.data_dir={data_dir}", "train.max_steps=1", "train.eval_every=1",
               "task.max_eval_examples=8")
    assert p.returncode == 0, p.stderr[-2000:]
    run = tmp_path / "outputs" / "train" / "quickstart" / "seed0"
    assert (run / "result.json").is_file()
    assert not (exp / "seed0").exists()

    # The landscape of that run: points^2 passes over the split, with a progress bar on stderr.
    p = subprocess.run([sys.executable, "-m", "ptray.cli", "landscape", str(run), "--points", "3", "--radius", "1",
                        "--max-examples", "8", "--data-dir", str(data_dir)],
                       capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "landscape 3x3 on 8 train examples" in p.stderr and "9/9" in p.stderr
    assert (run / "landscape" / "landscape.json").is_file()
