"""Padding each batch to a multiple of a width (train.pad_to_multiple_of: 64 on a GPU, so that it meets a few shapes)
changes nothing but the shapes: the masks keep the extra positions out, so a run trains and scores as it does padded
to its longest row, for every family and the methods that read positions (deep prefixes, dynamic positions)."""
import numpy as np
import pytest

from conftest import cfg_of, losses
from ptray.core.data import Encoded, collate
from ptray.core.train import train


def test_collate_rounds_the_width_up_to_the_multiple_but_not_past_the_limit():
    items = [Encoded([[5, 6, 7]], 0, token_type_ids=[[0, 0, 0]]), Encoded([[5] * 9], 1, token_type_ids=[[0] * 9])]
    assert collate(items, 0)["input_ids"].shape == (2, 9)
    batch = collate(items, 0, multiple=8)
    assert batch["input_ids"].shape == (2, 16) and batch["token_type_ids"].shape == (2, 16)
    assert batch["attention_mask"].sum(1).tolist() == [3, 9] and (batch["input_ids"][:, 9:] == 0).all()
    assert collate(items, 0, multiple=8, limit=12)["input_ids"].shape == (2, 12)
    # A limit below the longest row never cuts it.
    assert collate(items, 0, multiple=8, limit=4)["input_ids"].shape == (2, 9)


CASES = {
    "encoder vanilla": ("minilm", "rte", {"name": "vanilla", "num_tokens": 4}),
    "encoder dynamic": ("minilm", "rte", {"name": "dynamic", "mode": "position", "num_tokens": 4}),
    "causal multiple choice": ("gpt2", "copa", {"name": "vanilla", "num_tokens": 4}),
    "causal deep": ("llama", "rte", {"name": "deep", "num_tokens": 4}),
    "seq2seq": ("t5", "rte", {"name": "vanilla", "num_tokens": 4}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_padding_to_a_multiple_trains_and_scores_as_padding_to_the_longest(data_dir, tiny_models, case):
    model, task, method = CASES[case]
    runs = {}
    for multiple in (1, 64):
        cfg = cfg_of(data_dir, task={"name": task, "max_eval_examples": 16},
                     model={"name": model if model == "minilm" else str(tiny_models[model])}, method=method,
                     train={"max_steps": 3, "eval_every": 3, "batch_size": 4, "pad_to_multiple_of": multiple})
        runs[multiple] = train(cfg, progress=False)
        assert runs[multiple]["status"] == "ok", runs[multiple]["reason"]
        assert runs[multiple]["environment"]["pad_to_multiple_of"] == multiple
    np.testing.assert_allclose(losses(runs[64]), losses(runs[1]), rtol=1e-5)
    assert runs[64]["selection_metrics"] == pytest.approx(runs[1]["selection_metrics"])
    assert runs[64]["report_metrics"] == pytest.approx(runs[1]["report_metrics"])


def test_unset_it_resolves_per_device(data_dir):
    cfg = cfg_of(data_dir)
    assert cfg.train.pad_to_multiple_of is None
    assert cfg.train.pad_multiple("cpu") == 1 and cfg.train.pad_multiple("cuda") == 64
    assert cfg_of(data_dir, train={"pad_to_multiple_of": 8}).train.pad_multiple("cuda") == 8
