"""Training loops: the similarity model, the saliency cache and the attribute models."""
