"""``RPGModel``, a model whose targeted weights are generated from rings, and loading one from a checkpoint
(``apply_rpg``, in ``hf_rpg.api.apply``, makes one from a plain model)."""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import RPGConfigError, RPGStateError
from ..format import dtype_record
from ..format.base_reference import resolve_base_reference
from ..format.files import CONFIG_NAME, MODEL_CONFIG_NAME, WEIGHTS_NAME
from ..format.hub_resolve import resolve_checkpoint_files
from ..format.manifest import Layout
from ..format.metadata import binding_digest, read_metadata
from ..runtime import base_fingerprint
from ..runtime.engine import RuntimeStats, WeightEngine
from ..runtime.merge import dense_linear, merged_parameters
from ..runtime.parametrize import GeneratedSource, attach, detach, is_generated, original_class
from ..runtime.plan import Plan
from ..runtime.quantized import is_distributed_tensor
from .accounting import AccountingMethods
from .adapter_methods import NamedAdapterMethods
from .adapters import check_adapter_name, rename_default
from .base_model import build_base_model
from .checkpoint import RING_PREFIX, save_checkpoint, stored_entries
from .checkpoint_reading import check_model_binding, check_weights_file, load_tensors
from .config import RPGConfig
from .hub import push_to_hub
from .initialization import has_meta_tensors, initial_ring, materialize_meta
from .input_checks import check_device
from .model_class import allow_missing_base_weights, check_keywords, drop_base_weights, model_class_for
from .peft_integration import mixin_replacement
from .plan import base_weights, plan_for_layout
from .targets import FoundTarget, stored_parameter_ids, targets_from_manifest

if TYPE_CHECKING:
    from collections.abc import Iterator


class RPGModel(AccountingMethods, NamedAdapterMethods, nn.Module):
    """A model whose targeted weights are generated from trainable ring(s).

    Call it exactly like the wrapped model. Attributes it does not define are looked up on
    the wrapped model (``config``, ``generate``, ``gradient_checkpointing_enable`` ...).

    ``state_dict()`` holds what a checkpoint stores: the rings, the non-generated
    parameters (in delta mode only the trainable ones) and the buffers. The frozen base
    weights of delta mode are left out (they come from the base model), which keeps the
    checkpoints of training frameworks (Trainer, ``accelerator.save_state``) compact.

    Attributes:
        base_model: The wrapped model, changed in place.
        rpg_config: The ``RPGConfig`` used.
        rpg_rings: One trainable Parameter per ring, registered here and nowhere else.
        layout: The layout manifest (targets, offsets, gains, rings).
    """

    base_model: nn.Module
    rpg_rings: nn.ParameterDict

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("create an RPGModel with apply_rpg(model, config) or RPGModel.from_pretrained(path)")

    @classmethod
    def _wrap(
        cls,
        model: nn.Module,
        config: RPGConfig,
        plan: Plan,
        targets: list[FoundTarget],
        device: torch.device | None = None,
    ) -> RPGModel:
        """Attach ``plan`` to ``model`` (``config`` is kept as ``rpg_config``, to save)."""
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self.base_model = model
        self.rpg_config = config
        self.layout = layout = plan.layout
        self._targets = [list(t.owners) for t in targets]
        self._unloaded = False
        engine = WeightEngine(self, plan)
        self._engine = engine  # index caches are built on first use
        ring_device = device if device is not None else targets[0].param.device
        values = {name: initial_ring(layout, engine.indices, name, plan, targets) for name in layout.rings}
        self.rpg_rings = nn.ParameterDict({name: nn.Parameter(v.to(ring_device)) for name, v in values.items()})
        for tid, target in enumerate(targets):
            target.param.requires_grad_(False)
            source = GeneratedSource(engine, tid, plan.targets[tid].rowwise, plan.targets[tid].serving)
            for owner in target.owners:
                attach(owner.module, owner.attr, source)
        bases = self._delta_base_ids()
        for name, param in model.named_parameters(remove_duplicate=False):
            if id(param) not in bases and (name not in plan.stored_names or plan.unfreeze_stored):
                param.requires_grad_(name in plan.stored_names)
        self.__class__ = model_class_for(RPGModel, original_class(model))
        self.register_state_dict_post_hook(drop_base_weights)
        self.register_load_state_dict_post_hook(allow_missing_base_weights)
        return self

    # ------------------------------------------------------------------ calling

    def forward(self, *args: Any, adapter_names: list[str] | None = None, **kwargs: Any) -> Any:
        """Run the wrapped model with its generated weights (same inputs and outputs).

        ``adapter_names`` (delta mode, inference): one adapter name per sample, as PEFT's
        LoRA takes it (``"__base__"``: the base model alone); see ``hf_rpg.api.adapters``.
        """
        if adapter_names is not None:
            from .adapters import forward_mixed

            return forward_mixed(self, adapter_names, args, kwargs)
        return self._forward_active(*args, **kwargs)

    def _forward_active(self, *args: Any, **kwargs: Any) -> Any:
        self._check_usable()
        self._engine.begin_forward()
        return self.base_model(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in {"base_model", "_modules", "_parameters", "_buffers"}:
                raise
            base = self.base_model
            # transformers' PEFT mixin methods do not see the rings: point to hf_rpg's verbs instead
            refuse = mixin_replacement(name, base)
            return refuse if refuse is not None else getattr(base, name)

    def _check_usable(self) -> None:
        if self._unloaded:
            raise RPGStateError("this RPGModel was unloaded; use the model merge_and_unload()/unload() returned")

    @contextlib.contextmanager
    def disable_rpg(self) -> Iterator[None]:
        """Delta mode: run the untouched base model inside this block (PEFT's
        ``disable_adapter``): a reference model for DPO-style training, or an A/B check.

        Example:
            >>> with model.disable_rpg():
            ...     reference_logits = model(**batch).logits
        """
        self._check_usable()
        if not self.plan.delta:
            raise RPGStateError("disable_rpg() needs mode='delta': in replace mode there is no base model to run")
        if self.merged:
            raise RPGStateError(
                "the update is merged into the base weights: call unmerge_adapter() before disable_rpg()"
            )
        engine = self._engine
        previous = engine.update_enabled
        engine.update_enabled = False
        engine.drop_inference_weights()
        try:
            yield
        finally:
            engine.update_enabled = previous
            engine.drop_inference_weights()

    disable_adapter = disable_rpg

    def _apply(self, fn: Any, recurse: bool = True) -> RPGModel:
        # .to() / .half() / .cuda(): generated weights follow like the Parameters they replace;
        # the rings move but keep config.ring_dtype (float32 by default, whatever the model's
        # dtype, so that small optimizer updates are kept): RPGConfig(ring_dtype=...) sets it.
        rings = self._modules.get("rpg_rings")
        if rings is not None:
            self._modules["rpg_rings"] = None
            try:
                result = super()._apply(fn, recurse)
            finally:
                self._modules["rpg_rings"] = rings
            rings._apply(dtype_record.keeping_dtype(fn), recurse)
        else:
            result = super()._apply(fn, recurse)
        engine = self.__dict__.get("_engine")
        if engine is not None:
            engine.follow(engine.plan.moved(fn))
        return result

    def __reduce_ex__(self, protocol: int) -> Any:
        raise RPGStateError(
            "an RPGModel cannot be pickled (torch.save(model)): use model.save_pretrained(path) (compact, loads "
            "with RPGModel.from_pretrained), torch.save(model.state_dict()), or pickle the plain model that "
            "merge_and_unload() returns"
        )

    def __deepcopy__(self, memo: dict[int, Any]) -> RPGModel:
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            new.__dict__[key] = copy.deepcopy(value, memo)
        return new

    def get_base_model(self) -> nn.Module:
        """The wrapped model (its targeted weights are generated while RPG is applied)."""
        return self.base_model

    def clear_cache(self) -> None:
        """Free the weights kept for inference (they are regenerated on next use)."""
        self._engine.clear_cache()

    # ------------------------------------------------------------------ introspection

    @property
    def plan(self) -> Plan:
        """The per-target plan, decided once when RPG was applied or the checkpoint loaded
        (``hf_rpg.runtime.plan.Plan``): each target's manifest entry (ring, offset, gain,
        rank), how it is served (``plan.servings()``), its dtype and device, which
        embeddings generate rows only (``plan.rowwise_ids()``), and the caching policy
        (``cache_indices``, ``regenerate``, ``inference_cache``)."""
        return self._engine.plan

    def runtime_stats(self) -> RuntimeStats:
        """What the model holds right now besides its parameters: index cache bytes and
        layouts, pooled buffers, live and cached weights, and how many weights were
        generated so far (``hf_rpg.runtime.engine.RuntimeStats``).

        Example:
            >>> model.runtime_stats().index_cache_bytes
            409600
        """
        return self._engine.stats()

    def build_index_caches(self, device: torch.device | str | None = None) -> None:
        """Build the int32 index caches now on ``device`` (default CPU) rather than on first use
        (no-op with ``index_cache="none"``)."""
        self._engine.indices.build(device)

    def set_index_override(self, ring_name: str, signed_index: torch.Tensor) -> None:
        """For studies only (index ablations): ring ``ring_name`` gathers through
        ``signed_index`` (int32, one index into ``[θ, −θ]`` per generated element) instead of
        its ``rpg-v1`` indices; a checkpoint does not record it (see
        ``hf_rpg.runtime.engine.WeightEngine.set_index_override``)."""
        self._engine.set_index_override(ring_name, signed_index)

    def generated_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """``(name, tensor)`` of every generated weight, as the model currently sees it:
        the weight itself (replace mode, delta mode on a dense full-rank target), or the
        dense update ``ΔW`` added to the layer's output (quantized bases, low-rank
        targets; the low-rank update made dense here, in the layout of the layer's weight)."""
        engine = self._engine
        for tid, entry in enumerate(self.layout.targets):
            tensor = engine.tensor(tid)
            # inside disable_rpg() the tensor is the base weight itself, not a low-rank factor
            yield entry.name, engine.dense_update(tid, tensor) if engine.update_enabled else tensor

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        """``(trainable, all)`` as PEFT reports them (``DoFReport.all_parameters``: in delta
        mode the base plus the ring, in replace mode the dense model the ring stands for)."""
        report = self.dof_report()
        return report.trainable, report.all_parameters

    def print_trainable_parameters(self) -> None:
        """Print PEFT's line (``trainable params: … || all params: … || trainable%: …``),
        then the ring's DoF and what a checkpoint stores."""
        print(self.dof_report())

    # ------------------------------------------------------------------ saving / loading

    def save_pretrained(self, save_directory: str | Path, **kwargs: Any) -> None:
        """Write a compact checkpoint (ring(s), non-generated parameters, manifest, card).

        ``ring_storage``: ``None`` (the ring as is), ``"float32"``, ``"float16"``, ``"int8"``
        (per-block scales) or ``"sparse"`` (for pruned rings). See
        ``hf_rpg.api.checkpoint.save_checkpoint`` for the keyword arguments.
        """
        self._check_usable()
        check_keywords("save_pretrained", kwargs, save_checkpoint, skip=2)
        state = self.__dict__.get("_adapter_state")
        if state is not None and len(state.configs) > 1:
            from .adapters import save_adapters

            # PEFT's layout: "default" at the root, the others in subfolders named after them
            save_adapters(self, save_directory, self._save_active, **kwargs)
            return
        self._save_active(save_directory, **kwargs)

    def _save_active(self, save_directory: str | Path, **kwargs: Any) -> None:
        if kwargs.get("state_dict") is None:
            gathered = self._gathered_for_saving()
            if gathered is not None:
                kwargs["state_dict"] = gathered
        save_checkpoint(self, save_directory, **kwargs)

    def _gathered_for_saving(self) -> dict[str, torch.Tensor] | None:
        """Under FSDP2 (or any DTensor sharding) the full tensors to save, gathered on every
        rank (a collective: call ``save_pretrained`` on every rank; only the main one writes)."""
        live = {RING_PREFIX + name: ring for name, ring in self.rpg_rings.items()}
        live.update({"base_model." + name: tensor for name, tensor in stored_entries(self).items()})
        if not any(is_distributed_tensor(t) for t in live.values()):
            return None
        return {key: t.full_tensor() if is_distributed_tensor(t) else t for key, t in live.items()}

    @classmethod
    def from_pretrained(
        cls, path_or_repo_id: str | Path, base_model: nn.Module | None = None, **kwargs: Any
    ) -> RPGModel:
        """Load a checkpoint written by ``save_pretrained``, from a directory or the Hub.

        Replace mode rebuilds the architecture from ``config.json`` and needs no base
        weights. Delta mode loads the base model the checkpoint records, or uses
        ``base_model``. See ``hf_rpg.api.model.load_checkpoint`` for the keyword arguments.
        """
        check_keywords("from_pretrained", kwargs, load_checkpoint, skip=2)
        return load_checkpoint(path_or_repo_id, base_model=base_model, **kwargs)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> Any:
        """Upload the compact checkpoint and a generated model card to the Hub.

        See ``hf_rpg.api.hub.push_to_hub`` for the keyword arguments (``private``, ``token``,
        ``commit_message``, ``revision``, ``create_pr``, ``card_info``).
        """
        self._check_usable()
        return push_to_hub(self, repo_id, **kwargs)

    # ------------------------------------------------------------------ export

    def merge_and_unload(self) -> nn.Module:
        """Return the wrapped model with the generated weights as ordinary Parameters.

        The result is the base model's own class (a plain ``PreTrainedModel`` for
        transformers models); tied weights stay one shared Parameter. This RPGModel
        is unusable afterwards.
        """
        self._check_usable()
        if self.merged:  # the base weights already hold the update
            return self._unload({tid: t.base() for tid, t in enumerate(self.plan.targets)})
        params, dense_updates = merged_parameters(self._engine)
        model = self._unload(params)
        for tid, delta in dense_updates.items():  # a quantized base becomes a dense nn.Linear
            owner = self._targets[tid][0]
            parent, _, child = owner.module_name.rpartition(".")
            model.get_submodule(parent).register_module(child, dense_linear(owner.module, owner.attr, delta))
        return model

    def unload(self) -> nn.Module:
        """Delta mode: return the base model with its original (frozen) weights, dropping
        the update. Replace mode has no original weights: use ``merge_and_unload``."""
        self._check_usable()
        if not self.plan.delta:
            raise RPGStateError("unload() needs mode='delta'; in replace mode use merge_and_unload()")
        if self.merged:
            self.unmerge_adapter()
        bases = {tid: owners[0].module._parameters[owners[0].attr] for tid, owners in enumerate(self._targets)}
        return self._unload(bases)

    def _unload(self, params: dict[int, nn.Parameter]) -> nn.Module:
        for tid, owners in enumerate(self._targets):
            for owner in owners:
                detach(owner.module, owner.attr, params[tid])
        self._engine.enabled = False
        self._engine.clear_cache()
        self._unloaded = True
        return self.base_model

    def extra_repr(self) -> str:
        """Mode, ring sizes and generated elements, shown by ``print(model)``."""
        report = self.dof_report()
        return f"mode={self.rpg_config.mode!r}, rings={report.rings}, generated={report.generated_elements:,}"


# ---------------------------------------------------------------------------- loading


def load_checkpoint(
    path_or_repo_id: str | Path,
    base_model: nn.Module | None = None,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
    force_download: bool = False,
    device: torch.device | str | None = None,
    check_base: bool = True,
    is_trainable: bool = False,
    adapter_name: str = "default",
) -> RPGModel:
    """Load an hf_rpg checkpoint from a local directory or a Hub repo id.

    Args:
        path_or_repo_id: A directory written by ``save_pretrained``, or ``"user/repo"``.
        base_model: The model to apply the checkpoint to. Needed when the architecture
            cannot be rebuilt from ``config.json`` (a custom ``nn.Module``), or to reuse
            an already loaded base in delta mode.
        revision, cache_dir, token, local_files_only, force_download: Hub options, as in
            ``huggingface_hub.hf_hub_download``.
        device: Where a replace-mode model rebuilt from ``config.json`` is materialised
            (``"cpu"`` by default). It is built on the meta device and only what the
            checkpoint stores (rings, parameters that are not generated, buffers) is
            allocated: the dense generated weights never are.
        check_base: Delta mode: refuse a base whose weights differ from the ones the update
            was trained on (``base_fingerprint``, ``RPGBaseMismatchError``). ``False`` loads
            the update onto this base anyway (a base quantized differently, say).
        is_trainable: As in PEFT: ``False`` (the default) loads for inference, every
            parameter frozen (rings included); ``True`` makes the ring(s) and the parameters
            the config trains trainable again, to resume training.
        adapter_name: The name of the loaded adapter (delta mode: ``load_adapter`` adds
            others; ``hf_rpg.api.adapters``).

    Returns:
        An ``RPGModel`` in eval mode. Its outputs are bit-identical to the saved model's.
    """
    if not isinstance(is_trainable, bool):
        raise RPGConfigError(f"is_trainable must be True or False, got {is_trainable!r}")
    check_adapter_name(adapter_name)
    if base_model is not None and (
        isinstance(base_model, RPGModel) or any(is_generated(m) for m in base_model.modules())
    ):
        raise RPGStateError(
            "RPG is already applied to base_model; from_pretrained takes a plain model "
            "(call merge_and_unload() on it first, or pass a freshly loaded base model)"
        )
    device = check_device(device)
    hub_kwargs = {"cache_dir": cache_dir, "token": token, "local_files_only": local_files_only}
    files = resolve_checkpoint_files(path_or_repo_id, revision=revision, force_download=force_download, **hub_kwargs)
    meta = read_metadata(files[CONFIG_NAME])
    try:
        config = RPGConfig.from_dict(meta["config"])
    except RPGConfigError as err:
        raise RPGConfigError(f"{files[CONFIG_NAME]}: 'config': {err}") from None
    layout = Layout.from_dict(meta["manifest"])
    check_weights_file(files[WEIGHTS_NAME], meta)
    check_model_binding(files[WEIGHTS_NAME], meta, files.get(MODEL_CONFIG_NAME) if base_model is None else None)
    if base_model is None:
        base = meta.get("base_model")
        if isinstance(base, dict):  # a path recorded relative to the checkpoint directory
            base["name_or_path"] = resolve_base_reference(base.get("name_or_path"), files[CONFIG_NAME].parent)
        base_model = build_base_model(meta, config, files.get(MODEL_CONFIG_NAME), hub_kwargs)
        if meta.get("dtypes") is not None:  # whatever built the model that was saved
            dtype_record.restore(base_model, meta["dtypes"])
    targets = targets_from_manifest(base_model, layout)
    trainable = [(p, p.requires_grad) for p in base_model.parameters()]
    on_meta = has_meta_tensors(base_model)
    target_device = torch.device(device if device is not None else "cpu") if on_meta else None
    stored = stored_parameter_ids(base_model, targets, config)
    plan = plan_for_layout(base_model, config, layout, targets, target_device, stored)
    if plan.delta:
        bases = base_weights(plan, targets)
        base_fingerprint.check_recorded(meta.get("base_fingerprint"), bases, str(files[CONFIG_NAME]), check_base)
    fingerprint = base_fingerprint.fingerprint(bases) if plan.delta else None
    model = RPGModel._wrap(base_model, config, plan, targets, device=target_device)
    model._base_fingerprint = fingerprint
    try:
        if on_meta:
            materialize_meta(model.base_model, model._engine, target_device)
        load_tensors(model, files[WEIGHTS_NAME], binding=binding_digest(meta), ring_storage=meta.get("ring_storage"))
    except BaseException:
        # A base_model the caller passed is theirs: give it back as it was, not half-wrapped.
        model._unload({tid: target.param for tid, target in enumerate(targets)})
        for param, flag in trainable:
            param.requires_grad_(flag)
        raise
    if device is not None and not on_meta:
        model.to(device)
    rename_default(model, adapter_name)
    if not is_trainable:
        # PEFT's inference load: nothing trains until the caller asks for it
        for param in model.parameters():
            param.requires_grad_(False)
    model.eval()
    return model
