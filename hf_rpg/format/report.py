"""DoF accounting: what is trained, what is stored, and how much smaller than dense it is."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class DoFReport:
    """Sizes of an RPG model, in numbers of parameters (elements).

    Attributes:
        ring_dof: Total size of the ring(s): the DoF of the generated weights.
        rings: Size of each ring.
        generated_elements: Elements of the generated weights (the dense size they stand for).
        other_trainable: Trainable parameters that are not generated (biases, norms, heads).
        trainable: ``ring_dof + other_trainable``: everything the optimizer updates.
        frozen: Frozen parameters (in delta mode, the pretrained weights under the update).
        model_parameters: Size of the equivalent dense model.
        stored_parameters: Parameters a checkpoint stores (rings plus saved non-generated ones).
        mode: ``"replace"`` (the checkpoint is the whole model) or ``"delta"`` (it is an
            update: loading needs the base model too).
    """

    ring_dof: int
    rings: dict[str, int]
    generated_elements: int
    other_trainable: int
    trainable: int
    frozen: int
    model_parameters: int
    stored_parameters: int
    mode: str = "replace"

    @property
    def dof_fraction(self) -> float:
        """Ring DoF as a fraction of the generated (targeted) elements: what ``RPGConfig.dof``
        as a float refers to (``dof=0.25`` gives about 0.25 here)."""
        return self.ring_dof / max(1, self.generated_elements)

    @property
    def ring_fraction(self) -> float:
        """Ring DoF as a fraction of ``all_parameters`` ("ring only" DoF of the paper)."""
        return self.ring_dof / max(1, self.all_parameters)

    @property
    def trainable_fraction(self) -> float:
        """Trainable parameters as a fraction of ``all_parameters`` ("all trainable" DoF): the
        one trainable percentage hf_rpg shows (PEFT's ``trainable%``, the model card, ``hf-rpg info``)."""
        return self.trainable / max(1, self.all_parameters)

    @property
    def compression_ratio(self) -> float:
        """Dense model parameters per stored parameter."""
        return self.model_parameters / max(1, self.stored_parameters)

    def to_dict(self) -> dict:
        """The fields plus the derived fractions and ratio, as a JSON-serialisable dict."""
        data = asdict(self)
        data.pop("mode")  # recorded in the config beside it; every value here is a number
        data.update(
            dof_fraction=self.dof_fraction,
            ring_fraction=self.ring_fraction,
            trainable_fraction=self.trainable_fraction,
            compression_ratio=self.compression_ratio,
        )
        return data

    @property
    def all_parameters(self) -> int:
        """PEFT's "all params": every parameter the model computes with. In delta mode the
        base plus the ring(s), as PEFT counts base plus adapter; in replace mode the dense
        model the ring stands for."""
        return all_parameters(self.model_parameters, self.ring_dof, self.mode)

    def peft_line(self) -> str:
        """PEFT's ``print_trainable_parameters`` line: trainable, all, trainable%."""
        return (
            f"trainable params: {self.trainable:,} || all params: {self.all_parameters:,} || "
            f"trainable%: {trainable_percent(self.trainable_fraction)}"
        )

    def rpg_line(self) -> str:
        """The ring and what a checkpoint holds, in words that fit either mode."""
        ring = (
            f"ring DoF: {self.ring_dof:,} ({percent(self.dof_fraction)} of {self.generated_elements:,} generated, "
            f"{percent(self.ring_fraction)} of all {self.all_parameters:,})"
        )
        if self.mode == "delta":
            stored = (
                f"stored params: {self.stored_parameters:,} (an update: loading also needs the base model's "
                f"{self.frozen:,} frozen parameters)"
            )
        else:
            stored = (
                f"stored params: {self.stored_parameters:,} || "
                f"{size_ratio(self.stored_parameters, self.model_parameters)} the dense model"
            )
        return f"{ring} || {stored}"

    def __str__(self) -> str:
        return f"{self.peft_line()}\n{self.rpg_line()}"


def all_parameters(model_parameters: int, ring_dof: int, mode: str | None) -> int:
    """PEFT's "all params" from a report's numbers (``DoFReport.all_parameters``)."""
    return model_parameters + (ring_dof if mode == "delta" else 0)


def trainable_percent(fraction: float) -> str:
    """The trainable share as PEFT prints it (four decimals, no sign): ``"4.6123"``. The card,
    ``hf-rpg info`` and the demo show this same number, with a ``%``."""
    return f"{100 * fraction:.4f}"


def percent(fraction: float) -> str:
    """A fraction as a percentage that never reads "0.00%" for a small non-zero value:
    two decimals from 1% up, three significant digits below (``"0.00451%"``)."""
    if fraction == 0:
        return "0%"
    value = 100 * fraction
    return f"{value:.2f}%" if abs(value) >= 1 else f"{value:.3g}%"


def size_ratio(size: float, reference: float) -> str:
    """``size`` against ``reference`` in words that cannot be misread: ``"3.4x smaller than"``,
    ``"1.04x larger than"`` (two decimals below 1.1x, so it never reads "1.0x"), or
    ``"as large as"`` when equal."""
    if size <= 0 or reference <= 0:
        raise ValueError(f"sizes must be positive, got {size} and {reference}")
    if size == reference:
        return "as large as"
    ratio = max(size, reference) / min(size, reference)
    word = "smaller" if size < reference else "larger"
    return f"{ratio:.2f}x {word} than" if ratio < 1.1 else f"{ratio:.1f}x {word} than"
