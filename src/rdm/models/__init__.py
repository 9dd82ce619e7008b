"""The generative model: the KL autoencoder, the retrieval-conditioned UNet, the Lightning module
that trains it, and the self-contained model folder it is saved as."""
