"""The per-step progress bar of train (fisherlab.training.progress, real tqdm): none when stderr is
not a terminal (a log file, pytest's capture), drawn when forced; the log stays one line
per epoch either way."""

from __future__ import annotations

import io
import re
import sys

import pytest

from fisherlab import train
from fisherlab.training.progress import StepProgress
from test_tracking import config, data  # noqa: F401  (data: a fixture)


def test_no_bar_when_stderr_is_not_a_terminal_and_a_bar_when_forced(capsys, data):
    lines = []
    train(config(epochs=1), data, log=lines.append)
    captured = capsys.readouterr()
    assert len(lines) == 1 and captured.err == "" and captured.out == ""
    train(config(epochs=1), data, log=lines.append, progress=True)
    err = capsys.readouterr().err
    assert "3/3" in err and "step" in err and "trF=" in err  # steps done/total, the unit, the latest Tr(F)
    assert len(lines) == 2  # the log is untouched by the bar


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_the_bar_follows_its_file_and_redraws_every_few_steps():
    assert not StepProgress(10, file=io.StringIO()).enabled
    out = Terminal()
    bar = StepProgress(100, 20, file=out, every=5)
    assert bar.enabled and "20/100" in out.getvalue()
    bar.to(40, epoch=2)
    text = out.getvalue()
    assert "40/100" in text and "epoch=2" in text
    assert re.search(r"\[\d\d:\d\d<\d\d:\d\d", text)  # elapsed < remaining: the ETA
    logged = []
    bar.wrap(logged.append)("epoch 2 ...")
    assert logged == ["epoch 2 ..."]
    bar.close()
    with pytest.raises(TypeError, match="progress must be"):
        StepProgress(10, enabled="yes")


def test_without_tqdm_a_terminal_gets_no_bar_and_a_forced_bar_says_what_to_install(monkeypatch):
    """The core install (torch, numpy) trains on a terminal: tqdm is in the loggers extra."""
    monkeypatch.setitem(sys.modules, "tqdm", None)  # as if not installed: its import fails
    assert not StepProgress(10, file=Terminal()).enabled
    with pytest.raises(ImportError, match=r"fisherlab\[loggers\]"):
        StepProgress(10, enabled=True, file=Terminal())
