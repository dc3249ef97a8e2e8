"""Training: the loop and what it writes, in plain PyTorch (no Ray, MLflow or S3 here).

    trainer.Trainer                 the CGS-GAN training loop, one process or one DDP rank
    checkpoint                      atomic full-state checkpoints, finding and opening them (local or s3://)
    snapshot_metrics.SnapshotMetrics  the metrics reported at snapshots, with their floors
    samples                         fixed-seed grids and turntables
    overfit.overfit_one_head        can the generator and renderer represent one head at all (CLI)
"""
