"""Data sets (VOC layout), scribble conversion and simulation, synthetic scenes, transforms."""
