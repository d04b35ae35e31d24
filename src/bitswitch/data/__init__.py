"""Evaluation data: loaders and prompt builders."""
