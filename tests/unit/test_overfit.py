from cgsgan.training.overfit import overfit_one_head


def test_generator_and_renderer_can_represent_one_head():
    # One fixed latent, the tiny generator trained by a photometric loss on 4 views of one synthetic
    # head: held-out views of that head (other poses) must reach 25 dB. Without a discriminator, a
    # failure here is the representation or the renderer, not the GAN.
    r = overfit_one_head(views=4, held_out=8, steps=400)
    assert r.train_psnr >= 25.0, r
    assert r.held_out_psnr >= 25.0, r
