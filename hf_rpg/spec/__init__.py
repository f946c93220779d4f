"""The rpg-v1 specification: how a ring becomes weights.

The generators (``rpg-v1``: a keyed pseudo-random permutation and sign flip of the ring;
``rpg-lowrank-v1``: the same for the factors of a low-rank update) as pure functions of a
key, a shape and a ring, the compact encoding of their indices, and the numba kernels that
compute them inside a gather or scatter. This layer knows nothing of modules, models or
files: everything else in hf_rpg builds on it, it builds on nothing of hf_rpg.
"""
