"""Analysis: the D_T fit per source, its figures, and the answer that opens the report."""


rule fit:
    input:
        f"{RESULTS}/runs.csv",
    output:
        fit=report(f"{RESULTS}/fit/transfer_fit.json", category="Fit", caption="../report/fit.rst"),
        points=report(f"{RESULTS}/fit/points.csv", category="Fit", caption="../report/points.rst"),
    params:
        tolerance=config["fit"]["tolerance"],
        low_data_fraction=config["fit"]["low_data_fraction"],
        n_bootstrap=config["fit"]["bootstrap"],
        seed=config["seed"],
    log:
        f"{LOGS}/fit.log",
    benchmark:
        f"{BENCHMARKS}/fit.tsv"
    conda:
        "../../envs/transfer-scaling.yaml"
    script:
        "../scripts/fit.py"


rule figures:
    input:
        runs=f"{RESULTS}/runs.csv",
        fit=f"{RESULTS}/fit/transfer_fit.json",
    output:
        report(
            directory(f"{RESULTS}/figures"),
            patterns=["{name}.png"],
            category="Figures",
            caption="../report/figures.rst",
        ),
    log:
        f"{LOGS}/figures.log",
    conda:
        "../../envs/transfer-scaling.yaml"
    script:
        "../scripts/figures.py"


rule answer:
    input:
        fit=f"{RESULTS}/fit/transfer_fit.json",
        figures=f"{RESULTS}/figures",
    output:
        report(f"{RESULTS}/fit/answer.rst", category="Answer", caption="../report/answer.rst"),
    params:
        target=TARGET,
    log:
        f"{LOGS}/answer.log",
    conda:
        "../../envs/transfer-scaling.yaml"
    script:
        "../scripts/answer.py"
