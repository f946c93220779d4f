"""The user API, the Hugging Face glue at the edge.

``RPGConfig`` and target matching, ``apply_rpg`` / ``RPGModel``, saving and loading, the
``RPGTrainer``, the Hub, ring pruning and the ``hf-rpg`` command line. Builds on the three
layers below (``hf_rpg.spec``, ``hf_rpg.format``, ``hf_rpg.runtime``); nothing below imports
it. The public names are re-exported by ``hf_rpg`` itself.
"""
