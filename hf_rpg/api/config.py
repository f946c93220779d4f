"""``RPGConfig``: what to generate, from how many degrees of freedom, and how to start."""

from __future__ import annotations

import json
import math
import numbers
import re
import sys
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from ..describe import describe as _describe
from ..errors import RPGConfigError
from ..format.manifest import RING_NAME_PATTERN

Mode = Literal["replace", "delta"]
Init = Literal["random", "project"]
Gain = Literal["auto", "kaiming_fan_in", "kaiming_fan_out"]
OtherParameters = Literal["train", "head", "freeze"]
IndexCache = Literal["auto", "int32", "none"]
RingDtype = Literal["float32", "float64", "bfloat16", "float16"]

MODES = ("replace", "delta")
INITS = ("random", "project")
GAINS = ("auto", "kaiming_fan_in", "kaiming_fan_out")
OTHER_PARAMETERS = ("train", "head", "freeze")
INDEX_CACHES = ("auto", "int32", "none")
RING_DTYPES = ("float32", "float64", "bfloat16", "float16")
WEIGHTS_IN_BACKWARD = ("auto", "regenerate", "keep")
UPDATES = ("auto", "full", "lowrank", "lora")
Update = Literal["auto", "full", "lowrank", "lora"]
# update="auto" in delta mode: rpg-lora-v1 for an int dof up to this many ring entries. Measured
# on SmolLM2 (sentiment, TREC; benchmarks/results/llm-quality.md): at 1,000 its validation tied
# full rank on one task and beat it by 3.5 points on the other; at 10,000 full rank led on both.
# No budget in between was measured: the switch sits at twice the budget where it won.
AUTO_LORA_MAX_DOF = 2048
# update="lora": the rank when rank is None (the rank the benchmark measured).
LORA_RANK = 8
DEFAULT_RING = "default"
# rank="auto": the rank of small rings, and the generated elements per ring entry kept for large ones.
AUTO_RANK = 8
AUTO_RANK_ELEMENTS_PER_DOF = 4
# index_cache="auto": an int32 cache up to this many generated elements (1 GiB of indices).
AUTO_INDEX_CACHE_ELEMENTS = 1 << 28
MAX_SEED = 2**64 - 1
# A float gain above this makes float32 weights or activations overflow (inf/NaN).
MAX_GAIN = 1e6

Pattern = str | list[str] | None


def _check_pattern(name: str, value: Any, *, allow_none: bool = True) -> Pattern:
    """Validate a PEFT-style module pattern: a regex string or a list of names/suffixes."""
    valid = "a regex string, a list of strings or None" if allow_none else "a regex string or a list of strings"
    if value is None:
        if allow_none:
            return None
        raise RPGConfigError(f"{name} must be {valid}, got None")
    if isinstance(value, str):
        if not value:
            raise RPGConfigError(f"{name} must not be an empty string; it must be {valid}")
        try:
            re.compile(value)
        except (re.error, RecursionError, OverflowError) as err:  # deep nesting / huge repeats
            raise RPGConfigError(f"{name}={value!r} is not a valid regular expression: {err}") from None
        return value
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value) if isinstance(value, (set, frozenset)) else list(value)
        if not items:
            raise RPGConfigError(
                f"{name} must not be an empty list; use None for the default or name at least one module"
            )
        for item in items:
            if not isinstance(item, str) or not item:
                raise RPGConfigError(f"{name} entries must be non-empty strings, got {_describe(item)}")
        return items
    raise RPGConfigError(f"{name} must be {valid}, got {_describe(value)}")


def _plain_number(value: Any) -> Any:
    """NumPy (or other ``numbers``) scalars as Python ints and floats; anything else as is.

    An integral value stays an int and a real one a float, so ``dof=np.int64(1000)`` is a
    ring size and ``dof=np.float32(0.1)`` a fraction, exactly as their Python twins.
    """
    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, numbers.Integral) and not isinstance(value, _np_bool_types()):
        return int(value)
    if isinstance(value, numbers.Real) and not isinstance(value, _np_bool_types()):
        return float(value)
    return value


def _np_bool_types() -> tuple[type, ...]:
    """NumPy's bool scalar type when NumPy is imported (it is not a ``numbers.Integral``)."""
    numpy = sys.modules.get("numpy")
    return (numpy.bool_,) if numpy is not None else ()


@dataclass
class RPGConfig:
    """Configuration of a Recurrent Parameter Generator applied to a model.

    Args:
        dof: Degrees of freedom, i.e. the total ring size. An ``int`` is the number of ring
            entries; a ``float`` in ``(0, 1]`` is a fraction of the targeted elements. With
            several rings it is split among them in proportion to their targeted elements.
        seed: Key of the ``rpg-v1`` generator (permutation, signs) and of the ring's initial
            values; an int in ``[0, 2**64)``. The global RNG is never used.
        mode: ``"replace"`` generates the targeted weights entirely (the paper);
            ``"delta"`` keeps the pretrained weights frozen and generates an update,
            ``W = W0 + gain * G(ring)``, with the ring starting at zero.
        init: Replace mode only. ``"random"`` starts the ring at normal values on the
            weights' scale (``scale * N(0, 1)``, from the seed); ``"project"`` starts it at
            the least-squares fit of the model's current weights (compress a pretrained
            model onto the ring, then train).
        target_modules: Modules whose ``weight`` is generated. ``"all"`` targets every
            ``nn.Linear``, ``nn.Conv1d/2d/3d``, ``nn.ConvTranspose*``, ``nn.Embedding`` and
            transformers ``Conv1D`` outside the task head(s); ``"all-linear"`` (PEFT's
            keyword) the linear ones only. ``None`` is ``"all"`` in replace mode; in delta
            mode it is the architecture's attention query and value projections, as PEFT's
            LoRA defaults (``hf_rpg.api.default_targets.DELTA_DEFAULT_TARGETS``: ``query``/``value``
            for BERT and ViT, ``q_proj``/``v_proj`` for Llama, Mistral, Qwen, Gemma, OPT...),
            and ``"all"`` for architectures without an entry (convolutional networks). As
            in PEFT, a string is a regex that must match the full module name; a list
            matches exact names or name suffixes (``"query"`` matches
            ``"encoder.layer.0.attention.self.query"``).
        exclude_modules: Modules never targeted (same matching rules). A tied weight is
            left alone if any of its owners is excluded.
        target_parameters: Raw ``nn.Parameter`` s to generate as well, matched by their
            full parameter name with the same rules (e.g. ViT's ``"cls_token"``).
        rings: Local RPG (the paper's per-stage rings): a map from ring name to a pattern
            over module (or parameter) names. Targets matching no pattern use the ring
            ``"default"``. ``None`` gives one global ring.
        rank: Delta mode, linear layers: the rank of a low-rank update (``update="lowrank"`` or
            ``"lora"``). ``None``: full rank under ``update="auto"`` or ``"full"``,
            ``"auto"`` under ``"lowrank"`` and ``LORA_RANK`` (8) under ``"lora"``. ``"auto"``
            (``update="lowrank"`` only) is ``AUTO_RANK`` (8), raised for a large ring until the
            factors hold ``AUTO_RANK_ELEMENTS_PER_DOF`` (4) generated elements per ring entry,
            and capped at each layer's ``min(in, out)``. A rank given with ``update="auto"``
            means ``"lowrank"`` (as before ``update`` existed).
        update: Delta mode: the kind of update generated for linear layers.
            ``"full"``: the whole ``ΔW`` (``out × in`` elements per layer from the ring,
            ``rpg-v1``). ``"lowrank"`` (``rpg-lowrank-v1``): the ring generates a factor ``F``
            (``[out, rank]``), the update is ``F P`` with ``P`` a fixed ``[rank, in]`` sign
            projection regenerated from the seed. ``"lora"`` (``rpg-lora-v1``): the ring
            generates both factors of a LoRA-shaped update, ``ΔW = F (P + A)`` with ``F``
            (``[out, rank]``) and ``A`` (``[rank, in]``) read from the ring, zero at start.
            Both low-rank kinds compute ``x Wᵀ + (x Pᵀ) Fᵀ`` (``P + A`` for ``"lora"``): two
            thin products as in LoRA, no dense update in training, a step as cheap as
            LoRA's. ``"auto"`` (the default): ``"lora"`` at rank 8 for an int ``dof`` up to
            ``AUTO_LORA_MAX_DOF`` (2,048), where it was the more accurate on SmolLM2, and
            ``"full"`` above (``"lowrank"`` when a ``rank`` or ``rank_pattern`` is given);
            ``benchmarks/results/llm-quality.md`` and ``quality.md`` measure them. Targets that
            are not linear layers (embeddings, convolutions, raw parameters) always get a
            full-rank update. Replace mode (whole weights) takes ``"auto"`` or ``"full"`` and
            ignores ``rank="auto"``.
        gain: Per-tensor scale of the generated values. ``"auto"`` uses the standard
            deviation of the tensor's current values (its layer's own initialisation, or
            the pretrained weights), falling back to the model's ``initializer_range`` or
            ``1/sqrt(fan_in)`` for a tensor that is all zeros. ``"kaiming_fan_in"`` and
            ``"kaiming_fan_out"`` use ``sqrt(2 / fan)`` (the reference code uses
            fan-out). A positive float (at most ``MAX_GAIN``, 1e6: beyond, float32
            overflows): in replace mode, that value for every tensor; in
            delta mode, a multiplier of the update on top of the ``"auto"`` scales,
            ``ΔW = gain · G(ring)``. The ring starts at zero there, so under Adam a gain
            acts exactly as a learning-rate multiplier for the ring (``gain=2`` trains as
            ``lr × 2`` would, weight decay aside): the learning rate alone is the usual knob.
        other_parameters: What happens to parameters that are not generated (biases,
            norms, heads): ``"train"`` keeps them trainable, ``"head"`` trains only the
            new task head(s) and freezes the rest, ``"freeze"`` freezes them all. ``None``
            means ``"train"`` in replace mode and ``"head"`` in delta mode. As in PEFT, a
            task head is a classification / token-classification / regression head
            (``classifier``, ``score``...); the head of a causal, masked or seq2seq
            language model (its output embeddings, tied or not) is never trained by
            ``"head"``: only the ring is.
        modules_to_save: PEFT's option: modules (same matching rules as
            ``target_modules``) whose parameters are trained and stored in full. When
            given, it replaces the default choice of task heads of ``"head"``; with any
            ``other_parameters`` these modules are trained. Recorded in checkpoints:
            what a delta checkpoint stores follows it, not ``requires_grad`` at save time.
        ring_dtype: dtype of the ring(s), ``"float32"`` by default whatever the model's
            dtype, so that optimizer updates smaller than a bf16 weight's resolution are
            kept. Each generated weight is cast to its own tensor's dtype after generation.
        index_cache: ``"int32"`` keeps a compact index cache (4 bytes per generated
            element, built on first use, never saved); ``"none"`` recomputes indices on
            the fly (0 bytes). ``"auto"`` caches while the cache would take at most
            ``AUTO_INDEX_CACHE_ELEMENTS`` elements (1 GiB) and computes on the fly beyond,
            where a dense-sized cache would defeat the point of a big model with few DoF.
        weights_in_backward: What autograd keeps of a generated weight between a layer's
            forward and its backward. ``"regenerate"``: nothing; backward generates it again
            (one more gather per weight, and only the running layer's weights ever exist).
            ``"keep"``: the weight itself, as for any layer (no extra gather; every weight
            of the model is alive until backward). ``"auto"`` keeps up to
            ``AUTO_INDEX_CACHE_ELEMENTS`` generated elements and regenerates beyond.
        embedding_rows: Generate only the looked-up rows of untied embeddings during
            training instead of the whole table.
        inference_cache: Without grad, generate the weights once and reuse them until
            the ring changes (costs one dense copy of the generated weights).
        base_model_name_or_path: Delta mode: the Hub name or path of the frozen base
            model, recorded in checkpoints. Taken from the model's config when ``None``.
        revision: Delta mode: the revision of the base model on the Hub.
        layers_to_transform: PEFT's option: only the targets inside these numbered layers
            (an int or a list of ints) are generated; the layer number is the first numbered
            segment of the module name (``encoder.layer.3.attention...`` is layer 3), or the
            one after ``layers_pattern``. Targets in no numbered layer are left out. Needs
            ``target_modules`` as a list, ``None``, ``"all"`` or ``"all-linear"`` (a regex
            string can name the layers itself).
        layers_pattern: PEFT's option, with ``layers_to_transform``: the name (or names) of
            the layer list, e.g. ``"layers"`` (Llama), ``"layer"`` (BERT), ``"h"`` (GPT-2).
        rank_pattern: PEFT's option, delta mode: a map from a module-name pattern to the rank
            of the matching linear layers' low-rank updates, overriding ``rank`` (``{"q_proj":
            4}``; a key matches a name or a name's suffix, as a regex, like PEFT's). A layer
            no key matches gets ``rank``.
    """

    dof: int | float = 0.1
    seed: int = 0
    mode: Mode = "replace"
    init: Init = "random"
    target_modules: Pattern = None
    exclude_modules: Pattern = None
    target_parameters: Pattern = None
    rings: dict[str, str | list[str]] | None = None
    rank: int | Literal["auto"] | None = None
    update: Update = "auto"
    gain: Gain | float = "auto"
    other_parameters: OtherParameters | None = None
    modules_to_save: Pattern = None
    ring_dtype: RingDtype = "float32"
    index_cache: IndexCache = "auto"
    weights_in_backward: Literal["auto", "regenerate", "keep"] = "auto"
    embedding_rows: bool = True
    inference_cache: bool = True
    base_model_name_or_path: str | None = None
    revision: str | None = None
    layers_to_transform: int | list[int] | None = None
    layers_pattern: str | list[str] | None = None
    rank_pattern: dict[str, int] | None = None
    _extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field; raise ``RPGConfigError`` naming the first bad one."""
        for name in ("dof", "seed", "gain"):
            setattr(self, name, _plain_number(getattr(self, name)))
        self._validate_dof()
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise RPGConfigError(f"seed must be an int in [0, 2**64), got {_describe(self.seed)}")
        self._check_choice("mode", self.mode, MODES)
        self._check_choice("init", self.init, INITS)
        if self.is_delta and self.init != "random":
            raise RPGConfigError(
                f"init={self.init!r} applies to mode='replace' only; in mode='delta' the ring starts at zero"
            )
        self.target_modules = _check_pattern("target_modules", self.target_modules)
        self.exclude_modules = _check_pattern("exclude_modules", self.exclude_modules)
        self.target_parameters = _check_pattern("target_parameters", self.target_parameters)
        self._validate_rings()
        self._validate_rank()
        self._validate_update()
        self._validate_gain()
        if self.other_parameters is not None:
            self._check_choice("other_parameters", self.other_parameters, OTHER_PARAMETERS)
        self.modules_to_save = _check_pattern("modules_to_save", self.modules_to_save)
        self._check_choice("ring_dtype", self.ring_dtype, RING_DTYPES)
        self._check_choice("index_cache", self.index_cache, INDEX_CACHES)
        self._check_choice("weights_in_backward", self.weights_in_backward, WEIGHTS_IN_BACKWARD)
        for name in ("embedding_rows", "inference_cache"):
            if not isinstance(getattr(self, name), bool):
                raise RPGConfigError(f"{name} must be True or False, got {_describe(getattr(self, name))}")
        for name in ("base_model_name_or_path", "revision"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise RPGConfigError(f"{name} must be a non-empty string or None, got {_describe(value)}")
        self._validate_layers()
        self._validate_rank_pattern()

    @staticmethod
    def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
        if value not in choices:
            raise RPGConfigError(f"{name} must be one of {', '.join(map(repr, choices))}; got {_describe(value)}")

    def _validate_dof(self) -> None:
        dof = self.dof
        if isinstance(dof, bool) or not isinstance(dof, (int, float)):
            raise RPGConfigError(
                f"dof must be an int (ring size) or a float in (0, 1] (fraction of targeted elements), "
                f"got {_describe(dof)}"
            )
        if isinstance(dof, int) and dof <= 0:
            raise RPGConfigError(f"dof must be a positive int (ring size), got {dof}")
        if isinstance(dof, int) and dof == 1:
            warnings.warn(
                "dof=1 (an int) is a ring of ONE entry: every generated weight is +-gain times one number. "
                "For full DoF write dof=1.0 (a float is a fraction of the targeted elements)",
                UserWarning,
                stacklevel=5,
            )
        if isinstance(dof, float) and not (math.isfinite(dof) and 0.0 < dof <= 1.0):
            raise RPGConfigError(
                f"dof as a float is a fraction of the targeted elements and must be in (0, 1], got {dof}"
            )

    def _validate_rings(self) -> None:
        if self.rings is None:
            return
        if not isinstance(self.rings, dict) or not self.rings:
            raise RPGConfigError(
                f"rings must be None or a non-empty dict of ring name -> module pattern, got {_describe(self.rings)}"
            )
        checked = {}
        for name, pattern in self.rings.items():
            if not isinstance(name, str) or not RING_NAME_PATTERN.fullmatch(name):
                raise RPGConfigError(
                    f"rings: ring name {name!r} must be 1-64 characters of letters, digits, '_' or '-'"
                )
            checked[name] = _check_pattern(f"rings[{name!r}]", pattern, allow_none=False)
        self.rings = checked

    def _validate_rank(self) -> None:
        self.rank = _plain_number(self.rank)
        if self.rank is None:
            return
        if self.rank != "auto" and (isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1):
            raise RPGConfigError(
                f"rank must be a positive int, 'auto' or None (full-rank updates), got {_describe(self.rank)}"
            )
        if not self.is_delta and self.rank != "auto":
            raise RPGConfigError(
                f"rank={self.rank} applies to mode='delta' (a low-rank update of frozen weights); "
                "mode='replace' generates whole weights: use rank=None"
            )

    def _validate_update(self) -> None:
        self._check_choice("update", self.update, UPDATES)
        if not self.is_delta and self.update not in ("auto", "full"):
            raise RPGConfigError(
                f"update={self.update!r} applies to mode='delta' (an update of frozen weights); mode='replace' "
                "generates whole weights: use update='auto' or 'full'"
            )
        if self.update == "full" and (self.rank is not None or self.rank_pattern is not None):
            what = f"rank={self.rank!r}" if self.rank is not None else "rank_pattern"
            raise RPGConfigError(
                f"{what} asks for low-rank updates but update='full'; use update='lowrank' or 'lora' "
                "with a rank, or rank=None and rank_pattern=None for full-rank updates"
            )
        if self.update == "lora" and self.rank == "auto":
            raise RPGConfigError(
                "rank='auto' grows rpg-lowrank-v1's rank with the ring (update='lowrank'); update='lora' takes an "
                f"int rank, or None for {LORA_RANK}"
            )

    @property
    def resolved_update(self) -> str:
        """``update`` with ``"auto"`` decided: ``"full"``, ``"lowrank"`` or ``"lora"``."""
        if self.update != "auto":
            return self.update
        if not self.is_delta:
            return "full"
        if self.rank is not None or self.rank_pattern is not None:
            return "lowrank"
        if isinstance(self.dof, int) and self.dof <= AUTO_LORA_MAX_DOF:
            return "lora"
        return "full"

    @property
    def resolved_rank(self) -> int | Literal["auto"] | None:
        """The rank of linear layers' updates under ``resolved_update`` (None: full rank)."""
        update = self.resolved_update
        if update == "full":
            return None
        if self.rank is not None:
            return self.rank
        if self.update == "auto" and update == "lowrank":  # rank_pattern alone: other layers stay full rank
            return None
        return LORA_RANK if update == "lora" else "auto"

    def _validate_layers(self) -> None:
        layers = self.layers_to_transform
        if layers is not None:
            items = layers if isinstance(layers, (list, tuple)) else [layers]
            items = [_plain_number(i) for i in items]
            if not items or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in items):
                raise RPGConfigError(
                    "layers_to_transform must be a layer number (an int >= 0), a non-empty list of them, or None; "
                    f"got {_describe(layers)}"
                )
            self.layers_to_transform = list(items) if isinstance(layers, (list, tuple)) else items[0]
            if isinstance(self.target_modules, str) and self.target_modules not in ("all", "all-linear"):
                raise RPGConfigError(
                    f"layers_to_transform={self.layers_to_transform!r} needs target_modules as a list of names, "
                    f"None, 'all' or 'all-linear', got the regex {self.target_modules!r}: name the layers in the "
                    "regex itself instead"
                )
        if self.layers_pattern is not None:
            self.layers_pattern = _check_pattern("layers_pattern", self.layers_pattern)
            if layers is None:
                raise RPGConfigError(
                    f"layers_pattern={self.layers_pattern!r} is used only with layers_to_transform, which is None"
                )

    def _validate_rank_pattern(self) -> None:
        pattern = self.rank_pattern
        if pattern is None:
            return
        if not isinstance(pattern, dict) or not pattern:
            raise RPGConfigError(
                f"rank_pattern must be None or a non-empty dict of module-name pattern -> rank (a positive int), "
                f"got {_describe(pattern)}"
            )
        checked = {}
        for key, rank in pattern.items():
            if not isinstance(key, str) or not key:
                raise RPGConfigError(f"rank_pattern keys must be non-empty module-name patterns, got {_describe(key)}")
            try:
                re.compile(key)
            except (re.error, RecursionError, OverflowError) as err:
                raise RPGConfigError(f"rank_pattern key {key!r} is not a valid regular expression: {err}") from None
            rank = _plain_number(rank)
            if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
                raise RPGConfigError(f"rank_pattern[{key!r}] must be a positive int (a rank), got {_describe(rank)}")
            checked[key] = rank
        if self.mode != "delta":
            raise RPGConfigError(
                f"rank_pattern={pattern!r} applies to mode='delta' (low-rank updates); mode='replace' generates "
                "whole weights: use rank_pattern=None"
            )
        self.rank_pattern = checked

    def _validate_gain(self) -> None:
        gain = self.gain
        if isinstance(gain, str):
            self._check_choice("gain", gain, GAINS)
        elif (
            isinstance(gain, bool)
            or not isinstance(gain, (int, float))
            # math.isfinite(int) converts to float, which overflows for ints past ~1e308
            or (isinstance(gain, int) and not 0 < gain <= 2**64)
            or (isinstance(gain, float) and not (math.isfinite(gain) and gain > 0))
        ):
            raise RPGConfigError(
                f"gain must be one of {', '.join(map(repr, GAINS))} or a positive finite float, got {_describe(gain)}"
            )
        elif gain > MAX_GAIN:
            # finite as a Python float, but weights (or updates) this large overflow float32 in a forward
            raise RPGConfigError(
                f"gain={gain!r} is too large: a float gain must be in (0, {MAX_GAIN:g}] (it scales the generated "
                "weights, or multiplies the update in delta mode); larger values overflow float32 and give inf/NaN"
            )
        elif isinstance(gain, int):
            self.gain = float(gain)

    @property
    def peft_type(self) -> Any:
        """Not a PEFT method: PEFT's ``get_peft_model`` reads this and gets a clear error naming
        ``apply_rpg`` (``hf_rpg.peft_integration`` says why)."""
        from .peft_integration import not_a_peft_config

        raise not_a_peft_config()

    @property
    def torch_ring_dtype(self):
        """``ring_dtype`` as a ``torch.dtype``."""
        import torch

        return getattr(torch, self.ring_dtype)

    @property
    def is_delta(self) -> bool:
        """Delta mode: the pretrained weights stay and an update is generated. (The one place
        outside validation that reads ``mode``: everything else asks this, or the plan.)"""
        return self.mode == "delta"

    @property
    def resolved_other_parameters(self) -> str:
        """``other_parameters`` with its mode-dependent default filled in."""
        if self.other_parameters is not None:
            return self.other_parameters
        return "head" if self.is_delta else "train"

    # ---------------------------------------------------------------- JSON round trip

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-serialisable dict (keys in declaration order)."""
        data = asdict(self)
        data.pop("_extra")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RPGConfig:
        """Build a config from ``to_dict`` output; unknown keys warn and are kept aside."""
        if not isinstance(data, dict):
            raise RPGConfigError(f"an RPGConfig must be read from a JSON object, got {_describe(data)}")
        known = {f.name for f in fields(cls) if not f.name.startswith("_")}
        unknown = {k: v for k, v in data.items() if k not in known}
        if unknown:
            warnings.warn(
                f"RPGConfig: ignoring unknown keys {sorted(unknown)} (written by a newer hf_rpg?)",
                stacklevel=2,
            )
        config = cls(**{k: v for k, v in data.items() if k in known})
        config._extra = unknown
        return config

    def to_json_string(self) -> str:
        """The config as indented JSON text."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    def to_json_file(self, path: str | Path) -> None:
        """Write ``to_json_string()`` to ``path``."""
        Path(path).write_text(self.to_json_string(), encoding="utf-8")

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | Path, **hub_kwargs: Any) -> RPGConfig:
        """The config of a checkpoint written by ``RPGModel.save_pretrained``: a local
        directory or a Hub repo id (PEFT's ``PeftConfig.from_pretrained``). ``hub_kwargs``:
        ``revision``, ``cache_dir``, ``token``, ``local_files_only``, ``force_download``."""
        # hf_rpg.api.checkpoint imports this module: the file is read and checked here directly
        from ..format.files import CONFIG_NAME, WEIGHTS_NAME
        from ..format.hub_resolve import resolve_checkpoint_files
        from ..format.metadata import check_metadata

        files = resolve_checkpoint_files(path_or_repo_id, **hub_kwargs)
        try:
            data = json.loads(files[CONFIG_NAME].read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as err:
            raise RPGConfigError(f"{files[CONFIG_NAME]} is not a readable JSON file: {err}") from None
        meta = check_metadata(data, str(files[CONFIG_NAME]), weights_name=WEIGHTS_NAME)
        try:
            return cls.from_dict(meta["config"])
        except RPGConfigError as err:
            raise RPGConfigError(f"{files[CONFIG_NAME]}: 'config': {err}") from None

    @classmethod
    def from_json_file(cls, path: str | Path) -> RPGConfig:
        """Read a config written by ``to_json_file`` (unknown keys warn, bad values raise)."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (ValueError, RecursionError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise RPGConfigError(f"{path} is not valid JSON: {err}") from None
        return cls.from_dict(data)
