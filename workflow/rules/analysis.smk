# Decomposition of each series' loss curve: spectrum p(tau), shared pulse g, reconstruction, power law, figures.


rule analyze:
    input:
        trajectories=trajectory_shards,
        fits=rules.fit_table.output.table,
    output:
        analysis=f"{RESULTS}/series/{{series}}/analysis/analysis.h5",
        summary=f"{RESULTS}/series/{{series}}/analysis/summary.json",
    log:
        f"{RESULTS}/logs/analyze/{{series}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/analyze/{{series}}.tsv"
    conda:
        "../../envs/tokenscale.yaml"
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        analysis=analysis_slice(CFG["analysis"], "analyze"),
    shell:
        "tokenscale analyze --trajectories {input.trajectories:q} --fits {input.fits:q} --run {wildcards.series:q} "
        "--options {params.analysis:q} --analysis {output.analysis:q} --summary {output.summary:q} > {log:q} 2>&1"


# The decomposition's figures, drawn from the analysis file alone: a figure change reruns only this rule.
rule figures:
    input:
        analysis=rules.analyze.output.analysis,
    output:
        figures=report(
            directory(f"{RESULTS}/series/{{series}}/analysis/figures"),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Decomposition",
            subcategory="{series}",
        ),
    log:
        f"{RESULTS}/logs/figures/{{series}}.log",
    conda:
        "../../envs/tokenscale.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        axis_label=series_axis_label,
    shell:
        "tokenscale figures --analysis {input.analysis:q} --run {wildcards.series:q} "
        "--axis-label {params.axis_label:q} --figures {output.figures:q} > {log:q} 2>&1"


# A D or M sweep's frontier (paper Fig. 4/5): which run and checkpoint defines each point, every run's curve with
# the envelope (A), the frontier with its power law (B). Panel C is the series' decomposition above.
rule frontier:
    input:
        manifest=f"{RESULTS}/series/{{series}}/manifest.json",
        curves=frontier_curves,
        trajectories=trajectory_shards,
        summary=rules.analyze.output.summary,
    output:
        table=f"{RESULTS}/series/{{series}}/frontier/frontier.csv",
        figures=report(
            directory(f"{RESULTS}/series/{{series}}/frontier/figures"),
            patterns=["{name}.png"],
            caption="../report/frontier.rst",
            category="Frontiers",
            subcategory="{series}",
        ),
    log:
        f"{RESULTS}/logs/frontier/{{series}}.log",
    conda:
        "../../envs/tokenscale.yaml"
    resources:
        mem_mb=4000,
        runtime=10,
    params:
        options=lambda w: SERIES[w.series].options,
    shell:
        "tokenscale frontier --series {wildcards.series:q} --options {params.options:q} "
        "--manifest {input.manifest:q} --curves {input.curves:q} --trajectories {input.trajectories:q} "
        "--summary {input.summary:q} --table {output.table:q} --figures {output.figures:q} > {log:q} 2>&1"


# Paper App. A.2.3: each validation token's dependency length at the series' last member (a run's final checkpoint,
# a frontier's largest budget or model; exact sliding windows, checked against explicit truncation on a sample);
# analysis.dependency_sequences bounds its cost.
rule dependency:
    input:
        ready=dependency_ready,
        tokens=TOKEN_SETS[VALID_TOKENS].path,
    output:
        dependency=f"{RESULTS}/series/{{series}}/alignment/dependency.h5",
    log:
        f"{RESULTS}/logs/dependency/{{series}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/dependency/{{series}}.tsv"
    conda:
        "../../envs/tokenscale.yaml"
    threads: CFG["threads"]
    resources:
        gpu=stage_gpu("evaluate"),  # runs the series' last checkpoint on eval.device
        gpu_model=stage_gpu_model("evaluate"),
        mem_mb=STAGE_REQUESTS["evaluate"]["mem_mb"],
        runtime=120,
    params:
        checkpoint=dependency_checkpoint,
        max_seqs=lambda w: (
            f"--max-seqs {CFG['analysis']['dependency_sequences']}" if CFG["analysis"]["dependency_sequences"] else ""
        ),
        batch_size=CFG["eval"]["batch_size"],
        device=CFG["eval"]["device"],
    shell:
        "tokenscale dependency --checkpoint {params.checkpoint:q} --tokens {input.tokens:q} --out {output.dependency:q} "
        "{params.max_seqs} --batch-size {params.batch_size} --device {params.device:q} > {log:q} 2>&1"


# Paper App. A.2 (Fig. 7): mean learning time with CI by domain, token-frequency bin and dependency length, each
# with its rank statistic; tokens = the spectrum's selection with tau inside the window.
rule alignment:
    input:
        unpack(alignment_inputs),
    output:
        table=f"{RESULTS}/series/{{series}}/alignment/alignment.json",
        figures=report(
            directory(f"{RESULTS}/series/{{series}}/alignment/figures"),
            patterns=["{name}.png"],
            caption="../report/alignment.rst",
            category="Alignment (App. A.2)",
            subcategory="{series}",
        ),
    log:
        f"{RESULTS}/logs/alignment/{{series}}.log",
    conda:
        "../../envs/tokenscale.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        analysis=analysis_slice(CFG["analysis"], "align"),
        axis_label=series_axis_label,
        data=DATA,
    shell:
        "tokenscale align --fits {input.fits:q} --tokens {input.tokens:q} --train-data {params.data:q} "
        "--dependency {input.dependency:q} --options {params.analysis:q} --run {wildcards.series:q} "
        "--axis-label {params.axis_label:q} --out {output.table:q} --figures {output.figures:q} > {log:q} 2>&1"


rule seed_agreement:
    input:
        fits=seed_group_fits,
        tokens=TOKEN_SETS[VALID_TOKENS].path,
    output:
        table=f"{RESULTS}/seeds/{{group}}/agreement.json",
        figures=report(
            directory(f"{RESULTS}/seeds/{{group}}/figures"),
            patterns=["{name}.png"],
            caption="../report/seeds.rst",
            category="Seeds (Fig. 2)",
            subcategory="{group}",
        ),
    log:
        f"{RESULTS}/logs/seeds/{{group}}.log",
    conda:
        "../../envs/tokenscale.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        analysis=analysis_slice(CFG["analysis"], "seeds"),
        runs=seed_group_runs,
        axis_label=AXIS_LABELS.get(CFG["fit"]["axis"], CFG["fit"]["axis"]),
    shell:
        "tokenscale seeds --fits {input.fits:q} --runs {params.runs} --tokens {input.tokens:q} "
        "--options {params.analysis:q} --group {wildcards.group:q} --axis-label {params.axis_label:q} "
        "--out {output.table:q} --figures {output.figures:q} > {log:q} 2>&1"
