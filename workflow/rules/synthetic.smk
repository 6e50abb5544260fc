# Controllable synthetic data (paper App. A.3): per `synthetic` dataset its data folder (generated, no download);
# a run with `synthetic: <name>` trains on it (rule train), its checkpoints are evaluated on the dataset's
# validation answers and fitted like any T series; per such series the per-level loss and accuracy (balanced
# validation set), the shape test and Fig. 8-10. A uniform arm whose L^-2 arm (same task) is also a series reads
# that arm's report.json, so its own report holds the pair's verdict (paper_criteria); the power arm reads none.

from tokenscale.synthetic.criteria import power_partner

SYNTHETIC_PARTNER = {  # uniform arm series -> the report.json of its L^-2 arm
    s: f"{RESULTS}/series/{p}/synthetic/report.json"
    for s in SYNTHETIC_SERIES
    if (p := power_partner(s, {r: RUNS[r].synthetic for r in SYNTHETIC_SERIES}, SYNTHETIC))
}


rule synthetic_data:
    output:
        tokens=f"{RESULTS}/synthetic/{{syn}}/train_tokens.bin",
        meta=f"{RESULTS}/synthetic/{{syn}}/train_tokens.json",
        valid=f"{RESULTS}/synthetic/{{syn}}/valid_tokens.h5",
        levels=f"{RESULTS}/synthetic/{{syn}}/levels_tokens.h5",
        overlap=f"{RESULTS}/synthetic/{{syn}}/overlap.json",
        tokenizer=f"{RESULTS}/synthetic/{{syn}}/tokenizer/tokenizer.json",
    log:
        f"{RESULTS}/logs/synthetic/{{syn}}-data.log",
    benchmark:
        f"{RESULTS}/benchmarks/synthetic/{{syn}}-data.tsv"
    priority: chain_priority
    conda:
        "../../envs/tokenscale.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        entry=lambda w: json.dumps(SYNTHETIC[w.syn], sort_keys=True),
        out=lambda w, output: Path(output.meta).parent,
    shell:
        "tokenscale prepare-synthetic --entry {params.entry:q} --out {params.out:q} > {log:q} 2>&1"


rule synthetic_levels:
    input:
        trained=f"{RESULTS}/runs/{{run}}/train.json",
        tokens=lambda w: f"{synthetic_dir(RUNS[w.run].synthetic)}/levels_tokens.h5",
    output:
        levels=f"{RESULTS}/runs/{{run}}/levels.csv",
    log:
        f"{RESULTS}/logs/synthetic/{{run}}-levels.log",
    benchmark:
        f"{RESULTS}/benchmarks/synthetic/{{run}}-levels.tsv"
    priority: chain_priority
    conda:
        "../../envs/tokenscale.yaml"
    threads: CFG["threads"]
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        checkpoints=run_checkpoint_dirs,
    shell:
        "tokenscale synthetic-levels --checkpoints {params.checkpoints} --tokens {input.tokens:q} "
        "--threads {threads} --out {output.levels:q} > {log:q} 2>&1"


rule synthetic_report:
    input:
        unpack(
            lambda w: synthetic_report_inputs(w)
            | ({"partner": SYNTHETIC_PARTNER[w.series]} if w.series in SYNTHETIC_PARTNER else {})
        ),
    output:
        report=f"{RESULTS}/series/{{series}}/synthetic/report.json",
        figures=report(
            directory(f"{RESULTS}/series/{{series}}/synthetic/figures"),
            patterns=["{name}.png"],
            caption="../report/synthetic.rst",
            category="Synthetic (App. A.3)",
            subcategory="{series}",
        ),
    log:
        f"{RESULTS}/logs/synthetic/{{series}}-report.log",
    priority: chain_priority
    conda:
        "../../envs/tokenscale.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        entry=lambda w: json.dumps(SYNTHETIC[RUNS[w.series].synthetic], sort_keys=True),
        analysis=analysis_slice(CFG["analysis"], "synthetic-report"),
        partner=lambda w: (
            f"--partner {shlex.quote(SYNTHETIC_PARTNER[w.series])}" if w.series in SYNTHETIC_PARTNER else ""
        ),
    shell:
        "tokenscale synthetic-report --entry {params.entry:q} --run {wildcards.series:q} --levels {input.levels:q} "
        "--val-loss {input.val_loss:q} --fits {input.fits:q} --trajectories {input.trajectories:q} "
        "--summary {input.summary:q} --overlap {input.overlap:q} --options {params.analysis:q} {params.partner} "
        "--out {output.report:q} --figures {output.figures:q} > {log:q} 2>&1"
