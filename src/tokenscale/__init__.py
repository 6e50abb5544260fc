"""tokenscale: token-level decomposition of language-model scaling laws.

One home per paper concept (``docs/architecture.md`` maps stages to rules, modules and files):
``config`` (schema, typed runs), ``data`` (corpus, tokenizer, token files), ``model`` and ``sampler`` and
``train`` (training), ``series`` (what is evaluated downstream of training), ``evaluate`` (per-token losses),
``io`` (file formats: token sets, evals, trajectories, fits), ``fit`` (the sigmoid fit engine), ``analysis`` (the decomposition, in stages), ``figures``,
``atomic`` (the one atomic writer), ``cli`` (the ``tokenscale`` command every workflow rule calls).
Analysis modules (``io``, ``series``, ``analysis``, ``figures``) never import torch or deepspeed.
"""

__version__ = "0.1.0"


class TokenscaleError(Exception):
    """A user-facing error: its message is one line naming the bad value."""
