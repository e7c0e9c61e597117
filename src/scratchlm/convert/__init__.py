"""Conversion between scratchlm's tensors and other tools' (Hugging Face)."""
