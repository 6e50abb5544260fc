"""HDF5 I/O of the study's files, one module per format (this package only re-exports their names).

==============================  ==============================================================================
:mod:`tokenscale.io.tokensets`     token sets: reader, summary, atomic writer (``docs/formats.md``)
:mod:`tokenscale.io.evaluations`   per-checkpoint eval files, evaluation block manifests, val-loss rows
:mod:`tokenscale.io.valloss`       a run's ``val_loss.csv`` (writer, curve reader; no h5py)
:mod:`tokenscale.io.trajectories`  token-loss trajectory shards assembled from eval files (``docs/trajectories.md``)
:mod:`tokenscale.io.fits`          the sigmoid-fits file (:class:`~tokenscale.io.fits.SigmoidFit`)
:mod:`tokenscale.io.dependency`    the dependency-length file
:mod:`tokenscale.io.checksum`      :func:`sha256_file` and the one-line error naming a file (no h5py)
``tokenscale.io._h5``              shared HDF5 helpers: guarded reads, attributes, atomic writer, loss checks
==============================  ==============================================================================

These are analysis modules: they import neither torch nor deepspeed.  Names are imported from their module on
first use (:func:`tokenscale._lazy.lazy_exports`), so ``import tokenscale.io`` alone pulls in no h5py.

Atomicity: every writer goes through :func:`tokenscale.atomic.atomic_output` (``<out>.tmp``, fsync,
``os.replace``).  A killed job therefore leaves at most a ``*.tmp`` file, which no reader ever opens; and
every reader validates the required datasets and their shapes, so a truncated/corrupted final file is
rejected with a one-line :class:`tokenscale.TokenscaleError` naming the file.

Integrity: eval files store ``loss_sha256`` and trajectory shards ``loss_crc32`` (of the loss values as
little-endian float32 bytes, row-major); readers check that every loss is finite and >= 0, that the
checksum matches (when stored) and, for eval files, that the stored ``mean_loss`` matches the data.  An
evaluation block folder carries a ``MANIFEST.json`` written last (:func:`write_eval_manifest`), which
:func:`eval_folder_files` requires and verifies.
"""

from __future__ import annotations

from tokenscale._lazy import lazy_exports

_CHECKSUM = "tokenscale.io.checksum"
_H5 = "tokenscale.io._h5"
_TOKENSETS = "tokenscale.io.tokensets"
_EVALS = "tokenscale.io.evaluations"
_TRAJ = "tokenscale.io.trajectories"
_VALLOSS = "tokenscale.io.valloss"

_EXPORTS = {
    "sha256_file": _CHECKSUM,
    **dict.fromkeys(("LossCheck", "LOSS_SHA256", "LOSS_CRC32"), _H5),
    **dict.fromkeys(("TOKEN_SET_DATASETS", "SCORE_MASK", "read_token_set", "token_set_info", "write_token_set"),
                    _TOKENSETS),
    **dict.fromkeys(("EVAL_FORMAT", "EVAL_MANIFEST", "MANIFEST_FORMAT", "write_eval_file",
                     "read_eval_header", "read_eval_losses", "write_eval_manifest", "eval_folder_files",
                     "expand_eval_paths", "val_loss_rows", "checkpoint_val_loss_rows"), _EVALS),
    **dict.fromkeys(("VAL_LOSS_HEADER", "write_val_loss_csv", "Curve", "read_curve"), _VALLOSS),
    **dict.fromkeys(("TRAJ_FORMAT", "META_DATASETS", "CHUNK_ROWS", "shard_ranges", "write_trajectory_shards",
                     "write_trajectory_shard", "read_trajectories", "read_run_trajectories"), _TRAJ),
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
