"""Preparation steps on a plain transformers model before it is made switchable: rotations now
(:func:`rotate_model`), each an in-place rewrite that keeps the model's floating-point function,
saved as a standard Hugging Face directory (:func:`save_prepared`) that every command loads."""
