"""What the demo, the example scripts and the notebooks share, kept apart from the library core.

- ``data``: offline-first loaders of the real data (rt-polarity, Fashion-MNIST, digits,
  all-MiniLM-L6-v2);
- ``demo``: the digits demo behind ``hf-rpg demo`` (tiny models, a training loop).

Nothing in the core (``hf_rpg.*``) imports this package; it imports the core.
"""
