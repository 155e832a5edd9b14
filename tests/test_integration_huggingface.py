"""fisherlab.integrations.huggingface against the real transformers (no mocks, no
download): a tiny BERT classifier built from a config, trained a few steps by the real
Trainer; the callback's Tr(F) lands in trainer.state.log_history at the scheduled steps,
and the last value equals a brute-force per-example loop on the final weights."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate (transformers[torch])")
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainerCallback, TrainingArguments  # noqa: E402

from fisherlab.integrations.huggingface import FisherTraceCallback  # noqa: E402

N, LENGTH, VOCAB, CLASSES = 16, 8, 50, 3


def _tokens(seed: int, n: int = N) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, LENGTH), generator=g)
    lengths = torch.randint(3, LENGTH + 1, (n,), generator=g)
    mask = (torch.arange(LENGTH)[None] < lengths[:, None]).long()
    return {"input_ids": ids * mask, "attention_mask": mask, "labels": torch.randint(0, CLASSES, (n,), generator=g)}


def _model():
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=16, max_position_embeddings=LENGTH, num_labels=CLASSES)  # fmt: skip
    return BertForSequenceClassification(cfg)


def _brute_force_trace_fisher(model, probe, seed):
    """(1/N) sum_i ||grad_theta CE(f(x_i), yhat_i)||^2, one example at a time, yhat drawn as
    trace_fisher draws it (one multinomial over the chunk's softmax, generator seeded)."""
    model.eval()
    with torch.no_grad():
        logits = model(**probe).logits
    yhat = torch.multinomial(logits.softmax(-1), 1, generator=torch.Generator().manual_seed(seed)).squeeze(1)
    params = [p for p in model.parameters() if p.requires_grad]
    total = 0.0
    for i in range(len(yhat)):
        out = model(**{k: v[i : i + 1] for k, v in probe.items()}).logits
        grads = torch.autograd.grad(F.cross_entropy(out, yhat[i : i + 1]), params, allow_unused=True)
        total += sum(g.pow(2).sum().item() for g in grads if g is not None)
    return total / len(yhat)


class LogsSeen(TrainerCallback):
    """What a reporter (e.g. TensorBoard) placed after the fisherlab callback receives."""

    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs))


def test_callback_values_land_in_log_history_and_equal_a_brute_force_loop(tmp_path):
    probe = {k: v for k, v in _tokens(7, 12).items() if k != "labels"}
    cb = FisherTraceCallback(_tokens(7, 12), every_n_steps=2, batch_trace=True, seed=3)  # labels dropped
    seen = LogsSeen()
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=4,
                             learning_rate=0.05, report_to=[], use_cpu=True, logging_steps=100,
                             save_strategy="no", disable_tqdm=True, seed=0)  # fmt: skip
    rows = torch.utils.data.StackDataset(**_tokens(1))  # row i: {k: v[i]}
    trainer = Trainer(model=_model(), args=args, train_dataset=rows, callbacks=[seen])
    cb.attach(trainer)
    trainer.train()
    rows = [r for r in trainer.state.log_history if "trace_fisher" in r]
    assert [r["step"] for r in rows] == [0, 2, 4]
    assert all(math.isfinite(r["trace_fisher"]) and r["trace_fisher"] > 0 for r in rows)
    assert all(math.isfinite(r["trace_fisher_batch"]) and r["trace_fisher_batch"] > 0 for r in rows)
    # the reporters after it saw the values of steps 2 and 4 in their logs
    assert [s["trace_fisher"] for s in seen.logs if "trace_fisher" in s] == [r["trace_fisher"] for r in rows[1:]]
    expected = _brute_force_trace_fisher(trainer.model, probe, 3 * 1_000_003 + 4)
    assert rows[-1]["trace_fisher"] == pytest.approx(expected, rel=1e-4)


def test_a_model_output_without_logits_needs_output_fn():
    with pytest.raises(TypeError, match="output_fn"):
        from fisherlab.integrations.meter import logits_of

        logits_of((torch.zeros(2, 3),))
