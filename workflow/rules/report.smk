# Tables and figures from the final runs. Cheap: localrules.


localrules:
    tables,
    tables2,
    fig4,
    hessian_table,


rule tables:
    input:
        final_runs("summary.json", table=1),
    output:
        **{
            f"{t}_{ext}": report(f"results/{t}.{ext}", caption=f"../report/{t}.rst", category="Tables")
            for t in ["table1", "table4", "table5", "table6"]
            for ext in ["csv", "md"]
        },
    params:
        tables=["table1", "table4", "table5", "table6"],
        settings=table_settings(1),
    log:
        "results/logs/report/tables.log",
    conda:
        "../../envs/fisherlab.yaml"
    script:
        "../scripts/report_tables.py"


rule tables2:
    # Table 2 (test accuracy) and Table 7 (final train accuracy): FP at eta*, with augmentation
    input:
        final_runs("summary.json", table=2),
    output:
        **{
            f"{t}_{ext}": report(f"results/{t}.{ext}", caption=f"../report/{t}.rst", category="Tables")
            for t in ["table2", "table7"]
            for ext in ["csv", "md"]
        },
    params:
        tables=["table2", "table7"],
        settings=table_settings(2),
    log:
        "results/logs/report/tables2.log",
    conda:
        "../../envs/fisherlab.yaml"
    script:
        "../scripts/report_tables.py"


rule fig4:
    input:
        final_runs("summary.json", table=1),
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
