"""The checkpoint on disk: what a saved RPG model is, independently of any model object.

The manifest (which target is generated from which ring, with which shape and gain), the
metadata file and its binding to the weights, the storage encodings of a ring, atomic
directory writes, finding a checkpoint's files (a directory or a Hub repo), the model card
and the DoF report it shows. This layer knows nothing of models: it reads and writes
files, and builds only on ``hf_rpg.spec``.
"""
