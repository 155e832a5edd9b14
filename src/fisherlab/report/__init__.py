"""The report layer: pure functions from run outputs to the paper's tables and figures,
one module per job. Nothing here trains, schedules or knows about Snakemake.

- :mod:`~fisherlab.report.summaries`: run summaries into frames;
- :mod:`~fisherlab.report.runcheck`: what a value read from a run file may be;
- η* and α* on the validation split: :mod:`fisherlab.runs.selection` (re-exported here);
- :mod:`~fisherlab.report.tables`: Tables 1-9, CSV and Markdown;
- :mod:`~fisherlab.report.figures`: Figs. 4, 5, 10, 11, 12;
- :mod:`~fisherlab.report.interventions`: Figs. 3, 6, 13, 14, 16, 17, 20, 21;
- :mod:`~fisherlab.report.paper`: the paper's published Tables 1-9 beside ours.
- :mod:`~fisherlab.report.registry`: every figure (Figs. 1-21) as one entry (its runs, the
  points it draws, its drawing), served by the pipeline's one ``figure`` rule.
"""

from .figures import NoisyRun, fig4, fig5, fig12
from . import interventions, paper
from .interventions import fig3, fig14, fig21
from .paper import claim_directions, comparison_markdown, paper_comparison
from ..runs.selection import NoFinishedRun, choose, select
from .runcheck import RunFileError
from .summaries import hessian_table, load_summaries, read_curvature, read_hessian, read_metrics, read_run
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
    "claim_directions",
    "comparison_markdown",
    "fig3",
    "fig4",
    "fig5",
    "fig12",
    "fig14",
    "fig21",
    "interventions",
    "load_summaries",
    "noisy_table",
    "paper",
    "paper_comparison",
    "read_run",
    "read_metrics",
    "read_curvature",
    "read_hessian",
    "hessian_table",
    "RunFileError",
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
