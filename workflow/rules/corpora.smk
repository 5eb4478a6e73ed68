"""Corpora: pinned package files -> cleaned, deduplicated documents split by hash -> token arrays.

Documents and token arrays are cacheable: a second study with the same corpus settings takes them from
Snakemake's output cache (``--cache`` with $SNAKEMAKE_OUTPUT_CACHE) instead of rebuilding them.
"""


rule corpus_documents:
    input:
        unpack(corpus_inputs),
    output:
        documents=directory(f"{RESULTS}/corpora/{{corpus}}/documents"),
        meta=f"{RESULTS}/corpora/{{corpus}}/documents.json",
    params:
        spec=corpus_params,
        splits=config["splits"],
        download_dir=str(SHARED_DOWNLOADS),
        cache_dir=str(SHARED_DATASETS_CACHE),
    log:
        f"{LOGS}/corpus_documents/{{corpus}}.log",
    resources:
        mem_mb=4000,
        runtime=30,
    cache: True
    conda:
        "../../envs/transfer-scaling.yaml"
    script:
        "../scripts/corpus_documents.py"


rule tokenizer:
    input:
        tokenizer_inputs,
    output:
        TOKENIZER,
    params:
        spec=config["tokenizer"],
    log:
        f"{LOGS}/tokenizer.log",
    benchmark:
        f"{BENCHMARKS}/tokenizer.tsv"
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../../envs/transfer-scaling.yaml"
    script:
        "../scripts/tokenizer.py"


rule tokenize:
    input:
        documents=documents_dir("{corpus}"),
        tokenizer=TOKENIZER,
    output:
        train=tokens_file("{corpus}", "train"),
        train_meta=f"{RESULTS}/corpora/{{corpus}}/tokens/train.json",
        validation=tokens_file("{corpus}", "validation"),
        validation_meta=f"{RESULTS}/corpora/{{corpus}}/tokens/validation.json",
        test=tokens_file("{corpus}", "test"),
        test_meta=f"{RESULTS}/corpora/{{corpus}}/tokens/test.json",
    log:
        f"{LOGS}/tokenize/{{corpus}}.log",
    resources:
        mem_mb=4000,
        runtime=30,
    cache: True
    conda:
        "../../envs/transfer-scaling.yaml"
    script:
        "../scripts/tokenize.py"


rule subset:
    input:
        documents=documents_dir("{corpus}"),
        tokenizer=TOKENIZER,
    output:
        tokens=subset_file("{corpus}", "{chars}", "{seed}"),
        meta=subset_file("{corpus}", "{chars}", "{seed}").removesuffix(".bin") + ".json",
    params:
        seed="{seed}",
        chunk_chars=config["subsets"]["chunk_chars"],
    log:
        f"{LOGS}/subset/{{corpus}}/seed{{seed}}/{{chars}}.log",
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/transfer-scaling.yaml"
    script:
        "../scripts/subset.py"
