# Decomposition of each series' loss curve: spectrum p(tau), shared pulse g, reconstruction, power law, figures.


rule analyze:
    input:
        trajectories=trajectory_shards,
        fits=rules.fit_table.output.table,
    output:
        summary=f"{RESULTS}/series/{{series}}/analysis/summary.json",
        figures=report(
            directory(f"{RESULTS}/series/{{series}}/analysis/figures"),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Decomposition",
            subcategory="{series}",
        ),
    params:
        analysis=json.dumps(CFG["analysis"], sort_keys=True),
        axis_label=lambda w: "training step" if CFG["fit"]["axis"] == "step" else "tokens seen",
    conda:
        "../../envs/tokenscale.yaml"
    log:
        f"{RESULTS}/logs/analyze/{{series}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/analyze/{{series}}.tsv"
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        "tokenscale analyze --trajectories {input.trajectories:q} --fits {input.fits:q} --run {wildcards.series:q} "
        "--options {params.analysis:q} --axis-label {params.axis_label:q} --summary {output.summary:q} "
        "--figures {output.figures:q} > {log:q} 2>&1"
