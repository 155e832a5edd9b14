# Tables and figures from the runs the plan lists. Cheap: localrules.


localrules:
    tables,
    tables2,
    hessian_table,
    noisy_tables,


TABLES = {1: ["table1", "table4", "table5", "table6"], 2: ["table2", "table7"]}
NOISY_TABLES = ["table3", "table8", "table9"]
FIGURES = registry.enabled(config, PLAN)  # the figures this config draws (fisherlab.report.registry)


rule tables:
    input:
        runs_of("fisher_penalty", table=1),
    output:
        **table_outputs(TABLES[1]),
    params:
        tables=TABLES[1],
        settings=fisher_penalty.settings_of(config, 1),
    log:
        "results/logs/report/tables.log",
    conda:
        "../../envs/fisherlab.yaml"
    script:
        "../scripts/report_tables.py"


use rule tables as tables2 with:
    # Table 2 (test accuracy) and Table 7 (final train accuracy): FP at eta*, with augmentation
    input:
        runs_of("fisher_penalty", table=2),
    output:
        **table_outputs(TABLES[2]),
    params:
        tables=TABLES[2],
        settings=fisher_penalty.settings_of(config, 2),
    log:
        "results/logs/report/tables2.log",


rule hessian_table:
    input:
        summaries([r for r in PLAN.runs.values() if r.hessian], RunDir.HESSIAN),
        summaries([r for r in PLAN.runs.values() if r.hessian]),  # read beside each hessian.json
    output:
        report("results/hessian.csv", caption="../report/hessian.rst", category="Tables"),
    log:
        "results/logs/report/hessian.log",
    conda:
        "../../envs/fisherlab.yaml"
    script:
        "../scripts/report_hessian.py"


rule noisy_tables:
    # Table 3 (test accuracy at the best validation epoch), Tables 8-9 (final train
    # accuracy on the clean / noisy examples): the baseline and each selected strength
    input:
        runs_of("noisy", stage="final"),
    output:
        **table_outputs(NOISY_TABLES),
    params:
        fractions=config["noisy"]["fractions"],
        settings=noisy.noisy_settings(config),
    log:
        "results/logs/report/noisy_tables.log",
    conda:
        "../../envs/fisherlab.yaml"
    script:
        "../scripts/report_noisy_tables.py"


rule figure:
    # every figure of the paper (fisherlab.report.registry): results/<fig>.png and the
    # points it draws, results/<fig>.csv; its caption workflow/report/<fig>.rst
    input:
        lambda wc: registry.inputs(wc.fig, config, PLAN),
    output:
        png=report("results/{fig}.png", caption="../report/figure.rst", category="Figures", subcategory="{fig}"),
        csv=report("results/{fig}.csv", caption="../report/figure.rst", category="Figures", subcategory="{fig}"),
    wildcard_constraints:
        fig="|".join(FIGURES) or "(?!)",
    params:
        figure=lambda wc: registry.params(wc.fig, config, PLAN),
        caption=lambda wc: caption_of(wc.fig),
    localrule: True
    log:
        "results/logs/report/{fig}.log",
    conda:
        "../../envs/fisherlab.yaml"
    script:
        "../scripts/report_figure.py"


# The paper's published Tables 1-9 beside the tables this config makes (Table 1/4/5/6 and
# Table 2/7 only when the config has such settings; Tables 3/8/9 always).
PAPER_COMPARED = [t for table, names in TABLES.items() if fisher_penalty.settings_of(config, table) for t in names]
PAPER_COMPARED += NOISY_TABLES


rule paper_comparison:
    input:
        **{t: f"results/{t}.csv" for t in PAPER_COMPARED},
    output:
        md=report("results/paper_comparison.md", caption="../report/paper_comparison.rst", category="Tables"),
        csv=report("results/paper_comparison.csv", caption="../report/paper_comparison.rst", category="Tables"),
        directions="results/paper_directions.csv",
    params:
        note=config["report_notes"].get("paper_comparison", ""),
    localrule: True
    log:
        "results/logs/report/paper_comparison.log",
    conda:
        "../../envs/fisherlab.yaml"
    script:
        "../scripts/report_paper_comparison.py"
