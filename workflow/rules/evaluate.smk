# Per-token loss of a token set at every checkpoint of a source (each pair once, whichever series use it),
# then trajectory shards (tokens x checkpoints) per series.


rule external_token_set:
    # An external checkpoint folder is evaluated on the same validation documents, tokenized with its tokenizer
    # (default: the one saved in its first checkpoint folder).
    input:
        docs=rules.prepare_corpus.output.valid,
    output:
        tokens=f"{RESULTS}/tokens/{{tokens}}.h5",
    log:
        f"{RESULTS}/logs/external_token_set/{{tokens}}.log",
    conda:
        "../../envs/tokenscale.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        series=lambda w: EXTERNAL[w.tokens]["path"],
        tokenizer=lambda w: EXTERNAL[w.tokens]["tokenizer"] or SOURCES[w.tokens].checkpoints[0][1],
        seq_len=lambda w: EXTERNAL[w.tokens]["seq_len"] or CFG["data"]["seq_len"],
        n_seqs=CFG["data"]["valid_sequences"],
    shell:
        "tokenscale external-tokens --series {params.series:q} --tokenizer {params.tokenizer:q} --docs {input.docs:q} "
        "--seq-len {params.seq_len:q} --n-seqs {params.n_seqs:q} --out {output.tokens:q} > {log:q} 2>&1"


rule evaluate_checkpoint:
    # One job evaluates eval.checkpoints_per_job checkpoints of a source (1 on a cluster = one job per checkpoint)
    # and writes one atomic eval file per checkpoint into its block folder; a killed job's folder is removed.
    # {source} may be a bundle `<group>+<k>` (a series, or a reshape experiment's arms) of one-block sources
    # (eval.sources_per_job): one process evaluates them in turn, each into its own block folder inside the job's.
    input:
        ready=source_ready,
        tokens=token_set_file,
    output:
        evals=directory(f"{RESULTS}/evals/{{tokens}}/{{source}}/block-{{block}}"),
    log:
        f"{RESULTS}/logs/evaluate/{{tokens}}/{{source}}/block-{{block}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate/{{tokens}}/{{source}}/block-{{block}}.tsv"
    priority: chain_priority
    conda:
        "../../envs/tokenscale.yaml"
    threads: source_threads
    # profiles/slurm puts this rule in group `evaluate` and bundles N blocks into one SLURM job (its `groups` and
    # `group-components`), run one after another on one GPU
    resources:
        gpu=stage_gpu("evaluate"),
        gpu_model=stage_gpu_model("evaluate"),
        mem_mb=STAGE_REQUESTS["evaluate"]["mem_mb"],
        runtime=STAGE_REQUESTS["evaluate"]["time_min"],
    params:
        blocks=eval_blocks_json,
        batch_size=CFG["eval"]["batch_size"],
        device=CFG["eval"]["device"],
    shell:
        "tokenscale evaluate --blocks {params.blocks:q} --tokens {input.tokens:q} "
        "--batch-size {params.batch_size:q} --device {params.device:q} --threads {threads} > {log:q} 2>&1"


checkpoint series_manifest:
    # Only for deferred series (members chosen from training results, e.g. a frontier): the DAG below this
    # series is built from the manifest once it exists.
    input:
        lambda w: list(SERIES[w.series].inputs),
    output:
        manifest=f"{RESULTS}/series/{{series}}/manifest.json",
    log:
        f"{RESULTS}/logs/series_manifest/{{series}}.log",
    conda:
        "../../envs/tokenscale.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        spec=lambda w: series_spec(WF, w.series),
    shell:
        "tokenscale series-manifest --spec {params.spec:q} --inputs {input:q} --out {output.manifest:q} > {log:q} 2>&1"


rule assemble_shard:
    input:
        evals=series_eval_dirs,
        tokens=series_token_set,
    output:
        shard=f"{RESULTS}/series/{{series}}/trajectories/shard-{{shard}}.h5",
    log:
        f"{RESULTS}/logs/assemble/{{series}}/shard-{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/assemble/{{series}}/shard-{{shard}}.tsv"
    priority: chain_priority
    conda:
        "../../envs/tokenscale.yaml"
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        evals=series_evals,
        n_shards=CFG["eval"]["shards"],
        config_hash=lambda w: SERIES[w.series].config_hash,
        axis_values=series_axis_values,
    shell:
        "tokenscale assemble --evals {params.evals:q} --tokens {input.tokens:q} --shard {wildcards.shard:q} "
        "--n-shards {params.n_shards:q} --run {wildcards.series:q} --config-hash={params.config_hash:q} "
        "--axis-values={params.axis_values:q} --out {output.shard:q} > {log:q} 2>&1"
