"""Evaluation of every run's best checkpoint on the same held-out target test tokens."""


rule evaluate:
    input:
        weights=f"{RESULTS}/runs/{{run}}/{WEIGHTS}",
        model=f"{RESULTS}/runs/{{run}}/model.json",
        test=tokens_file(TARGET, "test"),
    output:
        f"{RESULTS}/runs/{{run}}/eval.json",
    params:
        batch_size=config["evaluation"]["batch_size"],
    log:
        f"{LOGS}/evaluate/{{run}}.log",
    benchmark:
        f"{BENCHMARKS}/evaluate/{{run}}.tsv"
    threads: config["training"]["threads"]
    resources:
        **evaluation_resources(),
    group:
        evaluation_group()
    conda:
        "../../envs/transfer-scaling.yaml"
    script:
        "../scripts/evaluate.py"


rule runs_table:
    input:
        **run_records(),
    output:
        f"{RESULTS}/runs.csv",
    params:
        runs=all_runs(),
    log:
        f"{LOGS}/runs_table.log",
    conda:
        "../../envs/transfer-scaling.yaml"
    script:
        "../scripts/runs_table.py"
