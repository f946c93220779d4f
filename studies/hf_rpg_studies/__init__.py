"""Study code of hf_rpg, kept out of the library: what the demo, the sweeps, the example
scripts and the notebooks share.

- ``data``: offline-first loaders of the real data (rt-polarity, Fashion-MNIST, digits,
  all-MiniLM-L6-v2);
- ``demo``: the digits demo behind ``hf-rpg demo`` (tiny models, a training loop);
- ``sweep``: the DoF sweeps behind ``hf-rpg sweep`` (accuracy against DoF, ablations, plots);
- ``threads``: CPU thread settings for the examples.

A distribution of its own (``studies/pyproject.toml``), so that hf_rpg's wheel holds the
library only: ``pip install -e ".[examples]" -e ./studies`` from a checkout.
Nothing in ``hf_rpg`` imports this package, except the ``hf-rpg demo`` and ``hf-rpg sweep``
commands, lazily; it imports the library through its public modules.
"""
