"""``python -m fisherlab``: the ``fisherlab`` command (:mod:`fisherlab.cli`)."""

from __future__ import annotations

from .cli import demo, main

__all__ = ["demo", "main"]

if __name__ == "__main__":
    main()
