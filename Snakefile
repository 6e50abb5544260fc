# tokenscale: token-level decomposition of LM scaling laws.
# Thin entry point: config validation, includes, the final target. Logic lives in src/tokenscale.
from snakemake.utils import min_version

from tokenscale.workflow import check_config

min_version("8.20")


configfile: "config/config.yaml"


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


rule all:
    default_target: True
    input:
        final_targets(),
