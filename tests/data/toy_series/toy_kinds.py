"""Two series kinds added the way a new kind is added (tests only): a builder each, and a resolver for the
deferred one. Imported by tests/data/toy_series/Snakefile; the resolver also by `tokenscale series-manifest`."""

import csv

from tokenscale import series


def toy_builder(cfg, wf):
    """`toy1`: three fixed checkpoints of the first run (static); `best3`: the first run's three checkpoints
    with the lowest logged validation loss, known only after training (deferred)."""
    run = cfg["runs"][0]["name"]
    src = wf.sources[run]
    yield series.Series("toy1", "toy", "valid", tuple((run, s) for s in src.steps[-3:]), (run,))
    yield series.Series("best3", "best", "valid", None, (run,),
                        inputs=(f"{cfg['results']}/runs/{run}/val_loss.csv",), resolver="toy_kinds:lowest_val")


def lowest_val(s, sources, inputs):
    (path,) = inputs
    with open(path) as fh:
        rows = sorted(csv.DictReader(fh), key=lambda r: float(r["val_loss"]))[:3]
    return sorted((s.sources[0], int(r["step"])) for r in rows)
