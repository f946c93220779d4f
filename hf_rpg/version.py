"""The hf_rpg version: a module of its own, so that modules which record it import nothing above them."""

__version__ = "0.2.0"  # 0.2.0: update="auto" is rpg-lora-v1 up to 2,048 ring entries
