"""Evaluation of every run's best checkpoint on the same held-out target test tokens."""


rule evaluate:
    input:
        weights=run_file(any_run_dir(), "weights"),
        model=run_file(any_run_dir(), "model"),
        test=tokens_file(TARGET, "test"),
    output:
        run_file(any_run_dir(), "eval"),
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
        RUNS_TABLE,
    params:
        runs=run_names(all_runs(), RUNS),
    log:
        f"{LOGS}/runs_table.log",
    conda:
        "../../envs/transfer-scaling.yaml"
    script:
        "../scripts/runs_table.py"
