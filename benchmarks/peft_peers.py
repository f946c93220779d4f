"""PEFT's peer methods as both quality benchmarks build them: one place for how each is
configured and seeded, so the two protocols cannot drift apart."""

from __future__ import annotations

from typing import Any

from torch import nn


def peft_peer(model: nn.Module, method: str, cfg: dict[str, Any], seed: int, **common: Any) -> nn.Module:
    """``model`` with PEFT's ``method`` applied: ``cfg`` sizes it, ``seed`` draws its fixed random
    parts, ``common`` holds what every method takes (``target_modules``, ``task_type``, ...)."""
    import peft

    if method == "lora":
        config = peft.LoraConfig(**common, **cfg, lora_dropout=0.0)
    elif method == "vera":
        config = peft.VeraConfig(**common, **cfg, projection_prng_key=seed)
    elif method == "unilora":
        config = peft.UniLoraConfig(**common, **cfg, proj_seed=seed)
    elif method == "tinylora":
        config = peft.TinyLoraConfig(**common, **cfg, projection_seed=seed)
    elif method == "fourierft":
        # init_weights=True starts the spectrum at zero (the model starts as the base), as every
        # other method here; PEFT's default random start moves the weights before any step.
        config = peft.FourierFTConfig(**common, **{"init_weights": True, **cfg}, random_loc_seed=seed)
    elif method == "vblora":
        config = peft.VBLoRAConfig(**common, **cfg)
    else:
        raise ValueError(f"unknown PEFT peer {method!r}")
    return peft.get_peft_model(model, config)
