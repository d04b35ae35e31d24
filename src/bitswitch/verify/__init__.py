"""``bitswitch verify-gguf``: the exported GGUF run in llama.cpp against bitswitch's fake quantization.

``stats.py``: the pure maths (answer agreement, paired differences and their standard errors,
relative differences, the GGUF block formats' bits per weight and theoretical sizes, the goals);
``config.py``: :class:`VerifyConfig`; ``export_check.py``: does an export match the profile and
adapters it is compared at; ``llama_side.py``: greedy answers, perplexity and decode speed in
llama.cpp under bitswitch's rules; ``runner.py``: :func:`verify_gguf` and :func:`compare`, both sides
on the same inputs, and the JSON + markdown report.
"""
