"""The model the core trains: any provider's backbone with the core's own head."""

from __future__ import annotations

import torch
from torch import nn


class Classifier(nn.Module):
    """``head(backbone(images))``; state-dict keys are ``backbone.*`` and ``head.*``.

    ``keep_in_eval`` lists modules (frozen layers) that stay in eval mode
    whatever ``train()`` is called with, so frozen BatchNorm statistics never move.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self._keep_in_eval: list[nn.Module] = []

    def set_keep_in_eval(self, modules: list[nn.Module]) -> None:
        """Replace the set of modules held in eval mode, and apply it now."""
        self._keep_in_eval = list(modules)
        self.train(self.training)

    def train(self, mode: bool = True) -> Classifier:
        """As ``nn.Module.train``, then put the frozen modules back in eval mode."""
        super().train(mode)
        for module in self._keep_in_eval:
            module.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``(N, 3, H, W)``, normalised, to logits ``(N, num_classes)``."""
        return self.head(self.backbone(images))
