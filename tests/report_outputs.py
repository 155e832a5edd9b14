"""The outputs that the workflow's rules mark with Snakemake's ``report()``, read from the
rules themselves (not from a generated report):

    python tests/report_outputs.py WORKDIR CONFIGFILE   # JSON: path -> rule, caption, category

Each entry: the rule's name, the caption file (absolute path), the category and
subcategory given to ``report()`` (None where not given: Snakemake files those under
"Other"). Paths are those of the rules for this config, relative to WORKDIR; an output
that the config's DAG does not build is listed too (callers keep the ones that exist).

It loads the Snakefile through Snakemake's API in a subprocess of its own, because the
API changes the working directory and installs its logging.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def report_outputs(workdir: Path, configfile: str) -> dict[str, dict]:
    """{output path: {"rule", "caption", "category", "subcategory"}} for WORKDIR's rules."""
    p = subprocess.run([sys.executable, __file__, str(workdir), configfile],
                       capture_output=True, text=True, timeout=600, check=False)
    if p.returncode != 0:
        raise RuntimeError(f"listing the report() outputs failed:\n{p.stdout[-3000:]}\n"
                           f"{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def _main(workdir: str, configfile: str) -> None:
    from snakemake.api import SnakemakeApi
    from snakemake.io import get_flag_value, is_flagged
    from snakemake.settings.types import (
        ConfigSettings, OutputSettings, ResourceSettings, StorageSettings,
    )

    root = Path(workdir).resolve()
    out = {}
    with SnakemakeApi(OutputSettings()) as api:
        wf = api.workflow(
            resource_settings=ResourceSettings(),
            config_settings=ConfigSettings(configfiles=[root / configfile]),
            storage_settings=StorageSettings(), snakefile=root / "Snakefile", workdir=root,
        )
        for rule in wf._workflow.rules:  # the parsed rules (no DAG is built)
            for f in rule.output:
                if is_flagged(f, "report"):
                    r = get_flag_value(f, "report")
                    entry = {
                        "rule": rule.name,
                        "caption": str(Path(str(r.caption)).resolve()) if r.caption else None,
                        "category": r.category,
                        "subcategory": r.subcategory,
                    }
                    if not f.contains_wildcard():
                        out[str(f)] = entry
                        continue
                    # one rule for many outputs (the {fig} rule): the files on disk that match its pattern,
                    # each with its wildcards filled into the category and subcategory
                    for path in sorted((root / "results").rglob("*")):
                        m = f.regex().fullmatch(rel := path.relative_to(root).as_posix())
                        if m and path.is_file():
                            fill = lambda s: s.format(**m.groupdict()) if s else s  # noqa: E731
                            out[rel] = {**entry, "category": fill(r.category), "subcategory": fill(r.subcategory)}
    print(json.dumps(out))


if __name__ == "__main__":
    _main(*sys.argv[1:3])
