"""Seeds trained together (every run is a pack; one seed is a pack of one) on real weights (MiniLM, tiny GPT-2 and T5)
and real data: on a CPU K packed seeds give exactly the numbers of K separate runs, for every shipped experiment,
method, PTP regularizer, dropout and ZeRO stage; on a GPU's joint backbone pass each seed still gets its own gradient;
a failing seed fails alone; a pack resumes as an unbroken one; bad packs are refused before any weights load."""
import json
import multiprocessing
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, free_port, tiny_config
from ptray.config import ConfigError, config_from_dict, load_config
from ptray.core import backbone as bb
from ptray.core.data import Encoder, collate
from ptray.core.engine import close_engine, init_distributed
from ptray.core.loop import Loop, RandomStream, SeedRun, clip_gradient
from ptray.core.model import option_loss
from ptray.core.packing import PackedModel, check_pack
from ptray.core.train import build_loop, build_model, prepare, train, train_seeds
from ptray.layout import ADAPTER_FILE, RESULT_FILE

SEEDS = [0, 1, 2]
# Clipping bites (gradient norms here are ~0.1-1) and two micro-batches accumulate: both must stay per seed.
TRAIN = {"max_steps": 6, "eval_every": 3, "grad_accum": 2, "batch_size": 4, "max_grad_norm": 0.05}


def cfg_for(data_dir, seed, **sections):
    d = tiny_config(data_dir, **sections)
    d["train"] = {**d["train"], **TRAIN, "seed": seed, **sections.get("train", {})}
    return config_from_dict(d)


def losses(result):
    return [h["loss"] for h in result["history"]]


def assert_same_run(alone: dict, packed: dict, alone_dir: Path | None = None, packed_dir: Path | None = None):
    """Bit for bit: the same losses at every step, the same metrics, the same best step and adapter."""
    assert alone["status"] == packed["status"] == "ok", (alone.get("reason"), packed.get("reason"))
    assert losses(packed) == losses(alone)
    assert packed["selection_metrics"] == alone["selection_metrics"]
    assert packed["report_metrics"] == alone["report_metrics"]
    assert packed["best_step"] == alone["best_step"] and packed["steps"] == alone["steps"]
    assert packed["trainable_params"] == alone["trainable_params"]
    if alone_dir is not None:
        ta, tb = load_file(alone_dir / ADAPTER_FILE), load_file(packed_dir / ADAPTER_FILE)
        assert set(ta) == set(tb) and all(torch.equal(ta[k], tb[k]) for k in ta)


# --- K packed seeds = K separate runs, bit for bit (on a CPU) ---------------------------------------------------------
# Every CPU experiment the project ships, cut to 3 steps (where the old packing first drifted from a separate run:
# its length-sorted passes mixed seeds, so a seed's rows were padded to other seeds' lengths), and the settings no
# shipped experiment has: a method's dropout, the backbone's dropout, ZeRO stages 2 and 3.
SHIPPED = ["quickstart.yaml", "quickstart.yaml method.name=residual", "rte_residual.yaml", "rte_deep.yaml",
           "rte_dynamic.yaml", "rte_dynamic.yaml method.mode=length", "rte_dynamic.yaml method.mode=representation",
           "rte_ptp_embedding_random.yaml", "rte_ptp_embedding_adversarial.yaml", "rte_ptp_text_random.yaml",
           "rte_ptp_text_adversarial.yaml"]
EXTRA = {"residual dropout": {"method": {"name": "residual", "num_tokens": 4, "dropout": 0.2}},
         "model dropout": {"model": {"name": "minilm", "dropout": True}},
         "zero2": {"train": {"zero_stage": 2, "max_grad_norm": None}},
         "zero3": {"train": {"zero_stage": 3, "max_grad_norm": None}}}


def shipped(data_dir, spec: str, seed: int):
    name, *overrides = spec.split()
    cfg = load_config(REPO / "experiments" / name, overrides)
    folder = data_dir if cfg.task.name == "rte" else data_dir.parent / "sentence"
    return load_config(REPO / "experiments" / name, [*overrides, f"task.data_dir={folder}", f"train.seed={seed}",
                                                     "train.max_steps=3", "train.eval_every=3", "train.seed_pack=1",
                                                     "task.max_eval_examples=24", "train.eval_batch_size=24"])


@pytest.mark.slow
@pytest.mark.parametrize("case", SHIPPED + list(EXTRA))
def test_packed_seeds_equal_separate_runs(data_dir, tmp_path, case):
    make = (lambda s: shipped(data_dir, case, s)) if case in SHIPPED else (lambda s: cfg_for(data_dir, s, **EXTRA[case]))
    cfgs = [make(s) for s in SEEDS[:2]]
    alone = [train(c, tmp_path / "alone" / str(c.train.seed), progress=False) for c in cfgs]
    packed = train_seeds(cfgs, [tmp_path / "packed" / str(c.train.seed) for c in cfgs], progress=False)
    for a, b in zip(alone, packed):
        assert_same_run(a, b, tmp_path / "alone" / str(a["seed"]), tmp_path / "packed" / str(b["seed"]))
        assert b["seed_pack"] == SEEDS[:2] and "seed_pack" not in a
    # The seeds really differ from each other: packing did not collapse them into one.
    assert losses(packed[0]) != losses(packed[1])


# --- the joint pass (a GPU's): each seed's gradient is its own -------------------------------------------------------
@pytest.mark.parametrize("method, model, task", [
    ("vanilla", "minilm", "rte"), ("residual", "minilm", "rte"), ("deep", "minilm", "rte"), ("dynamic", "minilm", "rte"),
    ("vanilla", "gpt2", "rte"), ("deep", "gpt2", "rte"), ("vanilla", "gpt2", "copa"), ("vanilla", "t5", "rte"),
    ("deep", "t5", "rte")])
def test_joint_pass_gradient_is_each_seeds_own(data_dir, tiny_models, method, model, task):
    # A GPU reads all seeds' rows in one backbone pass, padded to a common width. The loss is the sum of the seeds'
    # losses: each seed's parameters get the gradient of its own run (not 1/K of it, none from the other seeds' rows),
    # through an encoder's own head or an LM's shared scorer; Gumbel draws come from each seed's own stream.
    name = "minilm" if model == "minilm" else str(tiny_models[model])
    cfgs = [cfg_for(data_dir, s, model={"name": name}, method={"name": method, "num_tokens": 4}, task={"name": task})
            for s in SEEDS[:2]]
    p = prepare(cfgs[0])
    backbone = bb.load_backbone(cfgs[0].model)
    models = [build_model(c, backbone, p.task) for c in cfgs]
    encoder = Encoder(p.task, backbone.tokenizer, backbone.family, 128)
    for m in models:
        m.label_token_ids = torch.tensor(encoder.label_token_ids)
        m.train()
    items = [encoder.encode(e) for e in p.train[:7]]
    pad = backbone.tokenizer.pad_token_id
    own = [collate(items[:4], pad), collate(items[4:], pad)]  # different examples and lengths per seed
    assert own[0]["input_ids"].shape[1] != own[1]["input_ids"].shape[1]

    streams = [RandomStream(s, torch.device("cpu")) for s in SEEDS[:2]]
    scores = PackedModel(models, streams, joint=True, pad_id=pad)(own)
    sum(option_loss(s, b["labels"]) for s, b in zip(scores, own)).backward()
    packed = [{k: v.grad.clone() for k, v in m.named_parameters() if v.requires_grad} for m in models]

    for seed, m, batch, joint_scores, grads in zip(SEEDS, models, own, scores, packed):
        m.zero_grad()
        with RandomStream(seed, torch.device("cpu")).active():
            alone = m(batch)
        option_loss(alone, batch["labels"]).backward()
        # fp32 sums in another order (another batch shape): tolerance relative to the tensor's scale; a leaked or
        # 1/K gradient is off by far more.
        torch.testing.assert_close(joint_scores, alone, rtol=1e-4, atol=1e-4)
        for k, v in m.named_parameters():
            if v.requires_grad and v.grad is not None:
                scale = v.grad.abs().max().item()
                torch.testing.assert_close(grads[k], v.grad, rtol=1e-4, atol=1e-5 * scale + 1e-12, msg=k)
        assert sum(v.grad.abs().sum() for v in m.parameters() if v.requires_grad and v.grad is not None) > 0


def run_to_end(loop: Loop) -> Loop:
    """The loop run through, its DeepSpeed engine closed whatever happens."""
    try:
        loop.run()
    finally:
        close_engine(loop.engine)
    return loop


# --- failures, resume, refusals ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def separate(data_dir):
    return [train(cfg_for(data_dir, s), progress=False) for s in SEEDS]


@pytest.mark.slow
def test_a_diverging_seed_fails_alone(data_dir, separate):
    # Seed 1's prompt breaks (NaN): it fails at its first step; the others go on with the numbers of their
    # separate runs.
    cfgs = [cfg_for(data_dir, s) for s in SEEDS]
    loop = build_loop(cfgs, prepare(cfgs[0]))
    with torch.no_grad():
        loop.seeds[1].model.method.prompt.fill_(float("nan"))
    run_to_end(loop)
    assert loop.failed == {1: "loss diverged (nan) at step 1"}
    for i in (0, 2):
        assert [h["loss"] for h in loop.seeds[i].history] == losses(separate[i])
        assert loop.seeds[i].report_metrics == separate[i]["report_metrics"]


@pytest.mark.slow
def test_losses_read_every_n_steps_fail_a_seed_at_the_step_it_diverged(data_dir, separate):
    # Seed 1's prompt breaks after its second step, so its loss goes bad at step 3. Read every 4 steps (as a GPU reads
    # every 10), that is seen at step 4's read: it fails "at step 3" with steps 1-2 booked, as with a read every step,
    # and the others get the numbers of their separate runs.
    def run(read_every: int) -> Loop:
        cfgs = [cfg_for(data_dir, s, train={"read_loss_every": read_every, "eval_every": 6}) for s in SEEDS]
        loop = build_loop(cfgs, prepare(cfgs[0]))
        method = loop.seeds[1].model.method
        on_step = method.on_step

        def break_after_step_2(step):
            on_step(step)
            if step == 2:
                with torch.no_grad():
                    method.prompt.fill_(float("nan"))

        method.on_step = break_after_step_2
        return run_to_end(loop)

    every_step, every_4 = run(1), run(4)
    for loop in (every_step, every_4):
        assert loop.failed == {1: "loss diverged (nan) at step 3"}
        assert [h["step"] for h in loop.seeds[1].history] == [1, 2]
        assert loop.seeds[1].history == every_step.seeds[1].history
        assert loop.seeds[1].examples_seen == 2 * TRAIN["grad_accum"] * TRAIN["batch_size"]
        for i in (0, 2):
            assert losses({"history": loop.seeds[i].history}) == losses(separate[i])
            assert loop.seeds[i].report_metrics is not None
    assert every_4.seeds[0].report_metrics == every_step.seeds[0].report_metrics


def _rank_with_a_broken_prompt(rank: int, port: int, data_dir: str, out: str) -> None:
    """One of two gloo ranks training one seed (ZeRO-0, real DeepSpeed engines); rank 1's prompt breaks after the
    engines' initial broadcast, so only its loss is NaN at step 1."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2")
    torch.set_num_threads(1)
    cfg = cfg_for(Path(data_dir), 0)
    loop = build_loop([cfg], prepare(cfg))
    if rank == 1:
        with torch.no_grad():
            loop.seeds[0].model.method.prompt.fill_(float("nan"))
    run_to_end(loop)
    (Path(out) / f"rank{rank}.json").write_text(json.dumps({"failed": loop.failed, "steps": loop.seeds[0].steps_done}))


@pytest.mark.slow
def test_ranks_fail_a_seed_at_the_same_step(data_dir, tmp_path):
    # Each rank reads the mean of the ranks' losses: rank 1's NaN fails the seed on both ranks at step 1. (Read alone,
    # rank 0's finite loss would train on into a collective that rank 1 never joins.)
    ctx = multiprocessing.get_context("spawn")
    port = free_port()
    ranks = [ctx.Process(target=_rank_with_a_broken_prompt, args=(r, port, str(data_dir), str(tmp_path)))
             for r in (0, 1)]
    for r in ranks:
        r.start()
    try:
        for r in ranks:
            r.join(timeout=300)
    finally:
        for r in ranks:  # a rank still waiting in a collective is a failure, not a process left behind
            if r.is_alive():
                r.kill()
    assert [r.exitcode for r in ranks] == [0, 0]
    for rank in (0, 1):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == {
            "failed": {"0": "loss diverged (nan) at step 1"}, "steps": 0}


def test_a_seeds_gradient_is_clipped_in_deepspeeds_arithmetic():
    # The loop's sync-free clipping gives DeepSpeed's clip_grad_norm_ (on one rank) bit for bit, so seeds keep the
    # numbers they had when DeepSpeed clipped them.
    from deepspeed.runtime.utils import clip_grad_norm_

    init_distributed(torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    # A gradient under the max norm (left as it is), and 20 over it (scaled down): torch's own clip_grad_norm_ rounds
    # the norm differently, and about one draw in six of these shapes (a 20-token prompt, a head bias) tells them apart.
    for scale in [0.01] + [10.0] * 20:
        ours, theirs = ([torch.nn.Parameter(torch.zeros(shape)) for shape in ((20, 384), (384,))] for _ in range(2))
        for x, y in zip(ours, theirs):
            x.grad = torch.randn(x.shape, generator=g) * scale
            y.grad = x.grad.clone()
        before = [x.grad.clone() for x in ours]
        clip_gradient(ours, 1.0)
        clip_grad_norm_(theirs, 1.0)
        assert all(torch.equal(x.grad, y.grad) for x, y in zip(ours, theirs))
        norm = torch.cat([x.grad.flatten() for x in ours]).norm().item()
        if scale > 1:
            assert norm == pytest.approx(1.0, rel=1e-5)
        else:
            assert all(torch.equal(x.grad, b) for x, b in zip(ours, before)) and norm < 1


def test_the_loss_read_resolves_per_device_and_is_recorded(data_dir, separate):
    cfg = cfg_for(data_dir, 0)
    assert cfg.train.read_loss_every is None
    assert cfg.train.read_every("cpu") == 1 and cfg.train.read_every("cuda") == 10
    assert cfg_for(data_dir, 0, train={"read_loss_every": 3}).train.read_every("cuda") == 3
    assert separate[0]["environment"]["read_loss_every"] == 1


@pytest.mark.slow
def test_a_resumed_pack_reports_as_an_unbroken_one(data_dir, separate, tmp_path):
    # Every seed's reporter hears step 3 and stops the pack there, seed 0's saving the pack's checkpoint first; a new
    # pack resumed from it finishes as the unbroken runs did, every seed's history and best state included.
    heard = []

    def reporter(i):
        def report(step, metrics, save):
            heard.append((i, step, metrics["accuracy"]))
            if i == 0:
                save(tmp_path / "checkpoint")
            return True

        return report

    cfgs = [cfg_for(data_dir, s) for s in SEEDS]
    stopped = train_seeds(cfgs, [None] * 3, reporters=[reporter(i) for i in range(3)], progress=False)
    assert [(i, step) for i, step, _ in heard] == [(0, 3), (1, 3), (2, 3)]
    assert [acc for _, _, acc in heard] == [r["history"][2]["selection"]["accuracy"] for r in separate]
    assert all(r["steps"] == 3 for r in stopped)
    resumed = train_seeds(cfgs, [None] * 3, resume_dir=tmp_path / "checkpoint", progress=False)
    for a, b in zip(separate, resumed):
        assert_same_run(a, b)


def test_one_seed_checkpoints_from_before_packs_still_load(data_dir):
    # Before every run was a pack, a one-seed checkpoint named its parameters without `seeds.0.` and kept its
    # bookkeeping flat: both still restore, into the pack of one.
    cfg = cfg_for(data_dir, 0)
    p = prepare(cfg)
    backbone = bb.load_backbone(cfg.model)
    model = build_model(cfg, backbone, p.task)
    packed = PackedModel([model], [RandomStream(0, p.device)], joint=False, pad_id=0)
    old = {k: torch.full_like(v, 0.5) for k, v in model.named_parameters() if v.requires_grad}
    missing, unexpected = packed.load_state_dict(old, strict=False)
    assert not unexpected and all(torch.equal(v, old[k]) for k, v in model.named_parameters() if v.requires_grad)

    seed = SeedRun(cfg, model, backbone.tokenizer, p.device, 0, 1, None, None)
    loop = Loop([seed], None, p, {}, 0, 6, False)
    history = [{"step": 1, "loss": 0.7, "lr": 0.1}, {"step": 2, "loss": 0.6, "lr": 0.1}]
    loop.restore({"history": history, "best": {"score": 0.5, "step": 2}, "patience": 1, "examples_seen": 8,
                  "train_seconds": 3.0, "eval_seconds": 1.0})
    assert seed.history == history and seed.steps_done == 2 and seed.patience == 1 and seed.examples_seen == 8
    assert loop.training == [True] and loop.failed == {} and loop.train_seconds == 3.0


@pytest.mark.parametrize("max_grad_norm", [None, 0.5])
def test_the_engine_clips_only_when_asked(max_grad_norm):
    # DeepSpeed clips at 1.0 unless its config says otherwise: `train.max_grad_norm: null` once clipped anyway, and a
    # pack's engine (which leaves clipping to the loop, per seed) clipped all seeds' gradients together on top. That
    # joint clip is what made packed seeds drift from their separate runs once their combined norm passed 1.
    from ptray.config import TrainConfig
    from ptray.core.engine import build_engine

    model = torch.nn.Linear(4, 1)
    engine = build_engine(model, TrainConfig(max_grad_norm=max_grad_norm), 10, torch.device("cpu"))
    seen = []
    step = engine.optimizer.step
    engine.optimizer.step = lambda *a, **k: (seen.append(model.weight.grad.norm().item()), step(*a, **k))[1]
    engine.backward((engine(torch.full((1, 4), 100.0)) ** 2).sum())
    engine.step()
    close_engine(engine)
    assert seen[0] > 100 if max_grad_norm is None else seen[0] == pytest.approx(0.5, rel=1e-4)


def test_failed_seeds_are_recorded_not_dropped(data_dir, tmp_path):
    cfgs = [cfg_for(data_dir, s, train={"max_loss": 0.01}) for s in SEEDS[:2]]
    results = train_seeds(cfgs, [tmp_path / "a", tmp_path / "b"], progress=False)
    for r, folder in zip(results, ("a", "b")):
        assert r["status"] == "failed" and r["reason"].startswith("loss diverged") and "at step 1" in r["reason"]
        saved = json.loads((tmp_path / folder / RESULT_FILE).read_text())
        assert saved["status"] == "failed" and saved["seed"] == r["seed"] and saved["seed_pack"] == SEEDS[:2]


def test_bad_packs_are_refused_before_loading(data_dir, monkeypatch):
    base = tiny_config(data_dir)
    with pytest.raises(ConfigError, match="clipped together"):
        config_from_dict({**base, "train": {"seed_pack": 2, "zero_stage": 2, "max_grad_norm": 1.0}})
    assert config_from_dict({**base, "train": {"seed_pack": 2, "zero_stage": 3, "max_grad_norm": None}})
    a, b = cfg_for(data_dir, 0), cfg_for(data_dir, 1, train={"lr": 0.1})
    with pytest.raises(ConfigError, match="differs from seed 0 in train.lr"):
        check_pack([a, b])
    with pytest.raises(ConfigError, match=r"distinct.*\[0, 0\]"):
        check_pack([a, a])
    with pytest.raises(ConfigError, match="one of each per seed"):
        train_seeds([a, cfg_for(data_dir, 1)], [None])
    # On a GPU the seeds share one backbone pass, so the backbone's dropout can't be each seed's own (no GPU here:
    # the device is what a GPU machine would resolve).
    dropout = config_from_dict({**base, "model": {"name": "minilm", "dropout": True}, "train": {"seed_pack": 2}})
    prepare(dropout)  # fine on a CPU: every seed has its own pass
    monkeypatch.setattr(bb, "resolve_device", lambda name: torch.device("cuda"))
    with pytest.raises(ConfigError, match="one dropout stream"):
        prepare(dropout)
