# Datasets in the canonical format: <root>/<dataset>/{train,test}.npz.


localrules:
    prepare_cifar,


rule prepare_cifar:
    # torchvision's download (a localrule: compute nodes often have no internet), or the
    # original python-pickle archive from the folder that config names.
    output:
        train=f"{config['data']['root']}/{{dataset}}/train.npz",
        test=f"{config['data']['root']}/{{dataset}}/test.npz",
    wildcard_constraints:
        dataset="cifar10|cifar100",
    params:
        source=lambda wc: config["data"].get(wc.dataset, {}).get("source"),
        download_root=f"{config['data']['root']}/downloads",
    log:
        "results/logs/prepare/{dataset}.log",
    conda:
        "../../envs/fisherlab.yaml"
    script:
        "../scripts/prepare_cifar.py"


rule prepare_synthetic:
    output:
        train=f"{config['data']['root']}/synthetic/train.npz",
        test=f"{config['data']['root']}/synthetic/test.npz",
    params:
        **config["data"]["synthetic"],
    log:
        "results/logs/prepare/synthetic.log",
    conda:
        "../../envs/fisherlab.yaml"
    script:
        "../scripts/prepare_synthetic.py"
