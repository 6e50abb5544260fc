# The forecast of each analysed series' mean loss past its last checkpoint from its spectrum (or, with
# analysis.forecast_cut, a backtest from a prefix), with the power-law, naive-sigmoid and last-value baselines.


rule forecast:
    input:
        trajectories=trajectory_shards,
        fits=rules.fit_table.output.table,
    output:
        forecast=f"{RESULTS}/series/{{series}}/forecast/forecast.json",
        figure=f"{RESULTS}/series/{{series}}/forecast/forecast.png",
    log:
        f"{RESULTS}/logs/forecast/{{series}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/forecast/{{series}}.tsv"
    conda:
        "../../envs/tokenscale.yaml"
    resources:
        mem_mb=4000,
        runtime=10,
    params:
        options=analysis_slice(CFG["analysis"], "forecast"),
    shell:
        "tokenscale forecast --trajectories {input.trajectories:q} --fits {input.fits:q} --series {wildcards.series:q} "
        "--options {params.options:q} --out {output.forecast:q} --figure {output.figure:q} > {log:q} 2>&1"
