"""Data: the FFHQC/EG3D loader, background compositing, index-list curation, synthetic heads.

    dataset.ImageDataset              folder or zip in the FFHQC layout -> image/mask/label/identity items
    backgrounds.sample_backgrounds    background colours ("random", "white", "black")
    backgrounds.composite             paste images onto colours with their masks
    curate                            CLI + pure functions that write index lists (filter, rebalance)
    synthetic.generate_synthetic      built-in multi-view heads (ray cast), also a CLI
    synthetic.render_identity         ground truth of one synthetic head from any camera
"""
