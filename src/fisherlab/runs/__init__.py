"""A run on disk, pure Python (no torch at import): the run directory's layout and its
files (:mod:`.rundir`, one owner per format; :mod:`.runio` writes a trained run's
files; their atomic writes are :mod:`fisherlab.atomic`'s), the run's identity (:mod:`.identity`), the lock
a trainer holds (:mod:`.runlock`) and the selection files of the pipeline
(:mod:`.selection`).

The bottom layer of the package above the library: the training loop, the plan, the
experiment glue and the report import it; it imports none of them (``runio`` names the
trainer's result type for annotations only).
"""
