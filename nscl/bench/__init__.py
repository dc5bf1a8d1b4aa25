"""Benchmarks that write JSON (never timed unit tests): ``python -m nscl.bench NAME [options]``.

Each benchmark is a module ``nscl.bench.<name>`` with ``main(argv) -> int``; the JSON it writes
records the environment (versions, device, git commit) next to the measurements, and ratios are
always measured within one process.
"""

BENCHMARKS = {
    "projection": "NullSpaceAdam step vs torch Adam step (MLP on CPU, ResNet-18 at batch 32)",
    "nuclear": "exact nuclear norm (SVD) vs factorised Frobenius surrogate, per step",
    "e2e": "wall time per task / epoch, task boundary / epoch, peak memory, checkpoint size (recipe settings)",
    "boundary": "cheaper task boundaries (cov_patches, cov_samples, nested eigen) against the exact one",
}
