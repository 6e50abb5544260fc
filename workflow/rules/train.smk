# One job per run. The trainer resumes from results/runs/{run}/state when the job is rerun or requeued,
# and saves state on SIGTERM (SLURM's time-limit signal) before exiting.


# Ranks per node: one per GPU of the run's request (config `resources.train`, tokenscale.plan), at least the
# run's own `nproc` (CPU ranks). More than one rank needs `engine: deepspeed` (the trainer says so otherwise).
# A run on N > 1 nodes: `tokenscale train --nodes N` in the batch script starts one task per node with srun, and
# each node's torchrun joins one c10d rendezvous (tokenscale.training.launch).
rule train:
    input:
        unpack(train_data),  # the tokenized corpus, or the run's synthetic dataset
        trunk=train_trunk,
        weights=train_weights,
    output:
        summary=f"{RESULTS}/runs/{{run}}/train.json",
    log:
        f"{RESULTS}/logs/train/{{run}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{run}}.tsv"
    priority: chain_priority
    conda:
        "../../envs/tokenscale.yaml"
    threads: lambda w: run_threads(w.run)
    resources:
        nodes=train_request("nodes"),
        gpus_per_node=train_request("gpus_per_node"),
        gres=train_gres,
        tasks=train_tasks,
        tasks_per_gpu=train_tasks_per_gpu,
        mpi=train_mpi,  # multi-node: the launcher runs srun (one task per node) and a c10d rendezvous
        cpus_per_gpu=train_request("cpus_per_gpu"),
        mem_mb=train_request("mem_mb"),
        runtime=train_request("time_min"),
    params:
        spec=lambda w: run_spec(w.run),
        data=lambda w, input: Path(input.meta).parent,
        out=lambda w, output: Path(output.summary).parent,
        sampler=train_sampler,
    shell:
        "tokenscale train --spec {params.spec:q} --run {wildcards.run:q} --data {params.data:q} --out {params.out:q} "
        "--threads {threads} --gpus {resources.gpus_per_node} --nodes {resources.nodes} {params.sampler} > {log:q} 2>&1"


# val_loss.csv of every run: from the in-loop validation in its checkpoints, or (in_loop_validation: false) from
# the per-token evaluation of its checkpoints, which its series needs anyway. The trainer also writes the first
# kind itself (for standalone use); this job rewrites the same rows.
rule val_loss:
    input:
        unpack(val_loss_inputs),
    output:
        val_loss=f"{RESULTS}/runs/{{run}}/val_loss.csv",
    log:
        f"{RESULTS}/logs/val_loss/{{run}}.log",
    conda:
        "../../envs/tokenscale.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        source=val_loss_source,
    shell:
        "tokenscale val-loss {params.source} --out {output.val_loss:q} > {log:q} 2>&1"
