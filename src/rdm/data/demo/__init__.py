"""A deterministic generator of small captioned artworks in distinct styles."""
