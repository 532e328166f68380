"""Classical XC functionals in Torch (being written)."""
