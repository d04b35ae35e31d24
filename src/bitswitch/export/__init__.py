"""Export a profile to real packed low-bit weights, and load such an export back.

    report = export_model(model, tok, "w4g32a8", "out/w4", merge="after")
    model, tok = load_exported("out/w4")          # or bitswitch.load_model("out/w4")

Getting a model ready to export (load, adapters, switch, calibrate) sits above the loader, in
:func:`bitswitch.export.prepare.prepare_for_export`; this package does not import it.
"""

from .format import FORMAT_VERSION, MAP_FILE, WEIGHTS_FILE
from .reader import exported_profile, is_export_dir, is_exported, load_exported
from .writer import export_model

__all__ = ["FORMAT_VERSION", "MAP_FILE", "WEIGHTS_FILE", "export_model", "exported_profile", "is_export_dir",
           "is_exported", "load_exported"]
