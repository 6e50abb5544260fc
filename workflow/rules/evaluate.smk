# Per-token loss of every validation token at every checkpoint, then trajectory shards (tokens x checkpoints).


rule external_token_set:
    # An external checkpoint series is evaluated on the same validation documents, tokenized with its tokenizer
    # (default: the one saved in its first checkpoint folder).
    input:
        docs=rules.prepare_corpus.output.valid,
    output:
        tokens=f"{RESULTS}/runs/{{run}}/valid_tokens.h5",
    params:
        series=lambda w: EXTERNAL[w.run]["path"],
        tokenizer=lambda w: EXTERNAL[w.run]["tokenizer"] or checkpoint_dir(w.run, steps(w.run)[0]),
        seq_len=lambda w: EXTERNAL[w.run]["seq_len"] or CFG["data"]["seq_len"],
        n_seqs=CFG["data"]["valid_sequences"],
    conda:
        "../../envs/tokenscale.yaml"
    log:
        f"{RESULTS}/logs/external_token_set/{{run}}.log",
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "tokenscale external-tokens --series {params.series:q} --tokenizer {params.tokenizer:q} --docs {input.docs:q} "
        "--seq-len {params.seq_len:q} --n-seqs {params.n_seqs:q} --out {output.tokens:q} > {log:q} 2>&1"


rule evaluate_checkpoint:
    # One job evaluates eval.checkpoints_per_job checkpoints (1 on a cluster = one job per checkpoint) and
    # writes one atomic eval file per checkpoint into its block folder; a killed job's folder is removed.
    input:
        ready=checkpoint_ready,
        tokens=token_set,
    output:
        evals=directory(f"{RESULTS}/runs/{{run}}/evals/block-{{block}}"),
    params:
        checkpoints=block_checkpoints,
        batch_size=CFG["eval"]["batch_size"],
        device=CFG["eval"]["device"],
    conda:
        "../../envs/tokenscale.yaml"
    log:
        f"{RESULTS}/logs/evaluate/{{run}}/block-{{block}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate/{{run}}/block-{{block}}.tsv"
    threads: CFG["threads"]
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        "tokenscale evaluate --checkpoint {params.checkpoints:q} --tokens {input.tokens:q} --out-dir {output.evals:q} "
        "--batch-size {params.batch_size:q} --device {params.device:q} --threads {threads} > {log:q} 2>&1"


rule assemble_shard:
    input:
        evals=eval_dirs,
        tokens=token_set,
    output:
        shard=f"{RESULTS}/runs/{{run}}/trajectories/shard-{{shard}}.h5",
    params:
        n_shards=CFG["eval"]["shards"],
        config_hash=lambda w: RUNS[w.run].hash if w.run in RUNS else "external",
    conda:
        "../../envs/tokenscale.yaml"
    log:
        f"{RESULTS}/logs/assemble/{{run}}/shard-{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/assemble/{{run}}/shard-{{shard}}.tsv"
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        "tokenscale assemble --evals {input.evals:q} --tokens {input.tokens:q} --shard {wildcards.shard:q} "
        "--n-shards {params.n_shards:q} --run {wildcards.run:q} --config-hash {params.config_hash:q} "
        "--out {output.shard:q} > {log:q} 2>&1"
