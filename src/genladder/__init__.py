"""genladder: generative modelling as prediction, from regression to diffusion, measured by one pipeline."""

__version__ = "0.1.0"
