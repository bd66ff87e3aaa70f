"""The procedural shapes world: coloured shapes on textured backgrounds with exact masks.

See :mod:`zutiscli.shapes.world` for the vocabulary and the pile, scene and caption samplers,
and :mod:`zutiscli.shapes.raster` for the geometry of the shapes.
"""
