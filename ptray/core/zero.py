"""ZeRO-3 shards parameters; reading a sharded weight (say, the embedding a prompt starts from, or the prompt to
save it) needs it gathered first. Outside ZeRO-3 this is a no-op."""
from contextlib import contextmanager


@contextmanager
def gathered(params, modify: bool = False):
    params = [p for p in params if hasattr(p, "ds_id")]
    if not params:
        yield
        return
    import deepspeed

    # With modify, rank 0's writes are broadcast and re-sharded on exit; otherwise the gather is read-only.
    with deepspeed.zero.GatheredParameters(params, modifier_rank=0 if modify else None):
        yield
