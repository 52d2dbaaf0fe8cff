"""charlm: character- and word-level recurrent language models in JAX/Flax."""
