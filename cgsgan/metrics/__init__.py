"""Evaluation of generators: distribution distances, 3D consistency, and the registry that runs them.

    evaluation.py       the registry (name -> function over a MetricContext), evaluate(), the
                        reference/held-out split, compared_metrics() for ablations (CLI: cgsgan.evaluate)
    sampling.py         generated and real images/features, on white or on solid colours
    consistency.py      sensitivity, psnr_cond, depth_consistency (how much G depends on the camera)
    ground_truth.py     synthetic heads re-rendered at any pose, the novel poses, the background palette, yaw bins
    geometry.py         the geometry score: silhouettes and depth profiles against the ground truth, no features
    features.py         the FeatureExtractor interface, metric naming, in_batches
    feature_factory.py  load_features: the one factory that makes a feature network from a setting
    frechet.py          Frechet distance between Gaussian fits of two feature sets
    kid.py              KID: unbiased polynomial-kernel MMD over subsets, with its spread
    random_features.py  RandomFeatures: a fixed random conv net ("*_rand")
    inception.py        the FID Inception-v3 in plain torch, from a local pytorch-fid weights file
    extractor.py        a small feature network trained on the synthetic heads ("*_synth"; CLI)
"""
