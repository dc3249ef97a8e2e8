"""Evaluation of generators, offline.

    features.py    the FeatureExtractor interface and metric naming ("fid", "fid_synth", "fid_rand")
    frechet.py     Frechet distance, Gaussian statistics, RandomFeatures (fixed random conv net)
    kid.py         KID: unbiased polynomial-kernel MMD over subsets
    inception.py   the FID Inception-v3 in plain torch, from a local pytorch-fid weights file
    extractor.py   a small feature network trained on the synthetic heads (CLI)
    metrics.py     FID/KID/FID3D sampling, conditioning sensitivity, PSNR, depth consistency, yaw bins
    evaluation.py  evaluate_generator: a chosen subset as one flat dict (CLI: cgsgan.evaluate)
"""
