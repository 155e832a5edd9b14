# Datasets in the canonical format: <root>/<dataset>/{train,test}.npz.


localrules:
    prepare_cifar,
    prepare_tinyimagenet,
    prepare_synthetic,
    prepare_digits,
    noisy_labels,


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


rule prepare_tinyimagenet:
    # the official zip, downloaded with an MD5 check (a localrule), or the copy config
    # names; box-filtered to 32x32 (fisherlab.data.tinyimagenet)
    output:
        train=f"{config['data']['root']}/tinyimagenet/train.npz",
        test=f"{config['data']['root']}/tinyimagenet/test.npz",
    params:
        source=config["data"]["tinyimagenet"]["source"],
        download_root=f"{config['data']['root']}/downloads",
    log:
        "results/logs/prepare/tinyimagenet.log",
    conda:
        "../../envs/fisherlab.yaml"
    script:
        "../scripts/prepare_tinyimagenet.py"


rule prepare_imagenet:
    # a local ILSVRC2012 copy (no download), downsized like Imagenet32x32; long: a cluster job
    output:
        train=f"{config['data']['root']}/imagenet/train.npz",
        test=f"{config['data']['root']}/imagenet/test.npz",
    params:
        **config["data"]["imagenet"],
    threads: config["data"]["imagenet"]["workers"]
    resources:
        runtime=240,
        mem_mb=32000,
    log:
        "results/logs/prepare/imagenet.log",
    conda:
        "../../envs/fisherlab.yaml"
    script:
        "../scripts/prepare_imagenet.py"


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


rule prepare_digits:
    # scikit-learn's bundled 8x8 handwritten digits (offline), upsampled (fisherlab.data.digits)
    output:
        train=f"{config['data']['root']}/digits/train.npz",
        test=f"{config['data']['root']}/digits/test.npz",
    params:
        **config["data"]["digits"],
    log:
        "results/logs/prepare/digits.log",
    conda:
        "../../envs/fisherlab.yaml"
    script:
        "../scripts/prepare_digits.py"


rule noisy_labels:
    # Section 4.1: exactly a fraction of the training labels replaced by uniform ones,
    # deterministic by seed (fisherlab.data.noise). Cheap: a localrule.
    input:
        train=lambda wc: data_files(config, wc.ndataset)["train"],
    output:
        f"{config['data']['root']}/{{ndataset}}/noise/frac{{noise}}_seed{{seed}}.csv",
    log:
        "results/logs/prepare/{ndataset}_noise{noise}_seed{seed}.log",
    conda:
        "../../envs/fisherlab.yaml"
    script:
        "../scripts/noisy_labels.py"


if miniature.enabled(config):
    # Miniature mode (configs/miniature.yaml): every dataset, built in or data.local, is
    # synthetic data of its shape and class count under the miniature's data root, made
    # here instead of downloaded or read (fisherlab.plan.miniature).

    localrules:
        prepare_miniature,

    ruleorder: prepare_miniature > prepare_cifar
    ruleorder: prepare_miniature > prepare_tinyimagenet
    ruleorder: prepare_miniature > prepare_imagenet
    ruleorder: prepare_miniature > prepare_synthetic
    ruleorder: prepare_miniature > prepare_digits

    rule prepare_miniature:
        output:
            train=f"{config['data']['root']}/{{mdataset}}/train.npz",
            test=f"{config['data']['root']}/{{mdataset}}/test.npz",
        wildcard_constraints:
            mdataset="[a-z0-9_]+",
        params:
            shape=lambda wc: miniature.miniature_shape(config, wc.mdataset),
            n_train=config["miniature"]["examples"],
            n_test=config["miniature"]["test_examples"],
            seed=config["data"]["synthetic"]["seed"],
        log:
            "results/logs/prepare/miniature_{mdataset}.log",
        conda:
            "../../envs/fisherlab.yaml"
        script:
            "../scripts/prepare_miniature.py"
