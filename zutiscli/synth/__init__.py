"""The procedural shapes world: coloured shapes on textured backgrounds with exact masks.

See :mod:`zutiscli.synth.world` for the vocabulary and the pile, scene and caption samplers,
and :mod:`zutiscli.synth.raster` for the geometry of the shapes.
"""
