"""Reproducible experiments: YAML files of bitswitch steps (:mod:`.spec`), a runner that skips and
resumes them (:mod:`.runner`), and the markdown report assembled from their results
(:mod:`.report`, with per-kind sections registered in :mod:`.sections`)."""
