"""Background generation: the inpainting model inputs, prompt encoding and the diffusers pipeline."""
