"""The collage: its parameters as pytrees, and how they become pixels.

``params`` holds ``CollageParams``/``Collage`` and the population helpers; ``transforms`` the
per-patch geometry and colour; ``render`` the windowed renderer (one collage, differentiable);
``hires`` re-renders at any size in bounded memory; ``background`` makes canvas backgrounds;
``tiles`` lays out tiled collages.

A new render mode is a name in ``config.RENDER_MODES`` and a branch in each per-pixel term
of ``render`` (docs/parameters.md gives the formulas each mode follows).
"""
