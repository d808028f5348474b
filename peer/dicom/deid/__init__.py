"""De-identification (DICOM PS3.15 Annex E): the generated Table E.1-1
(`table_e11`), named profiles (`profile`), the pure engine (`engine`) and the streaming
transform used by ``scanbeam send --deidentify`` and ``scanbeam deidentify`` (`stream`).

Import the submodules directly; this package module stays light so that the CLI starts
fast.
"""
