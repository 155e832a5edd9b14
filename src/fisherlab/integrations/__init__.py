"""Optional integrations with training frameworks: Tr(F) instruments that run on a step
schedule inside someone else's training loop and log beside the loss.

Each submodule needs its framework and is imported explicitly (``import fisherlab``
never imports them):

- :mod:`fisherlab.integrations.lightning`: ``FisherTraceCallback``, a
  ``lightning.pytorch.Callback`` (``pip install lightning``);
- :mod:`fisherlab.integrations.huggingface`: ``FisherTraceCallback``, a
  ``transformers.TrainerCallback`` (``pip install transformers``).

Both measure with :mod:`fisherlab.integrations.meter` (torch only).
"""
