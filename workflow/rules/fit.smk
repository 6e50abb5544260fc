# Sigmoid fit of every token trajectory, one job per shard, then one table per series.


# Where the series' fits start (fit.start): the first checkpoint whose mean loss beats the unigram cross-entropy.
rule fit_window:
    input:
        unpack(fit_window_inputs),
    output:
        window=f"{RESULTS}/series/{{series}}/fit-window.json",
    log:
        f"{RESULTS}/logs/fit/{{series}}/window.log",
    priority: chain_priority
    conda:
        "../../envs/tokenscale.yaml"
    resources:
        mem_mb=8000,
        runtime=30,
    params:
        axis=series_axis,
        rule=CFG["fit"]["start"],
        train_data=fit_window_train_data,
    shell:
        "tokenscale fit-window --trajectories {input.trajectories:q} --axis {params.axis:q} --rule {params.rule:q} "
        "{params.train_data} --out {output.window:q} > {log:q} 2>&1"


rule fit_shard:
    input:
        shard=rules.assemble_shard.output.shard,
        window=rules.fit_window.output.window,
    output:
        fits=f"{RESULTS}/series/{{series}}/fits/shard-{{shard}}.h5",
    log:
        f"{RESULTS}/logs/fit/{{series}}/shard-{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/fit/{{series}}/shard-{{shard}}.tsv"
    priority: chain_priority
    conda:
        "../../envs/tokenscale.yaml"
    threads: CFG["threads"]
    resources:
        gpu=stage_gpu("fit"),
        gpu_model=stage_gpu_model("fit"),
        mem_mb=STAGE_REQUESTS["fit"]["mem_mb"],
        runtime=STAGE_REQUESTS["fit"]["time_min"],
    params:
        axis=series_axis,
        transform=CFG["fit"]["transform"],
        device=CFG["fit"]["device"],
        engine=CFG["fit"]["engine"],
    shell:
        "tokenscale fit --trajectories {input.shard:q} --out {output.fits:q} --axis {params.axis:q} "
        "--transform {params.transform:q} --device {params.device:q} --engine {params.engine:q} "
        "--window {input.window:q} --threads {threads} > {log:q} 2>&1"


rule fit_table:
    input:
        fits=fit_shards,
    output:
        table=f"{RESULTS}/series/{{series}}/fits.h5",
    log:
        f"{RESULTS}/logs/fit/{{series}}/table.log",
    priority: chain_priority
    conda:
        "../../envs/tokenscale.yaml"
    resources:
        mem_mb=8000,
        runtime=30,
    shell:
        "tokenscale fit-table --fits {input.fits:q} --out {output.table:q} > {log:q} 2>&1"
