"""Specialists: LoRA fine-tuning on the build station, GGUF adapters, classify and extract."""
