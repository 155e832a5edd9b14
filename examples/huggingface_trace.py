"""Tr(F) of a Hugging Face model while the `Trainer` trains it: a tiny BERT classifier
built from a config (no download), with the callback measuring Tr(F) (Eq. 2) on a fixed
probe batch of tokens; the values land in `trainer.state.log_history`.

    python examples/huggingface_trace.py   # about 10 s on a CPU, mostly importing transformers
"""

import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

from fisherlab.integrations.huggingface import FisherTraceCallback


if __name__ == "__main__":
    torch.manual_seed(0)
    ids = torch.randint(1, 100, (64, 12))
    data = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": (ids[:, 0] > 50).long()}
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, num_labels=2)
    model = BertForSequenceClassification(config)
    probe = {k: v[:32] for k, v in data.items() if k != "labels"}  # model(**probe).logits
    callback = FisherTraceCallback(probe, every_n_steps=4)
    args = TrainingArguments("hf_out", max_steps=12, per_device_train_batch_size=16, learning_rate=1e-3,
                             report_to=[], use_cpu=True, save_strategy="no", logging_steps=4)
    trainer = Trainer(model=model, args=args, train_dataset=torch.utils.data.StackDataset(**data))  # row i: {k: v[i]}
    callback.attach(trainer)  # first in the list, so report_to integrations see the values too
    trainer.train()
    for row in trainer.state.log_history:
        if "trace_fisher" in row:
            print(f"step {row['step']:3d}  Tr(F) {row['trace_fisher']:.4g}")
