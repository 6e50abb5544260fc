import re

from tokenscale.data.shardlist import input_shards as _input_shards, sharded as _sharded

# data.shards: the input shards, listed at DAG build (light: no heavy import); one tokenize_shard job each
SHARD_FILES = [str(p) for p in _input_shards(CFG["data"])] if _sharded(CFG["data"]) else []
SHARD_NAMES = [Path(p).name for p in SHARD_FILES]


rule prepare_corpus:
    input:
        corpora=CORPORA,  # data.corpora (none for the builtin corpus)
        shards=SHARD_FILES,  # data.shards.path's input files (none without shards)
    output:
        train=f"{DATA}/corpus/train.jsonl",
        valid=f"{DATA}/corpus/valid.jsonl",
        manifest=f"{DATA}/corpus/manifest.json",
    log:
        f"{RESULTS}/logs/prepare_corpus.log",
    priority: CHAIN_PRIORITY
    conda:
        "../../envs/tokenscale.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        spec=data_spec(),
        out=lambda w, output: Path(output.manifest).parents[1],
    shell:
        "tokenscale prepare-data --spec {params.spec:q} --out {params.out:q} --stage corpus > {log:q} 2>&1"


rule train_tokenizer:
    input:
        train=rules.prepare_corpus.output.train,
        shards=SHARD_FILES,
    output:
        tokenizer=f"{DATA}/tokenizer/tokenizer.json",
    log:
        f"{RESULTS}/logs/train_tokenizer.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_tokenizer.tsv"
    priority: CHAIN_PRIORITY
    conda:
        "../../envs/tokenscale.yaml"
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        spec=data_spec(),
        out=lambda w, output: Path(output.tokenizer).parents[1],
    shell:
        "tokenscale prepare-data --spec {params.spec:q} --out {params.out:q} --stage tokenizer > {log:q} 2>&1"


rule tokenize_shard:
    input:
        shard=lambda w: SHARD_FILES[SHARD_NAMES.index(w.part)],
        tokenizer=rules.train_tokenizer.output.tokenizer,
    output:
        train=f"{DATA}/shards/{{part}}/train.bin",
        valid=f"{DATA}/shards/{{part}}/valid.bin",
        docs=f"{DATA}/shards/{{part}}/docs.npz",
        meta=f"{DATA}/shards/{{part}}/shard.json",
    log:
        f"{RESULTS}/logs/tokenize_shard/{{part}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/tokenize_shard/{{part}}.tsv"
    wildcard_constraints:
        part="|".join(re.escape(n) for n in SHARD_NAMES) or "(?!)",
    conda:
        "../../envs/tokenscale.yaml"
    threads: 4
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        spec=data_spec(),
        out=lambda w, output: Path(output.meta).parents[2],
    shell:
        "tokenscale prepare-data --spec {params.spec:q} --out {params.out:q} --stage shard --shard {wildcards.part:q} > {log:q} 2>&1"


rule tokenize:
    input:
        corpus=rules.prepare_corpus.output.manifest,
        tokenizer=rules.train_tokenizer.output.tokenizer,
        shards=expand(f"{DATA}/shards/{{part}}/shard.json", part=SHARD_NAMES),
    output:
        train=f"{DATA}/train_tokens.bin",
        meta=f"{DATA}/train_tokens.json",
        docs=f"{DATA}/train_docs.npz",
        valid=f"{DATA}/valid_tokens.h5",
    log:
        f"{RESULTS}/logs/tokenize.log",
    benchmark:
        f"{RESULTS}/benchmarks/tokenize.tsv"
    priority: CHAIN_PRIORITY
    conda:
        "../../envs/tokenscale.yaml"
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        spec=data_spec(),
        out=lambda w, output: Path(output.meta).parent,
    shell:
        "tokenscale prepare-data --spec {params.spec:q} --out {params.out:q} --stage tokens > {log:q} 2>&1"
