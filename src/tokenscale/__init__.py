"""tokenscale: token-level decomposition of language-model scaling laws.

One module per paper concept: ``data``, ``model``, ``train``, ``evaluate``, ``io``, ``fit``,
``spectrum``, ``frontier``, ``reshape``, ``synthetic``, ``figures``. Analysis modules never import
deepspeed.
"""

__version__ = "0.1.0"


class TokenscaleError(Exception):
    """A user-facing error: its message is one line naming the bad value."""
