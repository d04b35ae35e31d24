"""Export a profile to real packed low-bit weights, and load such an export back; or write every
width at once as a nested checkpoint (int8 masters the nested grid slices).

    report = export_model(model, tok, "w4g32a8", "out/w4", merge="after")
    model, tok = load_exported("out/w4")          # or bitswitch.load_model("out/w4")
    report = export_nested(model, tok, "out/nested")
    model, tok = load_nested_model("out/nested")  # switchable, weight grid "nested", its adapters

Getting a model ready to export (load, adapters, switch, calibrate) sits above the loader, in
:func:`bitswitch.export.prepare.prepare_for_export` and
:func:`bitswitch.export.nested_prepare.prepare_nested`; this package imports neither.
"""

from .format import FORMAT_VERSION, MAP_FILE, WEIGHTS_FILE
from .nested import export_nested, stable_master
from .nested_format import INFO_FILE as NESTED_INFO_FILE
from .nested_format import is_nested_dir
from .nested_reader import NestedCheckpoint, is_nested, load_nested_base, load_nested_model, read_nested
from .reader import exported_profile, is_export_dir, is_exported, load_exported
from .writer import export_model

__all__ = ["FORMAT_VERSION", "MAP_FILE", "NESTED_INFO_FILE", "WEIGHTS_FILE", "NestedCheckpoint", "export_model",
           "export_nested", "exported_profile", "is_export_dir", "is_exported", "is_nested", "is_nested_dir",
           "load_exported", "load_nested_base", "load_nested_model", "read_nested", "stable_master"]
