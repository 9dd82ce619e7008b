"""The diffusion core, below both the trained model (`rdm.models`) and sampling (`rdm.sampling`): the
noise schedule and its samplers, the conditioning context, and the guided denoising loop."""
