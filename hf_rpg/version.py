"""The hf_rpg version: a module of its own, so that modules which record it import nothing above them."""

__version__ = "0.1.0"
