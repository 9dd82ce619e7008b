"""Turning contexts of retrieved CLIP vectors into images: the denoising loop with guidance."""
