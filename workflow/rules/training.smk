"""Training: pretraining per (source, N), fine-tuning over N x D_F, from-scratch baselines over N x D.

All three rules run the same trainer (DeepSpeed); they differ only in their data and initial weights.
Pretraining is cacheable, so studies sharing a source and model settings share its weights (a cached
rule may not have a benchmark: its summary.json records wall time and tokens/s instead).
"""


rule pretrain:
    input:
        train=tokens_file("{source}", "train"),
        validation=tokens_file("{source}", "validation"),
        tokenizer=TOKENIZER,
    output:
        **pretrain_outputs(),
    params:
        run_settings=pretrain_settings,
    log:
        f"{LOGS}/pretrain/{{source}}/{{size}}.log",
    threads: config["training"]["threads"]
    resources:
        **training_resources("pretrain"),
    cache: True
    conda:
        "../../envs/transfer-scaling.yaml"
    script:
        "../scripts/train.py"


rule finetune:
    input:
        train=subset_file(TARGET, "{chars}", "{seed}"),
        validation=tokens_file(TARGET, "validation"),
        tokenizer=TOKENIZER,
        init=run_file(pretrain_dir(), "weights"),
    output:
        **run_outputs(finetune_dir()),
    params:
        run_settings=finetune_settings,
    log:
        f"{LOGS}/finetune/{{source}}/{{size}}/d{{chars}}_seed{{seed}}.log",
    benchmark:
        f"{BENCHMARKS}/finetune/{{source}}/{{size}}/d{{chars}}_seed{{seed}}.tsv"
    threads: config["training"]["threads"]
    resources:
        **training_resources("finetune"),
    group:
        training_group("finetune")
    conda:
        "../../envs/transfer-scaling.yaml"
    script:
        "../scripts/train.py"


rule scratch:
    input:
        train=subset_file(TARGET, "{chars}", "{seed}"),
        validation=tokens_file(TARGET, "validation"),
        tokenizer=TOKENIZER,
    output:
        **run_outputs(scratch_dir()),
    params:
        run_settings=scratch_settings,
    log:
        f"{LOGS}/scratch/{{size}}/d{{chars}}_seed{{seed}}.log",
    benchmark:
        f"{BENCHMARKS}/scratch/{{size}}/d{{chars}}_seed{{seed}}.tsv"
    threads: config["training"]["threads"]
    resources:
        **training_resources("scratch"),
    group:
        training_group("scratch")
    conda:
        "../../envs/transfer-scaling.yaml"
    script:
        "../scripts/train.py"
