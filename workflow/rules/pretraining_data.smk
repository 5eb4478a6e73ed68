"""The pretraining-data axis (Isik et al. 2024): fine-tuning from each pretraining snapshot, a downstream
line-completion score besides cross-entropy, and laws over D_p with a check on held-out D_p points."""

DP_RUNS_TABLE = f"{RESULTS}/pretraining_data/runs.csv"


rule downstream_tasks:
    input:
        documents=documents_dir(TARGET),
    output:
        f"{RESULTS}/pretraining_data/tasks.json",
    params:
        n_tasks=config["pretraining_data"]["n_tasks"],
        context_chars=config["pretraining_data"]["context_chars"],
        seed=config["seed"],
    log:
        f"{LOGS}/downstream_tasks.log",
    conda:
        "../../envs/transfer-scaling.yaml"
    script:
        "../scripts/downstream_tasks.py"


rule finetune_snapshot:
    input:
        train=subset_file(TARGET, "{chars}", "{seed}"),
        validation=tokens_file(TARGET, "validation"),
        tokenizer=TOKENIZER,
        init=str(RunLayout(pretrain_dir()).snapshot("{tokens}")),
    output:
        **run_outputs(snapshot_finetune_dir()),
    params:
        run_settings=finetune_settings,
    log:
        f"{LOGS}/finetune_snapshot/{{source}}/{{size}}/p{{tokens}}/d{{chars}}_seed{{seed}}.log",
    benchmark:
        f"{BENCHMARKS}/finetune_snapshot/{{source}}/{{size}}/p{{tokens}}/d{{chars}}_seed{{seed}}.tsv"
    threads: config["training"]["threads"]
    resources:
        **training_resources("finetune"),
    group:
        training_group("finetune")
    conda:
        "../../envs/transfer-scaling.yaml"
    script:
        "../scripts/train.py"


rule downstream:
    input:
        weights=run_file(any_run_dir(), "weights"),
        model=run_file(any_run_dir(), "model"),
        tokenizer=TOKENIZER,
        tasks=f"{RESULTS}/pretraining_data/tasks.json",
    output:
        run_file(any_run_dir(), "downstream"),
    params:
        batch_size=config["pretraining_data"]["batch_size"],
        max_new_tokens=config["pretraining_data"]["max_new_tokens"],
    log:
        f"{LOGS}/downstream/{{run}}.log",
    benchmark:
        f"{BENCHMARKS}/downstream/{{run}}.tsv"
    threads: config["training"]["threads"]
    resources:
        **evaluation_resources(),
    group:
        evaluation_group()
    conda:
        "../../envs/transfer-scaling.yaml"
    script:
        "../scripts/downstream.py"


rule pretraining_data_table:
    input:
        **snapshot_run_records(),
    output:
        report(DP_RUNS_TABLE, category="Pretraining data",
               caption="../report/pretraining_data.rst"),
    params:
        runs=run_names(snapshot_runs(), RUNS),
    log:
        f"{LOGS}/pretraining_data_table.log",
    conda:
        "../../envs/transfer-scaling.yaml"
    script:
        "../scripts/pretraining_data_table.py"


rule pretraining_data_fit:
    input:
        runs=DP_RUNS_TABLE,
        transfer_fit=str(FIT.fit),
    output:
        fit=report(f"{RESULTS}/pretraining_data/dp_fit.json", category="Pretraining data",
                   caption="../report/pretraining_data.rst"),
        figures=report(directory(f"{RESULTS}/pretraining_data/figures"), patterns=["{name}.png"],
                       category="Pretraining data", caption="../report/pretraining_data.rst"),
    params:
        n_fit=config["pretraining_data"]["n_fit"],
    log:
        f"{LOGS}/pretraining_data_fit.log",
    conda:
        "../../envs/transfer-scaling.yaml"
    script:
        "../scripts/pretraining_data_fit.py"
