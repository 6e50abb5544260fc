"""seeds: the seed-comparison study (paper Fig. 2, hypothesis A) — do runs that differ only by their seed learn the
same tokens at the same time? :mod:`tokenscale.seeds.stage` compares every pair of runs' per-token learning times
and writes agreement.json with one figure per pair against the reference run."""
