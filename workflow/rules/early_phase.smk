# Section 3's early phase: the sweeps' table (its figures: the figure rule, report.smk). Cheap: localrules.


localrules:
    early_phase,


rule early_phase:
    # per sweep point: Tr(F_i), crossing epoch, best test / train accuracy (mean, s.e.m.);
    # per sweep: Spearman and Kendall correlations with bootstrap intervals
    input:
        runs_of("sweeps"),
    output:
        csv=report("results/early_phase.csv", caption="../report/early_phase.rst", category="Tables"),
        md="results/early_phase.md",
    log:
        "results/logs/report/early_phase.log",
    conda:
        "../../envs/fisherlab.yaml"
    script:
        "../scripts/report_early_phase.py"
