"""Analysis: the D_T fit per source, its figures, and the answer that opens the report."""


rule fit:
    input:
        RUNS_TABLE,
    output:
        fit=report(str(FIT.fit), category="Fit", caption="../report/fit.rst"),
        points=report(str(FIT.points), category="Fit", caption="../report/points.rst"),
        bootstrap=str(FIT.bootstrap),
    params:
        fit=config["fit"],
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
        runs=RUNS_TABLE,
        fit=str(FIT.fit),
        bootstrap=str(FIT.bootstrap),
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
        fit=str(FIT.fit),
        figures=f"{RESULTS}/figures",
    output:
        report(str(FIT.answer), category="Answer", caption="../report/answer.rst"),
    params:
        target=TARGET,
    log:
        f"{LOGS}/answer.log",
    conda:
        "../../envs/transfer-scaling.yaml"
    script:
        "../scripts/answer.py"
