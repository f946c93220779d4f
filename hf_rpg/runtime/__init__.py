"""Serving generated weights inside a live ``torch.nn.Module``.

The engine that decides when a generated weight exists (regenerated per forward, cached for
inference, or merged), the autograd functions that generate from the ring and scatter the
gradient back, the parametrization that puts a generated weight in a module's place, and
the helpers for quantized base layers. Builds on ``hf_rpg.spec`` and ``hf_rpg.format``;
knows nothing of configs, Trainers or the Hub.
"""
