# Reshaping the training distribution with learning times (paper §6, Fig. 6; tokenscale.reshaping.compute). Per experiment:
# candidate training samples -> (evaluated at the reference's checkpoints, fitted: series {exp}-candidates by the
# generic rules) -> scores, buckets and sampler weights -> continuation arms (rule train, branched from the
# reference's snapshot at the window start; each arm's validation trajectories fitted as series {arm}) -> report
# with seed CIs, Fig. 6 A-E and the arms' learning-time shift (panel F).


rule reshape_candidates:
    input:
        tokens=rules.tokenize.output.train,
        meta=rules.tokenize.output.meta,
    output:
        tokens=f"{RESULTS}/reshape/{{exp}}/candidates.h5",
    log:
        f"{RESULTS}/logs/reshape/{{exp}}-candidates.log",
    priority: CHAIN_PRIORITY
    conda:
        "../../envs/tokenscale.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        n=lambda w: RESHAPE[w.exp]["candidates"],
        seed=lambda w: RESHAPE[w.exp]["candidate_seed"],
        data=lambda w, input: Path(input.meta).parent,
    shell:
        "tokenscale reshape-candidates --data {params.data:q} --n {params.n} --seed {params.seed} "
        "--out {output.tokens:q} > {log:q} 2>&1"


rule reshape_scores:
    input:
        fits=f"{RESULTS}/series/{{exp}}-candidates/fits.h5",
        tokens=f"{RESULTS}/reshape/{{exp}}/candidates.h5",
        meta=rules.tokenize.output.meta,
    output:
        scores=f"{RESULTS}/reshape/{{exp}}/scores.csv",
        summary=f"{RESULTS}/reshape/{{exp}}/scores.json",
        reshaped=f"{RESULTS}/reshape/{{exp}}/weights-reshaped.npy",
        uniform=f"{RESULTS}/reshape/{{exp}}/weights-uniform.npy",
    log:
        f"{RESULTS}/logs/reshape/{{exp}}-scores.log",
    priority: CHAIN_PRIORITY
    conda:
        "../../envs/tokenscale.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        experiment=lambda w: json.dumps(RESHAPE[w.exp], sort_keys=True),
        analysis=analysis_slice(CFG["analysis"], "reshape-scores"),
        data=lambda w, input: Path(input.meta).parent,
        out=lambda w, output: Path(output.scores).parent,
    shell:
        "tokenscale reshape-scores --experiment {params.experiment:q} --fits {input.fits:q} --tokens {input.tokens:q} "
        "--train-data {params.data:q} --options {params.analysis:q} --out-dir {params.out:q} > {log:q} 2>&1"


rule reshape_report:
    input:
        unpack(reshape_report_inputs),
    output:
        report=f"{RESULTS}/reshape/{{exp}}/report.json",
        figures=report(
            directory(f"{RESULTS}/reshape/{{exp}}/figures"),
            patterns=["{name}.png"],
            caption="../report/reshape.rst",
            category="Reshaping (Fig. 6)",
            subcategory="{exp}",
        ),
    log:
        f"{RESULTS}/logs/reshape/{{exp}}-report.log",
    conda:
        "../../envs/tokenscale.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        experiment=lambda w: json.dumps(RESHAPE[w.exp], sort_keys=True),
        batch_size=lambda w: RUNS[RESHAPE[w.exp]["reference"]].batch_size,
        arms=reshape_arms_json,
        analysis=analysis_slice(CFG["analysis"], "reshape-report"),
        scores=lambda w, input: Path(input.scores).parent,
    shell:
        "tokenscale reshape-report --experiment {params.experiment:q} --batch-size {params.batch_size} "
        "--scores {params.scores:q} --fits {input.fits:q} --tokens {input.tokens:q} "
        "--trajectories {input.trajectories:q} --reference-val-loss {input.reference:q} --arms {params.arms:q} "
        "--valid-tokens {input.valid:q} --options {params.analysis:q} --out {output.report:q} --figures {output.figures:q} > {log:q} 2>&1"
