"""Parameter initialisation used by the PSTA reference configuration (docs/SPEC.md, "Initialisation")."""
from __future__ import annotations

from torch import nn


def weights_init_kaiming(m: nn.Module) -> None:
    """Convs: Kaiming normal (fan_in); Linears: Kaiming normal (fan_out), bias 0; BN: 1 / 0.

    Meant for ``module.apply``: it only touches the module it is given, not its children.
    """
    if isinstance(m, nn.Linear):
        nn.init.kaiming_normal_(m.weight, a=0, mode="fan_out")
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.modules.batchnorm._BatchNorm):
        if m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def weights_init_classifier(m: nn.Module) -> None:
    """Identity classifiers: normal (std 0.001), bias 0."""
    if isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, std=0.001)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
