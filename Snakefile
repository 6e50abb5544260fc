# tokenscale: token-level decomposition of LM scaling laws.
# Thin entry point: config validation, includes, the final target. Logic lives in src/tokenscale.
from snakemake.utils import min_version

from tokenscale.workflow import check_config, with_base

min_version("8.20")

# The base config: `--configfile FILE` overlays config/config.yaml (the demo; config/smoke.yaml does so), unless
# the command line's config says `standalone: true` (config/paper.yaml): then it starts from the schema's defaults.
# (Not a `configfile:` directive, which would always load the demo's config underneath.)
with_base(config, workflow.current_basedir)  # this checkout (also when another Snakefile includes this one)


# Validated once against the package's schema (workflow/schemas/config.schema.yaml links to it): typed,
# defaults filled, one readable line naming a bad key or type.
CFG = check_config(config)


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/fit.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/forecast.smk"
include: "workflow/rules/reshape.smk"
include: "workflow/rules/synthetic.smk"
include: "workflow/rules/provenance.smk"


# Bookkeeping: seconds of I/O, run by Snakemake itself (on a cluster: where it runs, not as SLURM jobs).
localrules:
    all,
    val_loss,
    series_manifest,
    provenance,
    verify,


rule all:
    default_target: True
    input:
        final_targets(),
