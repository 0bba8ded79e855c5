"""Modules the scripts share (not entry points): the generated sets' textures and sequences, the video
archives of prepare_data.py."""
