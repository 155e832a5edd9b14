# Tables and figures from the final runs. Cheap: localrules.


localrules:
    tables,
    fig4,
    hessian_table,


rule tables:
    input:
        final_runs("summary.json"),
    output:
        **{
            f"{t}_{ext}": report(f"results/{t}.{ext}", caption=f"../report/{t}.rst", category="Tables")
            for t in ["table1", "table4", "table5", "table6"]
            for ext in ["csv", "md"]
        },
    log:
        "results/logs/report/tables.log",
    conda:
        "../../envs/fisherlab.yaml"
    script:
        "../scripts/report_tables.py"


rule fig4:
    input:
        final_runs("summary.json"),
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
        final_runs("hessian.json"),
    output:
        report("results/hessian.csv", caption="../report/hessian.rst", category="Tables"),
    log:
        "results/logs/report/hessian.log",
    conda:
        "../../envs/fisherlab.yaml"
    script:
        "../scripts/report_hessian.py"
