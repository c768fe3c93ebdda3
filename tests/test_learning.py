"""A real run learns, for every prompt method and every PTP regularizer: MiniLM on SUBJ 16-shot (the quickstart's
k-shot protocol on a two-class task, where prompt tuning clearly learns; FewGLUE RTE's 32 examples leave seeds at the
majority class). The training loss falls clearly and the report accuracy beats the majority class. What each method
saves (adapter shapes, residual folding, the dynamic clock) is checked in its own file."""
import numpy as np
import pytest

from conftest import cfg_of, losses, perturbation_section
from ptray.core.train import train

# Every method at a small size (residual's bottleneck 64, not 800), and every regularizer on the vanilla prompt.
CASES = {
    "vanilla": {},
    "residual": {"method": {"name": "residual", "num_tokens": 8, "bottleneck": 64}},
    # A prefix in every layer moves the output more per step: the lr of the shipped rte_deep.yaml's order.
    "deep": {"method": {"name": "deep", "num_tokens": 8}, "train": {"lr": 0.03}},
    "dynamic": {"method": {"name": "dynamic", "mode": "position", "num_tokens": 8}},
    "embedding/random": {"perturbation": perturbation_section("embedding/random")},
    "embedding/adversarial": {"perturbation": perturbation_section("embedding/adversarial", steps=1)},
    "text/random": {"perturbation": perturbation_section("text/random")},
    "text/adversarial": {"perturbation": perturbation_section("text/adversarial")},
}
# 16 examples per class for training and 16 for selection, disjoint, from SUBJ's training split (task.sample_seed 0);
# reported on 128 sentences of the official test set (the task reads it shuffled, so both classes: majority 0.53).
SUBJ = {"name": "subj", "k_shot": 16, "sample_seed": 0, "selection_split": "train", "report_split": "test",
        "max_seq_length": 64, "max_eval_examples": 128}
# 10 steps of 8: each of the 32 examples seen 2.5 times. Cost measured here on 2 cores: 5-14 s a case, 72 s for the 8,
# when idle; 137-387 s a case at load 11-14 (torch's threads contend).
TRAIN = {"max_steps": 10, "batch_size": 8, "eval_every": 5, "lr": 0.1}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_a_real_run_learns(data_dir, sentence_dir, case):
    sections = CASES[case]
    cfg = cfg_of(data_dir, task={**SUBJ, "data_dir": str(sentence_dir)},
                 **{**sections, "train": {**TRAIN, **sections.get("train", {})}})
    r = train(cfg, progress=False)
    assert r["status"] == "ok", r.get("reason")
    ls = losses(r)
    print(case, "loss", [round(x, 3) for x in ls], "report", r["report_metrics"], "majority", r["majority_baseline"])
    # Measured here (seed 0, one run per case), mean loss of the first 3 steps minus that of the last 3 / report
    # accuracy minus the majority class (0.531): vanilla 0.45 / +0.30, residual 0.43 / +0.29, deep 0.45 / +0.38,
    # dynamic 0.79 / +0.28, embedding/random 0.90 / +0.30, embedding/adversarial 1.45 / +0.32, text/random
    # 0.66 / +0.36, text/adversarial 1.32 / +0.34 (a regularizer's loss includes its perturbed term). The bounds sit at
    # half the smallest loss drop and about a third of the smallest accuracy margin (0.1 is ~2.3 standard errors of an
    # accuracy on 128 examples): room for other seeds and for a loss that spikes at one step (text/random's step 8:
    # 0.87), and still a failure for a run that stays at its start or at the majority class.
    assert np.mean(ls[-3:]) < np.mean(ls[:3]) - 0.2, ls
    assert r["report_metrics"]["accuracy"] > r["majority_baseline"] + 0.1, r["report_metrics"]
