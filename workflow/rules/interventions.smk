# Early phase II (interventions block): Tr(H) of the weights a run kept along training
# (Figs. 6, 13, 14, 21), and Figs. 3, 6, 13, 14, 16, 17, 20, 21 with their CSVs. The runs
# themselves are the plan's (families late_fp, two_phase, hessian_along, alpha_sweep),
# trained by the one train rule.
from fisherlab.plan import interventions


INTERVENTION_FIGURES = interventions.figures(config, PLAN)
SNAPSHOT_RUNS = [r.id for r in interventions.snapshot_runs(list(PLAN.runs.values()))]


rule trace_hessian_snapshots:
    # Tr(H) (Hutchinson, Supplement B) of each weights file in the run's snapshots/ folder:
    # epoch<E>.pt of its keep_epochs and best.pt (keep_best); the files are not declared
    # outputs of the run, which writes them while it trains
    input:
        unpack(lambda wc: PLAN.inputs(wc.run)),
        summary=f"{RUNS}/{{run}}/summary.json",
    output:
        f"{RUNS}/{{run}}/{interventions.SNAPSHOT_HESSIAN}",
    wildcard_constraints:
        run="|".join(map(re.escape, SNAPSHOT_RUNS)) or "(?!)",
    params:
        spec=lambda wc: PLAN.run(wc.run).to_dict(),
        hessian=config["hessian"],
        device=config["device"],
    log:
        f"{RUNS}/{{run}}/hessian_snapshots.log",
    benchmark:
        f"{RUNS}/{{run}}/hessian_snapshots-benchmark.tsv"
    threads: config["threads"]
    resources:
        runtime=lambda wc, attempt: (20 + 5 * len(PLAN.run(wc.run).train.get("keep_epochs", []))) * 2 ** (attempt - 1),
        mem_mb=RUN_MEM,
        **SLURM_GPU,
    conda:
        "../../envs/fisherlab.yaml"
    script:
        "../scripts/trace_hessian_snapshots.py"


for _fig in INTERVENTION_FIGURES:

    rule:
        # one figure of the block and its numbers (results/<fig>.csv)
        name:
            _fig
        localrule: True
        input:
            interventions.figure_inputs(config, _fig, PLAN),
        output:
            png=report(f"results/{_fig}.png", caption=f"../report/{_fig}.rst", category="Figures"),
            csv=f"results/{_fig}.csv",
        params:
            figure=_fig,
            kind=interventions.FIGURES[_fig],
            block=config["interventions"][_fig],
            labels=interventions.figure_labels(config, _fig),
        log:
            f"results/logs/report/{_fig}.log",
        conda:
            "../../envs/fisherlab.yaml"
        script:
            # one adapter for every figure: a script path is evaluated when the job runs,
            # after this loop's variable has moved on
            "../scripts/report_interventions.py"
