"""Switchable-precision quantization-aware training: schedules, data, losses, checkpoints, the loop."""
