"""One module per stage: a plain function taking a typed config and returning the artefact it wrote.

The command line and the Python API both call these.
"""
