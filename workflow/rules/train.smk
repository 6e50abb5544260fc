# One job per run. The trainer resumes from results/runs/{run}/state when the job is rerun or requeued,
# and saves state on SIGTERM (SLURM's time-limit signal) before exiting.

# Ranks per job: one per GPU the job was given (resources.gpu, e.g. from profiles/slurm), at least the
# run's own `nproc` (CPU ranks). More than one rank needs `engine: deepspeed` (the trainer says so otherwise).
rule train:
    input:
        tokens=rules.tokenize.output.train,
        meta=rules.tokenize.output.meta,
        valid=rules.tokenize.output.valid,
        tokenizer=rules.train_tokenizer.output.tokenizer,
    output:
        summary=f"{RESULTS}/runs/{{run,{IN_LOOP_RUNS}}}/train.json",
        val_loss=f"{RESULTS}/runs/{{run,{IN_LOOP_RUNS}}}/val_loss.csv",
    params:
        spec=lambda w: run_spec(w.run),
        data=lambda w, input: Path(input.meta).parent,
        out=lambda w, output: Path(output.summary).parent,
    conda:
        "../../envs/tokenscale.yaml"
    log:
        f"{RESULTS}/logs/train/{{run}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{run}}.tsv"
    threads: CFG["threads"]
    resources:
        mem_mb=16000,
        runtime=1440,
        gpu=0,
    shell:
        "tokenscale train --spec {params.spec:q} --run {wildcards.run:q} --data {params.data:q} --out {params.out:q} "
        "--threads {threads} --gpus {resources.gpu} > {log:q} 2>&1"


# Runs with in_loop_validation: false. The trainer skips validation; rule val_loss writes val_loss.csv from the
# per-token evaluation, which the run's series needs anyway.
use rule train as train_without_validation with:
    output:
        summary=f"{RESULTS}/runs/{{run,{EVAL_VAL_RUNS}}}/train.json",


rule val_loss:
    input:
        evals=run_valid_evals,
    output:
        val_loss=f"{RESULTS}/runs/{{run,{EVAL_VAL_RUNS}}}/val_loss.csv",
    conda:
        "../../envs/tokenscale.yaml"
    log:
        f"{RESULTS}/logs/val_loss/{{run}}.log",
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "tokenscale val-loss --evals {input.evals:q} --out {output.val_loss:q} > {log:q} 2>&1"
