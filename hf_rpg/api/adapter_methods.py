"""PEFT's adapter verbs on ``RPGModel`` (named adapters and merging in place), a mixin kept apart
from the model class so that each stays one job: the bookkeeping lives in ``hf_rpg.api.adapters``
and ``hf_rpg.api.merging``; these methods are their public face."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import adapters as named
from . import merging
from .config import RPGConfig


class NamedAdapterMethods:
    """``active_adapter(s)``, ``add_adapter``, ``set_adapter``, ``delete_adapter``,
    ``load_adapter``, ``add_weighted_adapter``, ``merge_adapter`` / ``unmerge_adapter``."""

    @property
    def active_adapter(self) -> str:
        """The name of the adapter the model runs (``"default"`` unless named otherwise)."""
        return named.active_adapter(self)

    @property
    def active_adapters(self) -> list[str]:
        """``[active_adapter]``: one adapter runs at a time (mixed batches aside)."""
        return [self.active_adapter]

    @property
    def adapters(self) -> dict[str, RPGConfig]:
        """Adapter name -> its ``RPGConfig`` (PEFT's ``peft_config``)."""
        return dict(named.state(self).configs)

    def add_adapter(self, adapter_name: str, config: RPGConfig) -> None:
        """Delta mode: a new adapter (PEFT's verb) on the same frozen base, its ring at zero,
        not activated. Its config must give the same layout as the model's (targets, DoF,
        seed...). See ``hf_rpg.api.adapters``."""
        named.add_adapter(self, adapter_name, config)

    def set_adapter(self, adapter_name: str) -> None:
        """Make ``adapter_name`` active: its ring values are copied into the model's ring
        Parameters in place (no new Parameters: a compiled model does not recompile)."""
        named.set_adapter(self, adapter_name)

    def delete_adapter(self, adapter_name: str) -> None:
        """Remove an adapter (deleting the active one activates another)."""
        named.delete_adapter(self, adapter_name)

    def load_adapter(
        self, path_or_repo_id: str | Path, adapter_name: str, *, hotswap: bool = False, **hub_kwargs: Any
    ) -> None:
        """Load a delta checkpoint of this base as adapter ``adapter_name`` (PEFT's verb);
        ``hotswap=True`` replaces an existing adapter's values in place. ``hub_kwargs``:
        ``revision``, ``cache_dir``, ``token``, ``local_files_only``, ``force_download``."""
        from .checkpoint_reading import read_adapter_checkpoint

        named.load_adapter(
            self, lambda: read_adapter_checkpoint(path_or_repo_id, **hub_kwargs), adapter_name, hotswap=hotswap
        )

    def add_weighted_adapter(self, adapters: list[str], weights: list[float], adapter_name: str) -> None:
        """A new adapter whose update is exactly ``Σ wᵢ ΔWᵢ`` of the given adapters (PEFT's
        ``combination_type="linear"``); its trained heads are those of ``adapters[0]``."""
        named.add_weighted_adapter(self, adapters, weights, adapter_name)

    @property
    def merged(self) -> bool:
        """Whether ``merge_adapter()`` wrote the update into the base weights (PEFT's ``merged``)."""
        return self.__dict__.get("_merged_rings") is not None

    def merge_adapter(self) -> None:
        """Delta mode: add the update into the frozen base weights in place, so that forwards
        cost what the base model's do (PEFT's ``merge_adapter``); ``unmerge_adapter()`` takes
        it out again. Unlike ``merge_and_unload`` the model stays an RPGModel."""
        merging.merge_adapter(self)

    def unmerge_adapter(self) -> None:
        """Undo ``merge_adapter()`` (the base weights come back up to floating-point rounding)."""
        merging.unmerge_adapter(self)
