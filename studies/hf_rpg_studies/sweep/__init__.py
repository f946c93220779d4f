"""DoF sweeps: the paper's studies as a tool (``hf-rpg sweep`` and ``run_sweep``).

A sweep trains one classifier per point — RPG at each DoF and seed, the dense
reference, narrow dense networks with as many parameters as an RPG point trains
(``equal_dof``), and the ablations — and writes into its output directory:

- ``runs.jsonl``: one JSON line per finished run, appended and flushed as each finishes.
  It is what makes a killed sweep resume: on restart every point already there is skipped
  (a line torn by the kill is dropped and that run done again);
- ``results.csv`` and ``results.json``: every run (the JSON also with its loss curve), the
  sweep's settings and the log-linear fit ``accuracy = a + b log10(ring DoF)``;
- ``sweep.png``: accuracy against ring DoF on a log axis (mean and standard deviation over
  seeds, the fit with its R² and slope per decade, the dense reference, the ablations) and,
  with ``equal_dof``, accuracy against trainable parameters (RPG vs narrow dense);
  ``convergence.png``: training loss against steps, RPG at each DoF and dense.

Ablations (study only: the library's ``rpg-v1`` is never changed; these replace the index
cache of a model through ``WeightEngine.set_index_override``):

- ``no_permutation``: position ``p`` reads ring entry ``p mod N`` (the ``rpg-v1`` signs kept);
- ``no_sign``: the ``rpg-v1`` permutation, every sign ``+1``;
- ``plain_tiling``: neither, ``W[p] = g θ[p mod N]`` (the ring tiled over the weights);
- ``local_rings``: ``rpg-v1`` with one ring per stage (ResNet: stem, stage 1, stage 2; ViT:
  patch embedding, layer 0, layer 1) sharing the same total DoF, against the global ring.

Models: ``"resnet"`` and ``"vit"`` are the example networks of ``hf_rpg_studies.demo`` (those of
``examples/train_image_classification.py``), trained from scratch in replace mode on
``digits`` or ``fashion_mnist``; ``"minilm"`` is the pretrained all-MiniLM-L6-v2 fine-tuned on
``rt_polarity`` in delta mode (as ``examples/finetune_text_classification.py``; the dense
reference is a full fine-tune at ``dense_lr``). ``"module:function"`` is your own factory,
called as ``function(num_labels=..., image_size=...)`` (``image_size`` is None for text; plus
``widths=`` for narrow dense networks), returning a model that takes the dataset's inputs
(``pixel_values``; or ``input_ids``, ``attention_mask``, ``token_type_ids``) and ``labels``
and returns ``.loss`` and ``.logits``, as transformers classifiers do.

The parts: ``config`` (settings, points), ``models`` (each point's model), ``run`` (training,
resuming, the command's options) and ``results`` (the runs file, fit, summary, plots).
"""

from .config import ABLATIONS, Point, SweepConfig, sweep_points
from .results import log_linear_fit
from .run import SweepResult, add_sweep_arguments, config_from_args, print_summary, run_sweep

__all__ = [
    "ABLATIONS",
    "Point",
    "SweepConfig",
    "SweepResult",
    "add_sweep_arguments",
    "config_from_args",
    "log_linear_fit",
    "print_summary",
    "run_sweep",
    "sweep_points",
]
