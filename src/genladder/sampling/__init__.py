"""Samplers for every paradigm: regression, any-order autoregression, and DDPM/DDIM diffusion.

:func:`run_sampler` runs one ``samplers`` entry of params.yaml on a loaded model, and
:func:`write_outputs` writes samples/SAMPLER/ (samples.npz, grid.png, process.gif, info.json).
"""

from genladder.sampling.run import SampleResult, check_model, run_sampler, sampler_seed, write_outputs

__all__ = ["SampleResult", "check_model", "run_sampler", "sampler_seed", "write_outputs"]
