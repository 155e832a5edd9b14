"""The training loop and what it is made of (Sections 3-4, Supplement I): the run's
config (:mod:`.train_config`, torch-free), the loop (:mod:`.trainer`), its checkpoint
and resume (:mod:`.checkpoint`), the lr schedule (:mod:`.schedule`), the stop request
of a preemption (:mod:`.preemption`), the per-epoch evaluation (:mod:`.evaluation`,
:mod:`.batchnorm`, :mod:`.memorization`), the summary's measurements (Tr(F_i), max
Tr(F), best epoch: :mod:`.measures`) and the progress bar (:mod:`.progress`).

Depends on the library (curvature, penalties, models, data, tracking) and on
:mod:`fisherlab.runs` for the files it writes; nothing here imports the plan, the
pipeline or the report. This file imports nothing, so ``fisherlab.training.train_config``
imports without torch.
"""
