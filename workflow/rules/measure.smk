# Tr(H) of each final run at the end of training (Hutchinson, M probes; Supplement B).


rule trace_hessian:
    input:
        unpack(dataset_files),
        model=f"{RUN}/final/{{role}}/seed{{seed}}/model.pt",
        summary=f"{RUN}/final/{{role}}/seed{{seed}}/summary.json",
    output:
        f"{RUN}/final/{{role}}/seed{{seed}}/hessian.json",
    params:
        setting=setting,
        probes=config["hessian"]["probes"],
        examples=config["hessian"]["examples"],
        device=config["device"],
    log:
        f"{RUN}/final/{{role}}/seed{{seed}}/hessian.log",
    benchmark:
        f"{RUN}/final/{{role}}/seed{{seed}}/hessian-benchmark.tsv"
    threads: config["threads"]
    resources:
        runtime=lambda wc, attempt: 30 * 2 ** (attempt - 1),
        mem_mb=TRAIN_MEM,
        **SLURM_GPU,
    conda:
        "../../envs/fisherlab.yaml"
    script:
        "../scripts/trace_hessian.py"
