"""Photos at both ends of the flow: decoding a file into upright pixels with everything a faithful copy
needs (codec.py, orientation.py), encoding the cloaked pixels back, and the built-in sample photos."""
