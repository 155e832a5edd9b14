"""What the pipeline refuses, or makes harmless, in its config before any job runs.

The JSON schema (workflow/schemas/config.schema.yaml) types and bounds every key; four
things it cannot say, this module does (workflow/rules/common.smk and the Snakefile call
it; pure Python, no torch, no Snakemake):

- :func:`check_finite`: NaN and infinity pass ``minimum``/``maximum`` (every comparison
  with NaN is false), so a ``weight_decay: .nan`` would train and be recorded as
  diverged. Every float of the config must be finite, wherever it is.
- :func:`refuse_yte`: a config file whose top level holds ``__use_yte__`` is a YTE
  template, and Snakemake evaluates its Python expressions when it loads it.
- :func:`check_renamed`: a key that was renamed (``hessian.queries`` is now
  ``hessian.num_probes``, ``hessian.probes`` is ``hessian.distribution``;
  :data:`fisherlab.hessian.RENAMED`) is named with its new name, before the schema would
  call it merely unexpected (or, for ``probes: 4``, not a distribution).
- :func:`plain_text_rst`: the ``report_notes`` are spliced into the reST captions of
  ``snakemake --report``; escaped, they render as their own text, never as directives
  (``include``, ``raw``), roles, substitutions or hyperlink targets.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any


class ConfigError(ValueError):
    """A config value the pipeline refuses; the message names each offending key."""


def _key_path(parts: tuple) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(parts))


def non_finite(config: Any, _at: tuple = ()) -> Iterator[tuple[str, float]]:
    """(key path, value) of every float in ``config`` (nested mappings and lists) that is
    NaN or infinite, e.g. ``("settings.demo_digits.weight_decay", nan)`` or
    ``("sweeps.settings.s.lr[1]", inf)``."""
    if isinstance(config, float):
        if not math.isfinite(config):
            yield _key_path(_at), config
    elif isinstance(config, Mapping):
        for k, v in config.items():
            yield from non_finite(v, (*_at, k))
    elif isinstance(config, (list, tuple)):
        for i, v in enumerate(config):
            yield from non_finite(v, (*_at, i))


def check_finite(config: Any) -> None:
    """Raise :class:`ConfigError` naming every key of ``config`` that holds NaN or an
    infinity (``settings.x.weight_decay: nan is not a finite number``). Applies wherever a
    number is expected, and beyond: no key of the config means anything with NaN or inf."""
    bad = list(non_finite(config))
    if bad:
        raise ConfigError("; ".join(f"{path}: {value} is not a finite number" for path, value in bad))


def check_renamed(config: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigError` naming each renamed key that ``config`` still holds and
    its new name (:data:`fisherlab.hessian.RENAMED`), e.g. ``hessian.probes was renamed
    hessian.distribution``."""
    from .hessian.spec import refuse_renamed

    try:
        refuse_renamed(config)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def validate_config(config: dict, schema: str | os.PathLike) -> None:
    """Validate the pipeline config as ``workflow/rules/common.smk`` does: first
    :func:`check_finite` (so that NaN and infinity are named as such, whatever the schema
    says of the key) and :func:`check_renamed`, then the JSON schema with its defaults
    filled in (Snakemake's ``validate``; a schema error is its ``WorkflowError``). Raises
    :class:`ConfigError`."""
    from snakemake.utils import validate

    check_finite(config)
    check_renamed(config)
    validate(config, os.fspath(schema), set_default=True)


def uses_yte(path: str | os.PathLike) -> bool:
    """Whether the config file at ``path`` asks Snakemake to evaluate it as a YTE template
    (a top-level ``__use_yte__`` key, in YAML or in JSON). Read with ``yaml.safe_load``,
    which runs nothing; a file that is not valid YAML counts as one when its text holds
    ``__use_yte__`` anywhere."""
    import yaml

    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        doc = json.loads(text)
    except ValueError:
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError:
            return "__use_yte__" in text
    return isinstance(doc, Mapping) and "__use_yte__" in doc


def refuse_yte(paths: Iterable[str | os.PathLike]) -> None:
    """Raise :class:`ConfigError` if any existing config file of ``paths`` is a YTE
    template (:func:`uses_yte`); missing paths are Snakemake's to report."""
    bad = [os.fspath(p) for p in paths if os.path.isfile(p) and uses_yte(p)]
    if bad:
        raise ConfigError(
            f"config file(s) {', '.join(bad)} hold __use_yte__: a YTE template, whose Python expressions "
            "Snakemake evaluates when it loads the file. This pipeline refuses YTE configs; write plain "
            "YAML values. (An overlay given with --configfile was evaluated by Snakemake's command line "
            "before this check could run: read shared overlays before using them.)"
        )


_RST_SPECIAL = re.compile(r"([!-/:-@\[-`{-~])")  # every printable ASCII character but letters and digits


def plain_text_rst(text: str) -> str:
    """``text`` as reStructuredText that renders as exactly that text: every ASCII
    punctuation character is backslash-escaped (reST: a backslash makes the next character
    literal), so ``.. include::``, ``.. raw::``, ``:role:``, ``|sub|``, ``_target`` and
    ``<tags>`` are shown, not interpreted (the HTML writer escapes ``<`` as ``&lt;``).
    Each line is stripped of its leading blanks (no block quotes or literal blocks)."""
    if not isinstance(text, str):
        raise TypeError(f"a report note must be a string, got {type(text).__name__}")
    lines = [_RST_SPECIAL.sub(r"\\\1", line.lstrip()) for line in text.splitlines()]
    return "\n".join(lines)


def plain_text_notes(notes: Mapping[str, str]) -> dict[str, str]:
    """The ``report_notes`` mapping with each note made plain reST (:func:`plain_text_rst`)."""
    return {name: plain_text_rst(note) for name, note in notes.items()}
