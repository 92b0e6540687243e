"""Metrics of generated images against held-out real data, each with a 95% bootstrap interval.

- features: the evaluator classifier as a torchmetrics feature extractor
- frechet: Fréchet distance and KID
- manifold: precision and recall with k-NN manifolds
- image_stats: duplicates, diversity, sharpness, memorization
- nll: exact bits per dimension of the ar model
- bootstrap: stratified resampling and intervals
- suite: every per-set metric of one image set
- run: the evaluate stage's work over every sampler, and its output files
"""
