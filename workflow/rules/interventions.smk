# Early phase II (interventions block): Tr(H) of the weights a run kept along training
# (Figs. 6, 13, 14, 21; the figures themselves: the figure rule, report.smk). The runs
# themselves are the plan's (families late_fp, two_phase, hessian_along, alpha_sweep),
# trained by the one train rule.
from fisherlab.plan import interventions


SNAPSHOT_RUNS = [r.id for r in interventions.snapshot_runs(list(PLAN.runs.values()))]


rule trace_hessian_snapshots:
    # Tr(H) (Hutchinson, Supplement B) of each weights file in the run's snapshots/ folder:
    # epoch<E>.pt of its keep_epochs and best.pt (keep_best); the files are not declared
    # outputs of the run, which writes them while it trains
    input:
        unpack(lambda wc: PLAN.inputs(wc.run)),
        summary=RUN.summary,
    output:
        RUN.hessian_snapshots,
    wildcard_constraints:
        run="|".join(map(re.escape, SNAPSHOT_RUNS)) or "(?!)",
    params:
        spec=lambda wc: PLAN.run(wc.run).to_dict(),
        hessian=config["hessian"],
        snapshots=True,  # Tr(H) of each kept weights file
        device=config["device"],
    log:
        RUN.file(RunDir.HESSIAN_SNAPSHOTS_LOG),
    benchmark:
        RUN.file(RunDir.HESSIAN_SNAPSHOTS_BENCHMARK)
    threads: config["threads"]
    resources:
        runtime=lambda wc, attempt: (20 + 5 * len(PLAN.run(wc.run).train.get("keep_epochs", []))) * 2 ** (attempt - 1),
        mem_mb=RUN_MEM,
        **SLURM_GPU,
    conda:
        "../../envs/fisherlab.yaml"
    script:
        "../scripts/trace_hessian.py"
