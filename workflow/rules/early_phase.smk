# Section 3's early phase: the sweeps' table and figures, and Fig. 1. Cheap: localrules.


localrules:
    early_phase,


EARLY_FIGURES = sweeps.figures(config)  # figure -> the sweeps (or sweep) it draws
FIG1 = config["sweeps"]["figures"]["fig1"]
if FIG1 is not None and FIG1 in fisher_penalty.settings_of(config, 1):
    EARLY_FIGURES["fig1"] = FIG1


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


for _fig, _what in EARLY_FIGURES.items():

    rule:
        name:
            _fig
        localrule: True
        input:
            runs_of("fisher_penalty", setting=_what, role=["eta_star", "baseline"], seed=config["seeds"][0])
            if _fig == "fig1"
            else runs_of("sweeps", sweep=_what),
        output:
            report(f"results/{_fig}.png", caption=f"../report/{_fig}.rst", category="Figures"),
        params:
            figure=_fig,
            what=_what,
        log:
            f"results/logs/report/{_fig}.log",
        conda:
            "../../envs/fisherlab.yaml"
        script:
            "../scripts/report_early_phase.py"
