rule prepare_corpus:
    input:
        corpora=CORPORA,  # data.corpora (none for the builtin corpus)
    output:
        train=f"{DATA}/corpus/train.jsonl",
        valid=f"{DATA}/corpus/valid.jsonl",
        manifest=f"{DATA}/corpus/manifest.json",
    log:
        f"{RESULTS}/logs/prepare_corpus.log",
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
    output:
        tokenizer=f"{DATA}/tokenizer/tokenizer.json",
    log:
        f"{RESULTS}/logs/train_tokenizer.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_tokenizer.tsv"
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


rule tokenize:
    input:
        corpus=rules.prepare_corpus.output.manifest,
        tokenizer=rules.train_tokenizer.output.tokenizer,
    output:
        train=f"{DATA}/train_tokens.bin",
        meta=f"{DATA}/train_tokens.json",
        docs=f"{DATA}/train_docs.npz",
        valid=f"{DATA}/valid_tokens.h5",
    log:
        f"{RESULTS}/logs/tokenize.log",
    benchmark:
        f"{RESULTS}/benchmarks/tokenize.tsv"
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
