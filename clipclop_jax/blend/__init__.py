"""Blending the seams of a rendered collage in the gradient domain.

``seams`` builds the guidance field from a collage's layers and blends (``blend_collage``,
``BLEND_MODES``); ``poisson`` solves screened Poisson equations on whole images.

A new blend mode is a new entry in ``seams.BLEND_MODES``.
"""
