"""ptray's scoring over the outputs of a PeftModel that loaded a ptray export (`ptray export --format peft`).

Copied verbatim into every export as ptray_scoring.py, so it imports torch and safetensors only, never ptray. It
mirrors ptray.core.model.PromptModel with the prompt applied by PEFT instead of ptray:

    causal   the label words' first-token logits at the input's last attended position (multiple choice: the mean
             log-probability of each row's target tokens, given target_mask)
    seq2seq  the label words' first-token logits at the decoder's first step (multiple choice: the mean
             log-probability of decoder_targets)
    encoder  the input's own last hidden states, averaged (or its first token, pooling cls), through the saved head

Inputs are right-padded batches as ptray builds them (ptray.core.data.collate): one row per example, or per
(example, option) for multiple-choice tasks, where `scores` gives one score per row.

    from peft import PeftModel
    scorer = PtrayScorer(PeftModel.from_pretrained(base, folder).eval(), folder)
    predictions = scorer.predict(input_ids, attention_mask)
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F


class PtrayScorer:
    def __init__(self, model, folder: str | Path):
        folder = Path(folder)
        self.model = model
        self.info = json.loads((folder / "ptray_export.json").read_text())
        self.family = self.info["family"]
        # Where the input starts in the PeftModel's outputs (prompt tuning puts its tokens in front of it).
        self.shift = self.info["prompt_positions"]
        ids = self.info.get("label_token_ids")
        self.label_token_ids = torch.tensor(ids, dtype=torch.long) if ids else None
        self.head = None
        if self.family == "encoder":
            from safetensors.torch import load_file

            head = load_file(str(folder / "ptray_head.safetensors"))
            self.head = (head["weight"], head["bias"])

    @torch.no_grad()
    def scores(self, input_ids, attention_mask, token_type_ids=None, target_mask=None,
               decoder_targets=None) -> torch.Tensor:
        """[B, K] label scores (classification), or [B, 1] row scores (multiple choice), in fp32."""
        if self.family == "encoder":
            return self._encoder(input_ids, attention_mask, token_type_ids)
        if self.family == "causal":
            return self._causal(input_ids, attention_mask, target_mask)
        return self._seq2seq(input_ids, attention_mask, decoder_targets)

    def predict(self, input_ids, attention_mask, **kwargs) -> torch.Tensor:
        """The best label of each row (classification tasks)."""
        return self.scores(input_ids, attention_mask, **kwargs).argmax(-1)

    def _labels(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float()[:, self.label_token_ids.to(logits.device)]

    def _encoder(self, input_ids, attention_mask, token_type_ids):
        base = self.model.get_base_model()
        embeds = base.get_input_embeddings()(input_ids)
        segments = getattr(getattr(base, "embeddings", None), "token_type_embeddings", None)
        if token_type_ids is not None and segments is not None:
            # PEFT's prompt learning drops token_type_ids, so every position reads segment 0's embedding: add each
            # input token's own segment embedding in place of segment 0's (the embedding layer sums them).
            embeds = embeds + segments(token_type_ids) - segments(torch.zeros_like(token_type_ids))
        hidden = self.model(inputs_embeds=embeds, attention_mask=attention_mask).last_hidden_state[:, self.shift:]
        if self.info["pooling"] == "cls":
            pooled = hidden[:, 0]
        else:  # mean over the input's own tokens: padding and prompt excluded
            m = attention_mask[..., None].to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
        weight, bias = self.head
        return F.linear(pooled.float(), weight.to(pooled.device), bias.to(pooled.device))

    def _causal(self, input_ids, attention_mask, target_mask):
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        rows = torch.arange(input_ids.shape[0], device=logits.device)
        if target_mask is None:
            last = attention_mask.shape[1] - 1 - attention_mask.flip(1).argmax(1)
            return self._labels(logits[rows, self.shift + last])
        # Each target token predicted from the position before it.
        r, t = target_mask.nonzero(as_tuple=True)
        logp = F.log_softmax(logits[r, self.shift + t - 1].float(), dim=-1)
        token_lp = logp.gather(1, input_ids[r, t][:, None])[:, 0]
        total = torch.zeros(input_ids.shape[0], device=logits.device).index_add(0, r, token_lp)
        return (total / target_mask.sum(1).clamp(min=1))[:, None]

    def _seq2seq(self, input_ids, attention_mask, decoder_targets):
        if decoder_targets is None:
            start = torch.full((input_ids.shape[0], 1), self.info["decoder_start_token_id"], dtype=torch.long,
                               device=input_ids.device)
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=start)
            return self._labels(out.logits[:, 0])
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, labels=decoder_targets)
        logp = F.log_softmax(out.logits.float(), dim=-1)
        valid = decoder_targets != -100
        token_lp = logp.gather(2, decoder_targets.clamp(min=0)[..., None])[..., 0] * valid
        return (token_lp.sum(1) / valid.sum(1).clamp(min=1))[:, None]
