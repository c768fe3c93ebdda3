"""PTP in embedding space: noise on the input's word embeddings (after the lookup, never on padding), random (PTP-RN)
or adversarial by projected gradient ascent (PTP-ADV, PGD as in FreeLB's reference code)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ptray.config import ConfigError
from ptray.core.methods.base import Prompted
from ptray.core.model import option_loss
from ptray.core.perturbations.base import AddToInputs, Perturb, Perturbation

if TYPE_CHECKING:  # annotations only: the config module imports this one lazily, in build()
    from ptray.core.perturbations.embedding.config import EmbeddingRandomConfig


def prompt_slots(p: Prompted) -> torch.Tensor:
    """[R, T'] bool: attended positions of the prompted sequence that hold no input token, i.e. the prompt vectors.
    (A deep prompt's mask also covers its kv-prefix in front: only the mask's last T' columns are the sequence's.)"""
    length = p.inputs_embeds.shape[1]
    inputs = p.attention_mask.new_zeros((p.attention_mask.shape[0], length), dtype=torch.bool)
    return p.attention_mask[:, -length:].bool() & ~inputs.scatter(1, p.token_positions, True)


class Noise(Perturb):
    def __init__(self, config: EmbeddingRandomConfig, generator: torch.Generator):
        self.config, self.generator = config, generator

    def sample(self, like: torch.Tensor) -> torch.Tensor:
        c = self.config
        if c.distribution == "gaussian":
            noise = torch.randn(like.shape, generator=self.generator, device=like.device) * c.sigma
        else:
            noise = (torch.rand(like.shape, generator=self.generator, device=like.device) * 2 - 1) * c.sigma
        if c.scale == "norm":
            noise = noise * like.detach().float().pow(2).mean(-1, keepdim=True).sqrt()
        return noise

    def inputs(self, embeds, batch):
        noise = self.sample(embeds) * batch["attention_mask"][..., None]
        return embeds + noise.to(embeds.dtype)

    def prompted(self, p, batch):
        if not self.config.prompt:
            return p
        slots = prompt_slots(p)
        if not slots.any():
            raise ConfigError(
                "perturbation.prompt is true, but this method puts no prompt vectors into the input sequence "
                "(deep prompts live in the attention keys/values); set perturbation.prompt=false"
            )
        noise = self.sample(p.inputs_embeds) * slots[..., None]
        return p._replace(inputs_embeds=p.inputs_embeds + noise.to(p.inputs_embeds.dtype))


class EmbeddingRandom(Perturbation):
    """PTP-RN in embedding space: Gaussian or uniform noise, resampled every step."""

    def perturbed_loss(self, model, batch):
        noise = Noise(self.config, self.generator(batch["input_ids"].device))
        return option_loss(model(batch, noise), batch["labels"])


class EmbeddingAdversarial(Perturbation):
    """PTP-ADV in embedding space: K-step PGD on a perturbation delta of the input's word embeddings, from a random start
    inside the ball. The ascent takes gradients with respect to delta only (the prompt collects none from it); the
    prompt then learns from the loss at the final delta."""

    def perturbed_loss(self, model, batch):
        return option_loss(model(batch, AddToInputs(self.attack(model, batch))), batch["labels"])

    def attack(self, model, batch) -> torch.Tensor:
        """The adversarial delta [R, T, H] (fp32, zero on padding, inside the epsilon ball)."""
        c = self.config
        ids = batch["input_ids"]
        mask = batch["attention_mask"][..., None].float()
        hidden = model.backbone.get_input_embeddings().embedding_dim
        start = torch.rand((*ids.shape, hidden), generator=self.generator(ids.device), device=ids.device) * 2 - 1
        if c.norm == "l2":
            # Uniform in [-1, 1] scaled by epsilon / sqrt(real coordinates): inside the ball (FreeLB's random start).
            start = start * c.epsilon / (mask.sum((1, 2), keepdim=True) * hidden).sqrt()
        else:
            start = start * c.epsilon
        delta = start * mask
        for _ in range(c.steps):
            delta.requires_grad_(True)
            loss = option_loss(model(batch, AddToInputs(delta)), batch["labels"])
            (grad,) = torch.autograd.grad(loss, delta)
            delta = self.project(delta.detach() + c.alpha * self.ascent(grad) * mask)
        return delta

    def ascent(self, grad: torch.Tensor) -> torch.Tensor:
        if self.config.norm == "l2":
            return grad / grad.flatten(1).norm(dim=1).clamp(min=1e-12)[:, None, None]
        return grad.sign()

    def project(self, delta: torch.Tensor) -> torch.Tensor:
        eps = self.config.epsilon
        if self.config.norm == "l2":
            norms = delta.flatten(1).norm(dim=1)[:, None, None]
            return delta * (eps / norms.clamp(min=1e-12)).clamp(max=1.0)
        return delta.clamp(-eps, eps)
