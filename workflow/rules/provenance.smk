# What the results tree was made from (tokenscale verify compares it with a reference's): the config hash, the
# checkout's commit, the lock file's hash with the Python version, the corpus manifest's hash. The code version is
# a param, so a new commit rewrites this file (and nothing else) on the next run of the workflow. When the config
# names reference numbers, rule verify compares the finished tree with them; its table joins the report.


rule provenance:
    input:
        manifest=rules.prepare_corpus.output.manifest,
        lock=LOCK_FILE,
    output:
        provenance=f"{RESULTS}/provenance.json",
    log:
        f"{RESULTS}/logs/provenance.log",
    conda:
        "../../envs/tokenscale.yaml"
    resources:
        mem_mb=500,
        runtime=5,
    params:
        config_sha256=CONFIG_SHA256,
        code_version=CODE_VERSION,
        repo=lambda w, input: Path(input.lock).parents[1],  # the checkout: requirements/ sits at its root
    shell:
        "tokenscale provenance --config-sha256 {params.config_sha256:q} --repo {params.repo:q} --lock {input.lock:q} "
        "--manifest {input.manifest:q} --out {output.provenance:q} > {log:q} 2>&1"


rule verify:
    input:
        targets=all_targets(),
        reference=REFERENCE or [],
        tolerances=TOLERANCES,
    output:
        html=report(
            f"{RESULTS}/verify/verify.html",
            caption="../report/verify.rst",
            category="Reproduction",
        ),
        table=f"{RESULTS}/verify/verify.txt",
    log:
        f"{RESULTS}/logs/verify.log",
    conda:
        "../../envs/tokenscale.yaml"
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        results=lambda w, output: Path(output.html).parents[1],  # the tree: verify/ sits at its top
    shell:
        "tokenscale verify --exit-zero --results {params.results:q} --reference {input.reference:q} "
        "--tolerances {input.tolerances:q} --html {output.html:q} > {output.table:q} 2> {log:q}"
