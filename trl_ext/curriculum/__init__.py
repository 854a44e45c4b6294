"""Curriculum pieces that change *which* prompts are generated: DIVA's difficulty store, sampler and variants."""
