"""Photos at both ends of the flow: a file decoded into a `Photo` (decoding.py, photo.py, with the EXIF
orientation of orientation.py), the cloaked pixels encoded back into a faithful copy (encoding.py), and
the built-in sample photos (samples.py)."""
