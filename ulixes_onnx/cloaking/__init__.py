"""Cloaking: the settings, the Ulixes loop on face canvases (loop.py) with its perceptual budget and
visibility measures, the photo pipeline around it (pipeline.py: `Cloaker`, pixels in and out) and the
file layer on top (files.py: `cloak_files`, files in and out)."""
