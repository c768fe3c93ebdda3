"""Frozen backbone + trainable prompt method (+ a small head for encoders) -> one score per option.

`forward(batch)` returns [B, K] option scores for B examples: the same shape for every family and task, so the
training loop's loss is plain cross-entropy and prediction is argmax.
"""
from __future__ import annotations

import inspect
from contextlib import contextmanager
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from ptray.core.backbone import Backbone
from ptray.core.methods.base import PromptMethod

# Score of an option an example does not have (ReCoRD examples have different candidate counts).
MISSING = -1e9


def option_loss(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over each example's option scores (in fp32, whatever the backbone's dtype)."""
    return F.cross_entropy(scores.float(), labels)


def _cache(prefixes):
    """Deep prompts' per-layer (key, value) prefixes as the cache that HF attention layers extend with the input's."""
    if prefixes is None:
        return None
    from transformers import DynamicCache

    return DynamicCache(prefixes)


@lru_cache
def _cache_kwarg(forward) -> str:
    """The keyword a module's forward takes its kv-cache by: transformers 5.24 renamed `past_key_values` to `cache`
    (the old name still works until 5.40, but T5's attention layers drop it when the encoder passes cache=None)."""
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def _with_cache(module, prefixes) -> dict:
    """{keyword: the prefixes as a cache} for calling `module`; empty when there are none."""
    if prefixes is None:
        return {}
    return {_cache_kwarg(type(module).forward): _cache(prefixes)}


@contextmanager
def _encoder_prefixes(encoder, prefixes):
    """Feed each T5 encoder self-attention layer its kv-prefix (the layer reads its cache by layer index)."""
    layers = [block.layer[0].SelfAttention for block in encoder.block]
    feed_kwargs = _with_cache(layers[0], prefixes)

    def feed(module, args, kwargs):
        return args, {**kwargs, **feed_kwargs}

    handles = [layer.register_forward_pre_hook(feed, with_kwargs=True) for layer in layers]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


class PromptModel(nn.Module):
    def __init__(self, backbone: Backbone, method: PromptMethod, num_options: int | None, label_token_ids,
                 pooling: str = "mean", keep_dropout: bool = False):
        super().__init__()
        self.backbone = backbone.model
        self.family = backbone.family
        self.method = method
        self.pooling = pooling
        self.keep_dropout = keep_dropout
        self.register_buffer("label_token_ids", torch.tensor(label_token_ids, dtype=torch.long), persistent=False)
        if self.family == "encoder":
            # Classification: one logit per label from the pooled input; multiple choice: one score per row.
            self.head = nn.Linear(backbone.hidden_size, num_options or 1)

    def train(self, mode: bool = True):
        super().train(mode)
        # The backbone is frozen: its dropout stays off unless the config asks for it.
        self.backbone.train(mode and self.keep_dropout)
        return self

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Every trainable tensor by name: the snapshot that load_trainable_state restores exactly."""
        return {k: v.detach().clone() for k, v in self.named_parameters() if v.requires_grad}

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """What is saved as the trained adapter: the method's export (a residual prompt folds its MLP) + the head."""
        state = {f"method.{k}": v for k, v in self.method.export_state().items()}
        if self.family == "encoder":
            state.update({f"head.{k}": v.detach().clone() for k, v in self.head.state_dict().items()})
        return state

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        own = {k: v for k, v in self.named_parameters() if v.requires_grad}
        with torch.no_grad():
            for k, v in state.items():
                own[k].copy_(v)

    def forward(self, batch: dict[str, torch.Tensor], perturb=None) -> torch.Tensor:
        """`perturb` (a PTP regularizer's hook, see ptray.core.perturbations.Perturb) may change the input's word
        embeddings before the method sees them and the prompted sequence before the backbone reads it."""
        embed = self.backbone.get_input_embeddings()
        embeds = embed(batch["input_ids"])
        if perturb is not None:
            embeds = perturb.inputs(embeds, batch)
        prompted = self.method(embeds, batch["attention_mask"], batch)
        if perturb is not None:
            prompted = perturb.prompted(prompted, batch)
        row_scores = getattr(self, f"_{self.family}")(batch, prompted)
        return self._to_options(batch, row_scores)

    # --- per family: scores per row -------------------------------------------------------------------------
    def _encoder(self, batch, p) -> torch.Tensor:
        return self.head(self.pooled(batch, p).float())

    def pooled(self, batch, p) -> torch.Tensor:
        """An encoder's reading of each row [R, H], before the head (packed seeds share it, each with its own head)."""
        kwargs = {}
        if "token_type_ids" in batch:
            # Prompt tokens belong to the first segment; input tokens keep their segment at their new place.
            tt = p.attention_mask.new_zeros(p.inputs_embeds.shape[:2])
            kwargs["token_type_ids"] = tt.scatter(1, p.token_positions, batch["token_type_ids"])
        out = self.backbone(inputs_embeds=p.inputs_embeds, attention_mask=p.attention_mask,
                            **_with_cache(self.backbone, p.past_key_values), **kwargs)
        hidden = out.last_hidden_state
        if self.pooling == "cls":
            pooled = hidden.gather(1, p.token_positions[:, :1, None].expand(-1, -1, hidden.shape[-1]))[:, 0]
        else:
            # Mean over the input's own tokens (padding and prompt excluded), as the sentence encoder was trained.
            h = hidden.gather(1, p.token_positions[..., None].expand(-1, -1, hidden.shape[-1]))
            m = batch["attention_mask"][..., None].to(h.dtype)
            pooled = (h * m).sum(1) / m.sum(1).clamp(min=1)
        return pooled

    def _causal(self, batch, p) -> torch.Tensor:
        base = self.backbone.base_model
        hidden = base(inputs_embeds=p.inputs_embeds, attention_mask=p.attention_mask,
                      **_with_cache(base, p.past_key_values)).last_hidden_state
        lm_head = self.backbone.get_output_embeddings()
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        if "target_mask" not in batch:
            # Classification: the next-token logits after the last attended position, at the label words.
            mask = p.attention_mask[:, -hidden.shape[1]:]  # a deep prompt's mask also covers its kv-prefix
            last = mask.shape[1] - 1 - mask.flip(1).argmax(1)
            return lm_head(hidden[rows, last]).float()[:, self.label_token_ids]
        # Multiple choice: mean log-probability of each candidate's tokens, each predicted from the position before it.
        r, t = batch["target_mask"].nonzero(as_tuple=True)
        pred_pos = p.token_positions[r, t] - 1
        logp = F.log_softmax(lm_head(hidden[r, pred_pos]).float(), dim=-1)
        token_lp = logp.gather(1, batch["input_ids"][r, t][:, None])[:, 0]
        total = torch.zeros(hidden.shape[0], device=hidden.device).index_add(0, r, token_lp)
        return (total / batch["target_mask"].sum(1).clamp(min=1))[:, None]

    def _seq2seq(self, batch, p) -> torch.Tensor:
        rows, length = p.inputs_embeds.shape[:2]
        start = self.backbone.config.decoder_start_token_id
        source = {"inputs_embeds": p.inputs_embeds, "attention_mask": p.attention_mask}
        if p.past_key_values is not None:
            # T5's encoder stack drops caches, so deep prompts' prefixes reach its self-attention layers through
            # a hook; the decoder then cross-attends to the encoder states under the input's own mask.
            with _encoder_prefixes(self.backbone.encoder, p.past_key_values):
                states = self.backbone.encoder(**source)
            source = {"encoder_outputs": states, "attention_mask": p.attention_mask[:, -length:]}
        if "decoder_targets" not in batch:
            dec = torch.full((rows, 1), start, dtype=torch.long, device=p.inputs_embeds.device)
            out = self.backbone(**source, decoder_input_ids=dec)
            return out.logits[:, 0].float()[:, self.label_token_ids]
        targets = batch["decoder_targets"]
        out = self.backbone(**source, labels=targets)
        logp = F.log_softmax(out.logits.float(), dim=-1)
        valid = targets != -100
        token_lp = logp.gather(2, targets.clamp(min=0)[..., None])[..., 0] * valid
        return (token_lp.sum(1) / valid.sum(1).clamp(min=1))[:, None]

    def _to_options(self, batch, row_scores: torch.Tensor) -> torch.Tensor:
        if row_scores.shape[1] > 1:  # one row per example already holds all K options
            return row_scores
        n_examples = batch["labels"].shape[0]
        k = int(batch["row_choice"].max()) + 1
        scores = row_scores.new_full((n_examples, k), MISSING)
        return scores.index_put((batch["row_example"], batch["row_choice"]), row_scores[:, 0])
