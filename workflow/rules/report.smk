# Tables and figures from the runs the plan lists. Cheap: localrules.


localrules:
    tables,
    tables2,
    fig4,
    hessian_table,
    noisy_tables,


TABLES = {1: ["table1", "table4", "table5", "table6"], 2: ["table2", "table7"]}
NOISY_TABLES = ["table3", "table8", "table9"]
NOISY_FIGURES = noisy.figures(config)  # figure -> the noisy setting it draws


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


rule fig4:
    input:
        runs_of("fisher_penalty", table=1, seed=config["seeds"][0]),
    output:
        report("results/fig4.png", caption="../report/fig4.rst", category="Figures"),
    log:
        "results/logs/report/fig4.log",
    conda:
        "../../envs/fisherlab.yaml"
    script:
        "../scripts/report_fig4.py"


rule hessian_table:
    input:
        summaries([r for r in PLAN.runs.values() if r.hessian], "hessian.json"),
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


for _fig, _setting in NOISY_FIGURES.items():

    rule:
        # Figs. 5 and 11 (FP's strengths and the baseline), Fig. 12 (the clean-noisy
        # gradient cosine): the grid runs at the search seed and the figure's noise
        name:
            _fig
        localrule: True
        input:
            noisy.figure_runs(PLAN, config, _fig),
        output:
            report(f"results/{_fig}.png", caption=f"../report/{_fig}.rst", category="Figures"),
        params:
            setting=_setting,
            figure=_fig,
        log:
            f"results/logs/report/{_fig}.log",
        conda:
            "../../envs/fisherlab.yaml"
        script:
            "../scripts/report_noisy_figure.py"
