"""The report layer: pure functions from run outputs to the paper's tables and figures,
one module per job. Nothing here trains, schedules or knows about Snakemake.

- :mod:`~fisherlab.report.summaries`: run summaries into frames;
- :mod:`~fisherlab.report.selection`: η* and α* on the validation split;
- :mod:`~fisherlab.report.tables`: Tables 1-9, CSV and Markdown;
- :mod:`~fisherlab.report.figures`: Figs. 4, 5, 10, 11, 12;
- :mod:`~fisherlab.report.interventions`: Figs. 3, 6, 13, 14, 16, 17, 20, 21.
"""

from .figures import NoisyRun, fig4, fig5, fig12
from . import interventions
from .interventions import fig3, fig14, fig21
from .selection import NoFinishedRun, choose, select
from .summaries import load_summaries, read_run
from .tables import (
    DISPLAY_NAMES,
    NOISY_COLUMNS,
    TABLE1_COLUMNS,
    noisy_table,
    results_table,
    table1,
    table2,
    table3,
    table4,
    table5,
    table6,
    table7,
    table8,
    table9,
    to_markdown,
    write_table,
)

__all__ = [
    "DISPLAY_NAMES",
    "NOISY_COLUMNS",
    "NoFinishedRun",
    "NoisyRun",
    "TABLE1_COLUMNS",
    "choose",
    "fig3",
    "fig4",
    "fig5",
    "fig12",
    "fig14",
    "fig21",
    "interventions",
    "load_summaries",
    "noisy_table",
    "read_run",
    "results_table",
    "select",
    "table1",
    "table2",
    "table3",
    "table4",
    "table5",
    "table6",
    "table7",
    "table8",
    "table9",
    "to_markdown",
    "write_table",
]
